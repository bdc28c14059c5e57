"""What a user reads when something is off (issue 17, item 15), each tried from the command line."""

import errno
import os

import pytest

from test_inspect_export import PAIRS, crafted

from asyncgen.errors import RunError, UsageError, from_os_error


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder nothing can be created in. Root ignores permissions, so there the OS's refusal is
    played by os.mkdir, in the OS's own words."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if os.path.dirname(os.path.abspath(path)) == str(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    yield folder
    folder.chmod(0o755)


def test_batch_create_into_a_read_only_folder_is_one_line_exit_2(read_only_folder, cli):
    code, _, err = cli("batch", "create", "--dir", str(read_only_folder / "batches"), "--num-scenarios", "10",
                       "--output", str(read_only_folder.parent / "dataset.jsonl"))
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"asyncgen batch: error: --dir {read_only_folder / 'batches'}: cannot create it (Permission denied); "
        "choose another --dir"]  # the batch dir's own words (asyncgen/commands/batch/directory.py), the OS's reason in them


def test_an_os_error_about_a_path_is_bad_input_unless_the_machine_failed():
    refused = from_os_error(PermissionError(errno.EROFS, "Read-only file system", "/mnt/ro/x"))
    assert isinstance(refused, UsageError) and refused.exit_code == 2
    assert str(refused).startswith("/mnt/ro/x: Read-only file system;")
    full = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/x"))
    assert isinstance(full, RunError) and full.exit_code == 1 and str(full) == "/data/x: No space left on device"
    assert from_os_error(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")) is None


def test_annotate_offers_its_own_flags_not_runs(tmp_path, cli, builtin_tokenizers):
    a_folder = tmp_path / "taken"
    a_folder.mkdir()
    code, _, err = cli("annotate", str(crafted(tmp_path)), "--out", str(a_folder))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--no-annotate" not in err and "pass another --out" in err


def test_the_tokenizer_build_is_announced_only_when_the_cache_is_cold(tmp_path, cli, builtin_tokenizers, capfd):
    from asyncgen.cli import main

    plan = ["run", "--dry-run", "--output", str(tmp_path / "dataset.jsonl"), "--num-scenarios", "10"]
    code, _, err = cli(*plan)  # the session's cache holds all three
    assert code == 0 and "building the tokenizer" not in err and "builds them" not in err
    cold = tmp_path / "cold-cache"
    assert main([*plan, "--tokenizer", "solar", "--cache-dir", str(cold)]) == 0
    err = capfd.readouterr().err
    assert f"building the tokenizer solar into the cache {cold}: once per cache" in err



def test_score_does_not_announce_a_tokenizer_build_when_the_cache_is_warm(tmp_path, cli, builtin_tokenizers):
    code, _, err = cli("score", str(crafted(tmp_path, PAIRS[:1])), "--model", "m", "--write-requests", str(tmp_path / "requests.jsonl"),
                       "--log-level", "INFO")
    assert code == 0, err
    assert "validating" in err and "builds the tokenizers" not in err and "about 5 s" not in err
