"""Text for a person at a terminal: long lines broken at spaces to the terminal's width, each
continuation line indented under the text it continues (a hanging indent), instead of the hard
wrap a terminal makes mid-word at its last column.

The rule, for log records (``cli.StderrHandler``), closing summaries (``progress.print_summary``)
and error lines (``cli.main``): when the stream is a terminal (``isatty()``) they are fitted to
``terminal_width`` (``shutil.get_terminal_size``, which honours ``COLUMNS``, less one column);
anywhere else (a pipe, a file, CI, the tests) nothing is wrapped: each log record stays one line,
as grep and log files expect. Words are never split: a word wider than the room left (a long path,
a URL) stands on its own line, over the width, so that it can still be copied whole. Pure but
``terminal_width``.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from typing import TextIO

from asyncgen.errors import printable

# Continuation lines keep at least this many columns for the text: a hanging indent that would
# leave fewer (a narrow terminal, a long prefix) is cut to 2 spaces.
MIN_ROOM = 24

# Where a line is not broken: between a number and the word before it ("length: 10", "after
# 2.92") or after it ("4 sent", "(0 cached)", "1.6 s"), and inside a counted item of a list
# ("qwen2 multi_token positions: 2" in "..., qwen2 multi_token positions: 2, ...", "multi: flips:
# 17"); unless what is held together is wider than the room a line has.
_AT_A_NUMBER = re.compile(r"(?<=[^\s,;.]) (?=[$-]?\d)|(?<=\d) (?=[a-z])")
_COUNTED_ITEM = re.compile(r"(?:^|(?<=, )|(?<=  )|(?<=\())[A-Za-z_][\w.:-]*(?: [\w.:-]+)*: \$?\d[\d.]*[,;)]*")
_GLUE = "\ue000"  # a private-use character: stands for such a space while textwrap breaks lines
# A command quoted in backticks is never broken, however wide: it is there to be copied (a
# terminal's own wrap of a long line copies as one line).
_QUOTED_COMMAND = re.compile(r"`[^`\n]+`")
_HOLD = "\ue001"


def _glued(line: str, room: int) -> str:
    """``line`` with the spaces it is not broken at replaced by ``_GLUE`` (or ``_HOLD``). Pure."""
    line = _QUOTED_COMMAND.sub(lambda m: m.group().replace(" ", _HOLD), line)
    line = _COUNTED_ITEM.sub(lambda m: m.group().replace(" ", _GLUE) if len(m.group()) <= room else m.group(), line)
    line = _AT_A_NUMBER.sub(_GLUE, line)
    return " ".join(word if len(word) <= room else word.replace(_GLUE, " ") for word in line.split(" "))


def terminal_width(stream: TextIO | None = None) -> int:
    """The columns a line may use on the terminal, less one (some terminals wrap a line that fills
    the last column): ``COLUMNS`` when set, else the width of ``stream``'s terminal (or stdout's),
    else 80."""
    columns = shutil.get_terminal_size().columns  # COLUMNS first, then stdout's terminal, else 80
    if "COLUMNS" not in os.environ and stream is not None:
        try:  # stdout piped to a file while stderr is the terminal: ask stderr
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            pass
    return max(20, columns - 1)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or no isatty
        return False


def wrap_line(line: str, width: int, indent: int, *, cut_long_words: bool = False) -> list[str]:
    """``line`` (no newline in it) broken at spaces into lines of at most ``width`` columns: the
    first starts as ``line`` does, each next one is indented by ``indent`` spaces (2 when that
    would leave fewer than ``MIN_ROOM`` columns). Words are never split, nor a command in
    backticks, nor a number from its words or a counted item of a list (``_AT_A_NUMBER``,
    ``_COUNTED_ITEM``) unless it is wider than a line (with ``cut_long_words``, a word wider than a
    line is cut to fit). A line that fits is returned as it is. Pure."""
    if len(line) <= width:
        return [line]
    if width - indent < MIN_ROOM:
        indent = min(indent, 2)
    glued = _glued(line, width - indent)
    lines = textwrap.wrap(glued, width, subsequent_indent=" " * indent, break_long_words=cut_long_words,
                          break_on_hyphens=False, expand_tabs=False, replace_whitespace=False)
    return [part.replace(_GLUE, " ").replace(_HOLD, " ") for part in lines] or [line]


def wrap_text(text: str, width: int, indent: int) -> str:
    """Each line of ``text`` through ``wrap_line`` (the lines it has stay where they are). Pure."""
    return "\n".join(part for line in text.split("\n") for part in wrap_line(line, width, indent))


_LABEL_AND_VALUE = re.compile(r" +\S+(?: \S+)*? {2,}(?=\S)")  # "  wall time       " before "1.6 s"


def value_column(line: str) -> int:
    """Where the value of a summary line starts: after its label and the spaces that pad it
    ("  cost            $0.01 ..." -> 18); 2 for a line that is no label and value (the
    summary's head line). Pure."""
    labelled = _LABEL_AND_VALUE.match(line)
    if labelled:
        return labelled.end()
    return len(line) - len(line.lstrip(" ")) + 2


def fit_columns(text: str, width: int, keep_whole: tuple[str, ...] = ()) -> str:
    """A two-column block (a head line, then "  label   value" lines, as the closing summaries
    are) with each line longer than ``width`` wrapped under its value column. Lines holding one
    of ``keep_whole`` (a command to copy) stay whole. Pure."""
    fitted: list[str] = []
    for line in text.split("\n"):
        if any(marker in line for marker in keep_whole):
            fitted.append(line)
        else:
            fitted += wrap_line(line, width, value_column(line))
    return "\n".join(fitted)


def print_fitted(text: str, stream: TextIO, indent: int = 2) -> None:
    """``text`` printed on ``stream``: wrapped with ``indent`` (``wrap_text``) when it is a
    terminal, as it is anywhere else (one line stays one line); its control characters (a server's
    words may hold escape sequences) shown as ``\\xNN`` (``errors.printable``)."""
    text = printable(text)
    if is_terminal(stream):
        text = wrap_text(text, terminal_width(stream), indent)
    print(text, file=stream)
