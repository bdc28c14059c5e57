"""tests/llamacpp.py's check of the llama.cpp server's venv, with fake builds: one that dies with
SIGILL when it loads the model (as a wheel built for AVX-512 does on a CPU without it: it imports,
then exit -4), one that serves (tests/fake_llama_cpp.py). A venv is trusted only once its server
has answered one token, and only while its ready marker's facts hold."""

import json
import sys
from pathlib import Path

import pytest

import llamacpp

FAKE_SERVER = Path(__file__).with_name("fake_llama_cpp.py")
DIES_WITH_SIGILL = f'ulimit -c 0; exec "{sys.executable}" -c "import os, signal; os.kill(os.getpid(), signal.SIGILL)"'
SERVES = f'shift 2; exec "{sys.executable}" "{FAKE_SERVER}" "$@"'  # drops "-m llama_cpp.server"


@pytest.fixture
def builds(tmp_path, monkeypatch):
    """Fake venv creation and installs: ``builds.behaviour[source]`` is the shell line the venv's
    ``python`` runs once that build is installed; ``builds.installed`` lists the installs made."""

    class Builds:
        behaviour = {"wheel": SERVES, "source": SERVES}
        installed: list[str] = []

    def create_venv(venv: Path) -> None:
        (venv / "bin").mkdir(parents=True)

    def install(python: Path, source: str, wheel: Path) -> None:
        Builds.installed.append(source)
        python.write_text(f"#!/bin/sh\n{Builds.behaviour[source]}\n")
        python.chmod(0o755)

    monkeypatch.setattr(llamacpp, "create_venv", create_venv)
    monkeypatch.setattr(llamacpp, "install", install)
    Builds.installed = []
    Builds.wheel = tmp_path / "llama_cpp_python.whl"
    Builds.wheel.write_bytes(b"a wheel built for AVX-512")
    Builds.model = tmp_path / "model.gguf"
    Builds.model.write_bytes(b"GGUF")
    Builds.venv = tmp_path / "venv"
    return Builds


def marker(builds) -> dict:
    return json.loads((builds.venv / llamacpp.MARKER).read_text())


def test_a_wheel_that_dies_with_sigill_when_it_loads_the_model_is_replaced_by_a_source_build(builds):
    builds.behaviour = {"wheel": DIES_WITH_SIGILL, "source": SERVES}
    python = llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel)
    assert python == builds.venv / "bin" / "python" and builds.installed == ["wheel", "source"]
    ready = marker(builds)
    assert ready["installed_from"] == "source"
    assert "exited with -4 (SIGILL) at start" in ready["wheel_rejected"]
    assert ready["proven"]["completion_tokens"] == 1 and ready["proven"]["model"] == "model.gguf"
    assert ready["wheel_sha256"] == llamacpp._sha256(builds.wheel) and ready["form"] == llamacpp.MARKER_FORM
    # Proven once: the next session trusts the marker, installs nothing, tries the wheel no more.
    assert llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel) == python
    assert builds.installed == ["wheel", "source"]


def test_a_wheel_that_answers_one_token_is_kept(builds):
    llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel)
    assert builds.installed == ["wheel"]
    ready = marker(builds)
    assert ready["installed_from"] == "wheel" and ready["proven"]["text"] == " Paris"
    assert ready["cpu_features_sha256"] == llamacpp.cpu_features() != "unknown"


@pytest.mark.parametrize("change", ["the old logic's marker", "another wheel", "another CPU"])
def test_a_venv_whose_marker_no_longer_states_the_facts_is_installed_and_proven_again(builds, change):
    builds.behaviour = {"wheel": DIES_WITH_SIGILL, "source": SERVES}
    llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel)
    ready_path = builds.venv / llamacpp.MARKER
    if change == "the old logic's marker":  # it checked only that llama_cpp imports
        ready_path.write_text(f"llama-cpp-python {llamacpp.VERSION} from the prebuilt wheel\n")
    elif change == "another wheel":
        builds.wheel.write_bytes(b"a wheel built for any x86-64 CPU with AVX2")
    else:
        ready_path.write_text(json.dumps({**marker(builds), "cpu_features_sha256": "0" * 64}))
    builds.behaviour = {"wheel": SERVES, "source": SERVES}
    llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel)
    assert builds.installed == ["wheel", "source", "wheel"] and marker(builds)["installed_from"] == "wheel"


def test_when_neither_build_answers_setup_fails_naming_both(builds):
    builds.behaviour = {"wheel": DIES_WITH_SIGILL, "source": "exit 3"}
    with pytest.raises(llamacpp.ServerSetupError) as failure:
        llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel)
    message = str(failure.value)
    assert "built from source does not run either: llama_cpp.server exited with 3 at start" in message
    assert "the prebuilt wheel does not run here: llama_cpp.server exited with -4 (SIGILL)" in message
    assert not (builds.venv / llamacpp.MARKER).exists()


def test_a_trusted_venv_whose_server_dies_at_start_loses_its_marker(builds, tmp_path, monkeypatch):
    monkeypatch.setattr(llamacpp, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(llamacpp, "WHEEL", builds.wheel)
    monkeypatch.setattr(llamacpp, "model_file", lambda: builds.model)
    builds.venv = tmp_path / "cache" / "venv"
    llamacpp.server_python(builds.model, venv=builds.venv, wheel=builds.wheel)
    python = builds.venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\n{DIES_WITH_SIGILL}\n")  # broken since it was proven
    with pytest.raises(llamacpp.ServerStartError, match=r"(?s)exited with -4 \(SIGILL\).*next run installs and proves"):
        with llamacpp.llama_server("sk-test", tmp_path / "server.log"):
            pass
    assert not (builds.venv / llamacpp.MARKER).exists()
    with llamacpp.llama_server("sk-test", tmp_path / "server.log") as (base_url, process):
        assert process.poll() is None and base_url.startswith("http://127.0.0.1:")
    assert builds.installed == ["wheel", "wheel"] and process.poll() is not None
