"""asyncgen: minimal-pair prompt datasets for LLM interpretability research.

The Python API (asyncgen/api.py) is here by name: ``asyncgen.generate``, ``asyncgen.agenerate``, ``asyncgen.generate_batch``, ``asyncgen.score``,
``asyncgen.inspect``, ``asyncgen.load``, ``asyncgen.export`` and their result types. It is imported on first use, so
``import asyncgen`` and ``asyncgen --help`` stay fast.
"""

__version__ = "0.1.0"

_API = ("generate", "agenerate", "generate_batch", "score", "inspect", "load", "export", "GenerateOptions", "GenerateResult",
        "BatchResult", "ScoreResult", "InspectReport", "ExportResult", "RunInterrupted")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from asyncgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'asyncgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
