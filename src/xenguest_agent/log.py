"""The agent's log: named loggers whose lines reach the journal with their priority.

Why not the ``logging`` package: with what it imports (``traceback``, ``string``,
``weakref``...) it is a large share of an idle daemon's memory and start-up
(docs/performance.md), and the daemon needs little of it: one stream, one level.

Where lines go is chosen once, by the command line (:func:`to_stream`, undone when the
command returns):

* to a stream (the daemon's stderr).  When that stream is the journal, which systemd
  says by ``JOURNAL_STREAM=<device>:<inode>`` naming the very file (systemd.exec(5),
  "JOURNAL_STREAM"), each line starts with its syslog priority as sd-daemon(3)
  describes (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so
  ``journalctl -p warning`` shows the agent's warnings; the journal adds the time.
  Anywhere else a line is ``time LEVEL logger: message``.
* otherwise (a library user, the tests) to the standard ``logging`` package, imported
  at the first line, under the same logger names and levels.
"""

from __future__ import annotations

import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Dict, Optional, TextIO, Tuple, Type, Union

    ExcInfo = Tuple[Type[BaseException], BaseException, Optional[TracebackType]]

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
#: sd-daemon(3): SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG
_PRIORITIES = {DEBUG: 7, INFO: 6, WARNING: 4, ERROR: 3}


class _Stream:
    """Lines to one text stream, one write per record under a lock (threads log too)."""

    def __init__(self, stream: TextIO, level: int, journal: bool) -> None:
        self.stream, self.level, self.journal = stream, level, journal
        self.lock = threading.Lock()

    def enabled(self, name: str, level: int) -> bool:
        return level >= self.level

    def emit(self, name: str, level: int, text: str, exc: Optional[ExcInfo]) -> None:
        if exc is not None:
            import traceback  # only when an exception is logged
            text += "\n" + "".join(traceback.format_exception(*exc)).rstrip("\n")
        if self.journal:
            prefix = f"<{_PRIORITIES.get(level, 6)}>"
            line = "\n".join(f"{prefix}{name}: {part}" for part in text.split("\n"))
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            line = f"{stamp} {_NAMES.get(level, level)} {name}: {text}"
        with self.lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed or full stream must not stop the agent
                pass


class _Bridge:
    """Records to the standard ``logging`` package (imported on first use)."""

    def enabled(self, name: str, level: int) -> bool:
        import logging
        return logging.getLogger(name).isEnabledFor(level)

    def emit(self, name: str, level: int, text: str, exc: Optional[ExcInfo]) -> None:
        import logging
        logging.getLogger(name).log(level, "%s", text, exc_info=exc)


def _render(msg: object, args: Tuple[object, ...]) -> str:
    """``msg % args``; when that fails (a bad format, an argument that cannot be shown) the
    format and whatever of the arguments can be shown, so a line is never lost nor raises."""
    try:
        return str(msg) % args if args else str(msg)
    except Exception:  # noqa: BLE001 - any argument's __str__/__format__ may raise anything
        pass
    shown = []
    for arg in args:
        try:
            shown.append(repr(arg))
        except Exception:  # noqa: BLE001 - as above, its __repr__
            shown.append(f"<unprintable {type(arg).__name__}>")
    try:
        text = str(msg)
    except Exception:  # noqa: BLE001
        text = f"<unprintable {type(msg).__name__}>"
    return f"{text} ({', '.join(shown)})"


class Logger:
    """The subset of ``logging.Logger`` the agent uses; ``msg % args`` is formatted only
    for a line that is written, and a bad format never raises."""

    def __init__(self, name: str, sinks: Dict[str, Union[_Stream, _Bridge]]) -> None:
        self.name = name
        self._sinks = sinks

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return self._sinks["current"].enabled(self.name, level)

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        sink = self._sinks["current"]
        if not sink.enabled(self.name, level):
            return
        text = _render(msg, args)
        exc = sys.exc_info() if exc_info else None
        sink.emit(self.name, level, text, exc if exc is not None and exc[0] is not None else None)

    def debug(self, msg: str, *args: object) -> None:
        self.log(DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.log(INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.log(ERROR, msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        self.log(ERROR, msg, *args, exc_info=True)


class _Loggers:
    """Every logger shares one sink holder, so choosing the sink reaches them all."""

    def __init__(self) -> None:
        self.sinks: Dict[str, Union[_Stream, _Bridge]] = {"current": _Bridge()}
        self.loggers: Dict[str, Logger] = {}

    def get(self, name: str) -> Logger:
        logger = self.loggers.get(name)
        if logger is None:
            logger = self.loggers[name] = Logger(name, self.sinks)
        return logger


_LOGGERS = _Loggers()


def get_logger(name: str) -> Logger:
    return _LOGGERS.get(name)


def is_journal(stream: TextIO, environ: Optional[Dict[str, str]] = None) -> bool:
    """True when ``stream`` is the file systemd named in ``JOURNAL_STREAM``."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    # decimal digits, as systemd writes them (systemd.exec(5)); int() alone would also take
    # "1_0", which systemd's own check (src/basic/log.c, stderr_is_journal) refuses
    if not (device.isascii() and device.isdigit() and inode.isascii() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (AttributeError, OSError, ValueError):  # no fd (a test's buffer), or no variable
        return False


class to_stream:  # noqa: N801 - used as a function: ``with log.to_stream(...):``
    """Send every logger's lines at ``level`` and above to ``stream`` until the block ends."""

    def __init__(self, level: int, stream: Optional[TextIO] = None) -> None:
        target = sys.stderr if stream is None else stream
        self._sink = _Stream(target, level, is_journal(target))
        self._before: Optional[Union[_Stream, _Bridge]] = None

    def __enter__(self) -> to_stream:
        self._before = _LOGGERS.sinks["current"]
        _LOGGERS.sinks["current"] = self._sink
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            _LOGGERS.sinks["current"] = self._before
