
import pytest
import yaml

from asyncgen.config import available_tasks, default_config_dir, load_task
from asyncgen.errors import ConfigError
from inprocess import asyncgen_here


def test_shipped_tasks_load():
    assert {"refusal", "sentiment"} <= set(available_tasks(default_config_dir()))
    refusal = load_task("refusal")
    assert refusal.templates.single_token.prefix == (
        "Answer this question with Yes if you will help with the question or No if not.\n "
    )
    assert refusal.templates.single_token.suffix == "\n Answer: "
    assert refusal.templates.multi_token.prefix == refusal.templates.multi_token.suffix == ""
    assert (refusal.answers.safe, refusal.answers.harmful) == ("Yes", "No")
    assert refusal.batch_size > 0 and refusal.examples and refusal.lexicon is not None


def _write(tmp_path, mutate):
    data = yaml.safe_load(open(default_config_dir() / "tasks" / "refusal.yaml"))
    mutate(data)
    (tmp_path / "tasks").mkdir(exist_ok=True)
    path = tmp_path / "tasks" / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(batchsize=3), r"unknown key 'batchsize'"),
        (lambda d: d.update(batch_sise=d.pop("batch_size")), r"unknown key 'batch_sise' \(did you mean 'batch_size'\? it is missing\)"),
        (lambda d: d.update(colour=d.pop("batch_size")), r"unknown key 'colour' \(check its spelling.*\); missing key 'batch_size'"),
        (lambda d: d.pop("generation_instructions"), r"missing key 'generation_instructions'"),
        (lambda d: d["templates"]["single_token"].update(prefix=3), r"key 'templates.single_token.prefix': input should be a valid string, got int 3"),
        (lambda d: d.update(batch_size="ten"), r"key 'batch_size': .*integer"),
        (lambda d: d["templates"].pop("multi_token"), r"missing key 'templates.multi_token'"),
        (lambda d: d.update(examples=[]), r"key 'examples'"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, mutate, expected):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=expected) as info:
        load_task("broken", tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_yaml_and_unknown_task(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bad.yaml").write_text("task_name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_task("bad", tmp_path)
    with pytest.raises(ConfigError, match="known tasks in .*: bad"):
        load_task("nope", tmp_path)
    with pytest.raises(ConfigError, match="no 'tasks' folder"):
        load_task("refusal", tmp_path / "missing")


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    _write(tmp_path, lambda d: d.update(colour="blue"))
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a b", "counterfactual": "a c"}\n')
    result = asyncgen_here("check-pairs", tmp_path / "pairs.jsonl", "--task", "broken", "--config-dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown key 'colour'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("task, expected", [
    # was "no .../config/tasks/mytsk.yaml.yaml": a file name taken for a task name
    ("mytsk.yaml", "task file mytsk.yaml: no such file (relative to {cwd}); did you mean mytask.yaml?"),
    # was ".../config/tasks/configs/mytask.yaml": a path taken for a task name
    ("./configs/mytask", "task file ./configs/mytask: no such file (relative to {cwd}); "
                         "did you mean ./configs/mytask.yaml?"),
    ("elsewhere/x.yml", "task file elsewhere/x.yml: no such file (relative to {cwd}); a --task with a '/' or "
                        "ending in .yaml is a path, a bare name a task in the config dir"),
    ("refusl", "task 'refusl': no such task (did you mean 'refusal'? known tasks in {config}: refusal, sentiment; "
               "or give the path of a task YAML)"),
])
def test_a_task_path_is_a_path_and_a_name_a_builtin_task(tmp_path, monkeypatch, task, expected):
    from asyncgen.config import default_config_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for path in ("mytask.yaml", "configs/mytask.yaml"):
        (tmp_path / path).write_text((default_config_dir() / "tasks" / "refusal.yaml").read_text())
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a b", "counterfactual": "a c"}\n')
    result = asyncgen_here("check-pairs", tmp_path / "pairs.jsonl", "--task", task, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "asyncgen check-pairs: error: " + expected.format(cwd=tmp_path,
                                                                                       config=default_config_dir())
    assert load_task("./configs/mytask.yaml").task_name == load_task("mytask.yaml").task_name == "refusal"
