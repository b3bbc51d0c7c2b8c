"""Where library log records (aiokafka, faust, ...) go: the log file, and stderr only on request.

`set_up_logging` is called by the global --loglevel/--log-file options (cli/__init__.py)."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

from karma.streams.log_filters import quiet_repeats


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


DEFAULT_LOG_FILE = Path("karma-out/karma.log")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The handlers set_up_logging installed, so that a second call (CliRunner in tests) replaces them.
_installed_handlers: list[logging.Handler] = []


class _LazyFileHandler(logging.FileHandler):
    """A FileHandler (delay=True) that also makes its folder at the first record, so a run that
    logs nothing leaves nothing behind; a file it cannot write is one line on stderr, once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True, encoding="utf-8")
        self._failed = False

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self._failed:
            self._failed = True
            reason = sys.exc_info()[1]
            print(f"karma: cannot write the log file {self.baseFilename}: {reason}", file=sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (as logging's last resort does), so a handler
    left from a CliRunner invocation never writes to that runner's closed stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def set_up_logging(loglevel: str | None, log_file: Path | None) -> None:
    """Routes library log records (aiokafka, faust, mode, asyncio, ...) away from the terminal.

    They go to `log_file` at WARNING and above (and at `loglevel` if lower), and to stderr only
    at `loglevel` and above when it is given. Installed on the root logger, so without it
    Python's last-resort handler would print aiokafka's retried, harmless errors (e.g.
    NotLeaderForPartition on a topic created a moment ago) between the CLI's own lines. A faust
    worker replaces the root handlers with its own at start-up: `worker --loglevel` governs it.
    aiokafka's retry loops log a repeated warning or error once per 30 s (streams/log_filters.py),
    in workers too.
    """
    quiet_repeats()
    root = logging.getLogger()
    for handler in _installed_handlers:
        root.removeHandler(handler)
        handler.close()
    _installed_handlers.clear()
    terminal = logging.getLevelNamesMapping()[loglevel.upper()] if loglevel else None
    formatter = logging.Formatter(_LOG_FORMAT)
    levels = []
    if log_file is not None:
        file_level = min(logging.WARNING, terminal if terminal is not None else logging.WARNING)
        _installed_handlers.append(_LazyFileHandler(log_file))
        _installed_handlers[-1].setLevel(file_level)
        levels.append(file_level)
    if terminal is not None:
        _installed_handlers.append(_StderrHandler())
        _installed_handlers[-1].setLevel(terminal)
        levels.append(terminal)
    if not _installed_handlers:
        # Neither file nor terminal: a handler that drops everything keeps the last resort quiet.
        _installed_handlers.append(logging.NullHandler())
    for handler in _installed_handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(min(levels, default=logging.WARNING))
