"""What an engine that failed to start said: the root cause, read from its log.

vLLM reports a start-up failure as a traceback in its log (often from its EngineCore process, then a
generic "Engine core initialization failed. See root cause above" from the API server). The launchers
(`loraplex up`, the gateway's supervisor, a dedicated engine's start) show the one line that names the
cause, e.g. "ValueError: no module or parameter named 'lm_head'", with the log's path, instead of a
timeout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# vLLM's own words when start-up has failed for good (the API server may linger a moment after them).
FATAL_MARKERS = ("Engine core initialization failed", "EngineCore failed to start")
# Exception lines that only point elsewhere (the EngineCore's about its worker, the API server's about the
# EngineCore): the cause is an earlier exception.
WRAPPERS = ("See root cause above", "See stack trace for root cause")
MAX_CAUSE_CHARS = 400  # vLLM may list every missing weight in one line
# What vLLM puts before a line: the process tag of a child's output, then the logger's header.
_PROCESS_TAG = re.compile(r"^\((?:[\w.-]+ )?pid=\d+\)\s?")
_LOG_HEADER = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?")
_ARGPARSE_ERROR = re.compile(r"^[\w.-]+(?:\.py)?: error: ")
_TAIL_BYTES = 256 * 1024  # a failed start's traceback sits at the end; a long log is not read whole


def clean(line: str) -> str:
    """`line` without vLLM's process tag and log header."""
    line = _PROCESS_TAG.sub("", line.rstrip("\n"))
    return _LOG_HEADER.sub("", line)


def exception_lines(text: str) -> list[str]:
    """The exception line of each traceback in `text` (the first unindented line after its frames), and
    argparse's `prog: error: ...` lines, in order."""
    found, in_traceback = [], False
    for raw in text.splitlines():
        line = clean(raw)
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            in_traceback = False
            found.append(line.strip())
        elif _ARGPARSE_ERROR.match(line):
            found.append(line.strip())
    return found


def root_cause(text: str) -> str | None:
    """The line of `text` (an engine's log) that names why it failed: the last exception that is not a
    mere pointer to an earlier one (else the last exception), or None when the log holds none."""
    lines = exception_lines(text)
    causes = [line for line in lines if not any(w in line for w in WRAPPERS)]
    cause = (causes or lines or [None])[-1]
    if cause is not None and len(cause) > MAX_CAUSE_CHARS:
        cause = cause[:MAX_CAUSE_CHARS] + "…"
    return cause


def has_fatal_marker(text: str) -> bool:
    return any(marker in text for marker in FATAL_MARKERS)


@dataclass
class EngineLog:
    """The part of an engine's log written since one start (the supervisor appends every restart to one file)."""

    path: Path
    offset: int = 0

    @classmethod
    def at_end(cls, path: Path) -> EngineLog:
        """The log from its current end: what the next start will write."""
        try:
            return cls(path, path.stat().st_size)
        except OSError:
            return cls(path, 0)

    def text(self) -> str:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                f.seek(max(self.offset, size - _TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def fatal(self) -> bool:
        """Whether the engine has logged that its start failed for good."""
        return has_fatal_marker(self.text())

    def failure(self, exit_code: int | None = None, starting: bool = True, process: str = "engine") -> str:
        """One line for the operator: what failed, the root cause if the log names one, where the log is.

        `exit_code` None: the process logged its failure and may still be exiting. `process` names it (the
        same reading serves the gateway's own log).
        """
        if exit_code is None:
            what = f"the {process} failed to start"
        else:
            what = f"the {process} exited with code {exit_code}" + (" while starting" if starting else "")
            if exit_code < 0:
                what += " (killed by a signal" + (": out of memory?)" if exit_code == -9 else ")")
        cause = root_cause(self.text())
        return f"{what}: {cause or 'no exception in its log'} (log: {self.path})"
