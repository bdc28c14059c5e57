"""asyncgen: minimal-pair prompt datasets for LLM interpretability research."""

__version__ = "0.1.0"
