"""Task configs: one YAML file per task under ``<config-dir>/tasks/``.

The loader is strict: unknown keys, missing keys and wrong types are rejected with one line that
names the file, the key and what was expected. Adding a task is adding a YAML file.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from asyncgen.errors import ConfigError

FORMS = ("single_token", "multi_token")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Template(_Strict):
    prefix: str
    suffix: str

    def render(self, text: str) -> str:
        return f"{self.prefix}{text}{self.suffix}"

    def unrender(self, text: str) -> str | None:
        """The text ``render`` was given, or None when ``text`` is not one of this template's."""
        if text.startswith(self.prefix) and text.endswith(self.suffix) and len(text) >= len(self.prefix) + len(self.suffix):
            return text[len(self.prefix) : len(text) - len(self.suffix)]
        return None


class Templates(_Strict):
    single_token: Template
    multi_token: Template


class Pair(_Strict):
    """A prompt (``safe``) and its counterfactual (``harmful``); the seed's names for both."""

    safe: Annotated[str, Field(min_length=1)]
    harmful: Annotated[str, Field(min_length=1)]


class Lexicon(_Strict):
    """Material the offline simulator composes candidate pairs from.

    A candidate is a frame with its ``{x}`` slot filled once with a safe filler (the prompt) and
    once with a harmful filler (the counterfactual); every other ``{name}`` in the frame is filled
    with one value of ``slots[name]``, the same in both.
    """

    frames: Annotated[list[str], Field(min_length=1)]
    safe: Annotated[list[str], Field(min_length=1)]
    harmful: Annotated[list[str], Field(min_length=1)]
    slots: dict[str, Annotated[list[str], Field(min_length=1)]] = {}


class Behavior(_Strict):
    """How ``asyncgen score`` calls a free (multi-token) answer a refusal: one of ``refusal_markers``
    within its first ``match_chars`` characters, case-insensitive (``asyncgen.behavior.refuses``)."""

    refusal_markers: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    match_chars: Annotated[int, Field(ge=1)] = 100


class Task(_Strict):
    task_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    templates: Templates
    answers: Pair
    examples: Annotated[list[Pair], Field(min_length=1)]
    generation_instructions: Annotated[str, Field(min_length=1)]
    batch_size: Annotated[int, Field(ge=1, le=100)]
    tokenizers: dict[str, str] = {}
    lexicon: Lexicon | None = None
    behavior: Behavior | None = None


def default_config_dir() -> Path:
    """The configs that ship with asyncgen: inside the installed package, or the repo's ``config/``."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "config", package_dir.parent / "config"):
        if (candidate / "tasks").is_dir():
            return candidate
    raise ConfigError(
        f"no config directory found beside the asyncgen package ({package_dir}); "
        "reinstall asyncgen or pass --config-dir"
    )


def resolve_config_dir(config_dir: str | os.PathLike | None) -> Path:
    if config_dir is None:
        return default_config_dir()
    path = Path(config_dir)
    if not (path / "tasks").is_dir():
        raise ConfigError(f"--config-dir {path}: no 'tasks' folder in it; point it at a folder that has tasks/<name>.yaml")
    return path


def available_tasks(config_dir: Path) -> list[str]:
    return sorted(p.stem for p in (config_dir / "tasks").glob("*.yaml"))


TASK_SUFFIXES = (".yaml", ".yml")


def names_a_task_file(task: str) -> bool:
    """Whether a --task value is a file path (relative to the working directory): it has a folder
    in it or ends in .yaml/.yml. Anything else is the name of a task in the config dir."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in task for sep in separators) or task.endswith(TASK_SUFFIXES)


def task_path(task: str, config_dir: str | os.PathLike | None = None) -> Path:
    """A task's YAML: the file ``task`` names when it is a path (``names_a_task_file``), else
    ``<config-dir>/tasks/<task>.yaml``; a one-line ``ConfigError`` naming what was looked for and
    the closest match when there is none."""
    if names_a_task_file(task):
        return _task_file(task)
    directory = resolve_config_dir(config_dir)
    path = directory / "tasks" / f"{task}.yaml"
    if path.is_file():
        return path
    known = available_tasks(directory)
    meant = difflib.get_close_matches(task, known, n=1)
    hint = f"did you mean '{meant[0]}'? " if meant else ""
    local = next((name for name in (task + suffix for suffix in TASK_SUFFIXES) if Path(name).is_file()), None)
    if local:
        hint += f"for the file in this folder, pass --task ./{local}; "
    raise ConfigError(f"task '{task}': no such task ({hint}known tasks in {directory}: {', '.join(known) or 'none'}; "
                      "or give the path of a task YAML)")


def _task_file(task: str) -> Path:
    path = Path(task)
    if path.is_file():
        return path
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if path.is_dir():
        raise ConfigError(f"task file {task}: it is a folder{where}; give the path of a task YAML in it")
    folder = path.parent
    names = [p.name for p in folder.iterdir() if p.suffix in TASK_SUFFIXES and p.is_file()] if folder.is_dir() else []
    meant = difflib.get_close_matches(path.name, names, n=1)
    hint = (f"; did you mean {os.path.join(os.path.dirname(task), meant[0])}?" if meant else
            "; a --task with a '/' or ending in .yaml is a path, a bare name a task in the config dir")
    raise ConfigError(f"task file {task}: no such file{where}{hint}")


def load_task(task: str, config_dir: str | os.PathLike | None = None) -> Task:
    path = task_path(task, config_dir)
    return parse_task(read_yaml(path), path)


def read_yaml(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc


def parse_task(data: object, path: Path) -> Task:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {_kind(data)}")
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic validation's first error as 'key: what was expected'. Unknown keys come first and
    each missing key after them: a misspelt key is both, and naming only the missing one hides the typo."""
    errors = exc.errors()
    unknown = [_dotted(error) for error in errors if error["type"] == "extra_forbidden"]
    if not unknown:
        error = errors[0]
        if error["type"] == "missing":
            return f"missing key {_dotted(error)!r}"
        return f"key {_dotted(error)!r}: {error['msg'].lower()}, got {_kind(error.get('input'))}"
    missing = [_dotted(error) for error in errors if error["type"] == "missing"]
    parts = []
    for key in unknown:
        meant = difflib.get_close_matches(key, missing, n=1)
        if meant:
            missing.remove(meant[0])
            parts.append(f"unknown key {key!r} (did you mean {meant[0]!r}? it is missing)")
        else:
            parts.append(f"unknown key {key!r} (check its spelling; unknown keys are not allowed)")
    parts += [f"missing key {key!r}" for key in missing]
    shown = 4
    return "; ".join(parts[:shown] + ([f"{len(parts) - shown} more"] if len(parts) > shown else []))


def _dotted(error: dict) -> str:
    """The key's path, ``templates.single_token``; shown with ``!r``, so a key with a newline stays on one line."""
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"[:80]
