"""log.py: the agent's loggers, their journal priorities and their bridge to ``logging``.

Sources of truth:

* sd-daemon(3) (systemd/systemd man/sd-daemon.xml; the macros in src/systemd/sd-daemon.h):
  SD_ERR is ``<3>``, SD_WARNING ``<4>``, SD_INFO ``<6>``, SD_DEBUG ``<7>``; "prefix every
  line with one of these strings. A line that is not prefixed will be logged at the default
  log level SD_INFO" (so each line of a traceback carries the prefix).
* systemd.exec(5), ``$JOURNAL_STREAM``: the device and inode numbers of the stream connected
  to the journal, decimal, separated by a colon; a process checks them against its own
  stderr.  systemd's own check, src/basic/log.c ``stderr_is_journal()``: split at the first
  ``:``, each half must be a whole unsigned number (``safe_atou64``: strtoull, with nothing
  after the digits) equal to ``st_dev``/``st_ino`` of fstat(stderr); anything else means "not
  the journal".
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, TextIO

import pytest

from support.guestroot import GuestRoot
from support.waiting import wait_for
from support.xenstored import Xenstored
from xenguest_agent import log

NAME = "xenguest_agent.test_log"
PLAIN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) (\S+): (.*)$")
JOURNAL = re.compile(r"^<([0-7])>(\S+): (.*)$")
#: sd-daemon(3): SD_DEBUG, SD_INFO, SD_WARNING, SD_ERR
PRIORITY = {log.DEBUG: "7", log.INFO: "6", log.WARNING: "4", log.ERROR: "3"}
HOME = "/local/domain/0"


@pytest.fixture
def no_journal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)


@pytest.fixture
def stream(tmp_path: Path, no_journal_env: None) -> Iterator[TextIO]:
    with open(tmp_path / "stderr", "w+") as handle:
        yield handle


def identity(handle: TextIO) -> str:
    info = os.fstat(handle.fileno())
    return f"{info.st_dev}:{info.st_ino}"


def lines(handle: TextIO) -> List[str]:
    handle.flush()
    handle.seek(0)
    return handle.read().splitlines()


def log_every_level(logger: log.Logger) -> None:
    logger.debug("d %s", 1)
    logger.info("i %s", 2)
    logger.warning("w %s", 3)
    logger.error("e %s", 4)


# --- journal detection -------------------------------------------------------------------------

def test_journal_stream_naming_the_stream_gives_sd_daemon_prefixes(
        stream: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", identity(stream))
    with log.to_stream(log.DEBUG, stream):
        log_every_level(log.get_logger(NAME))
    assert lines(stream) == [f"<7>{NAME}: d 1", f"<6>{NAME}: i 2", f"<4>{NAME}: w 3",
                             f"<3>{NAME}: e 4"]


def test_a_multi_line_message_is_prefixed_on_every_line(
        stream: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", identity(stream))
    with log.to_stream(log.INFO, stream):
        log.get_logger(NAME).warning("first\nsecond")
    assert lines(stream) == [f"<4>{NAME}: first", f"<4>{NAME}: second"]


def journal_values(stream: TextIO, other: TextIO) -> Dict[str, str]:
    dev, ino = identity(stream).split(":")
    return {
        "another file": identity(other),
        "same inode, another device": f"{int(dev) + 1}:{ino}",
        "empty": "", "no colon": dev, "no inode": f"{dev}:", "no device": f":{ino}",
        "three fields": f"{dev}:{ino}:0", "letters": "x:y", "trailing garbage": f"{dev}:{ino}x",
        # strtoull (safe_atou64) stops at "_" and so refuses it; Python's int() takes it
        "digit grouping": f"{dev[0]}_{dev[1:]}:{ino}" if len(dev) > 1 else f"0_{dev}:{ino}",
    }


@pytest.mark.parametrize("case", ["absent", "another file", "same inode, another device", "empty",
                                  "no colon", "no inode", "no device", "three fields", "letters",
                                  "trailing garbage", "digit grouping"])
def test_anything_but_the_streams_own_identity_gives_plain_lines(
        case: str, stream: TextIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "other", "w") as other:
        if case != "absent":
            monkeypatch.setenv("JOURNAL_STREAM", journal_values(stream, other)[case])
        assert not log.is_journal(stream)
        with log.to_stream(log.DEBUG, stream):
            log_every_level(log.get_logger(NAME))
    written = lines(stream)
    assert [PLAIN.match(line).groups() for line in written] == [  # type: ignore[union-attr]
        ("DEBUG", NAME, "d 1"), ("INFO", NAME, "i 2"), ("WARNING", NAME, "w 3"),
        ("ERROR", NAME, "e 4")], written


def test_is_journal_reads_the_given_environment(stream: TextIO) -> None:
    assert log.is_journal(stream, {"JOURNAL_STREAM": identity(stream)})
    assert not log.is_journal(stream, {})
    import io
    assert not log.is_journal(io.StringIO(), {"JOURNAL_STREAM": identity(stream)})  # no fd


# --- level threshold, exceptions, bad formats ---------------------------------------------------

@pytest.mark.parametrize("level", [log.DEBUG, log.INFO, log.WARNING, log.ERROR])
def test_lines_below_the_level_are_not_written(stream: TextIO, level: int) -> None:
    logger = log.get_logger(NAME)
    with log.to_stream(level, stream):
        log_every_level(logger)
        enabled = [logger.isEnabledFor(each) for each in sorted(PRIORITY)]
    written = [PLAIN.match(line).group(1) for line in lines(stream)]  # type: ignore[union-attr]
    wanted = [name for value, name in ((10, "DEBUG"), (20, "INFO"), (30, "WARNING"), (40, "ERROR"))
              if value >= level]
    assert written == wanted
    assert enabled == [each >= level for each in sorted(PRIORITY)]


def fail_deep() -> None:
    raise ValueError("boom")


def test_exception_appends_the_traceback_with_every_line_prefixed(
        stream: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", identity(stream))
    with log.to_stream(log.INFO, stream):
        try:
            fail_deep()
        except ValueError:
            log.get_logger(NAME).exception("round failed: %s", "publish")
    written = lines(stream)
    assert written[0] == f"<3>{NAME}: round failed: publish"
    assert written[1] == f"<3>{NAME}: Traceback (most recent call last):"
    assert written[-1] == f"<3>{NAME}: ValueError: boom"
    assert any("in fail_deep" in line for line in written)
    assert all(line.startswith(f"<3>{NAME}: ") for line in written), written


def test_exception_in_plain_mode_follows_the_first_line(stream: TextIO) -> None:
    with log.to_stream(log.INFO, stream):
        try:
            fail_deep()
        except ValueError:
            log.get_logger(NAME).exception("round failed")
    written = lines(stream)
    assert PLAIN.match(written[0]).groups() == ("ERROR", NAME, "round failed")  # type: ignore
    assert written[1] == "Traceback (most recent call last):"
    assert written[-1] == "ValueError: boom"


class Hostile:
    """An argument whose every rendering fails."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")


BAD = [("%d", ("x",)), ("%s %s", (1,)), ("%(key)s", (1,)), ("100%", (1,)), ("%s", (1, 2)),
       ("%s", (Hostile(),)), ("value %d", (Hostile(),))]


@pytest.mark.parametrize("journal", [False, True], ids=["plain", "journal"])
def test_a_bad_format_never_raises_and_keeps_the_message(
        stream: TextIO, monkeypatch: pytest.MonkeyPatch, journal: bool) -> None:
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", identity(stream))
    logger = log.get_logger(NAME)
    with log.to_stream(log.DEBUG, stream):
        for msg, args in BAD:
            logger.warning(msg, *args)
    written = lines(stream)
    assert len(written) == len(BAD), written
    for line, (msg, _) in zip(written, BAD):
        assert msg in line
    assert "'x'" in written[0]  # the argument is kept too


def test_a_message_that_is_not_a_string_is_shown_as_logging_shows_it(
        stream: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """logging renders ``str(msg)`` (LogRecord.getMessage); ``log.warning(exc)`` is a line."""
    monkeypatch.setenv("JOURNAL_STREAM", identity(stream))
    with log.to_stream(log.DEBUG, stream):
        log.get_logger(NAME).warning(OSError(2, "gone"))  # type: ignore[arg-type]
    assert lines(stream) == [f"<4>{NAME}: [Errno 2] gone"]


def test_a_bad_format_through_the_bridge_never_raises(caplog: pytest.LogCaptureFixture,
                                                      no_journal_env: None) -> None:
    caplog.set_level(logging.DEBUG, logger=NAME)
    for msg, args in BAD:
        log.get_logger(NAME).warning(msg, *args)
    assert [r.getMessage().startswith(msg) for r, (msg, _) in zip(caplog.records, BAD)] == \
        [True] * len(BAD)


# --- the sink: to_stream and the bridge to logging ----------------------------------------------

def test_to_stream_restores_the_previous_sink(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              no_journal_env: None) -> None:
    caplog.set_level(logging.DEBUG, logger=NAME)
    logger = log.get_logger(NAME)
    with open(tmp_path / "outer", "w+") as outer, open(tmp_path / "inner", "w+") as inner:
        with log.to_stream(log.INFO, outer):
            logger.info("outer 1")
            with log.to_stream(log.INFO, inner):
                logger.info("inner")
            logger.info("outer 2")
            with pytest.raises(KeyError):
                with log.to_stream(log.INFO, inner):
                    raise KeyError("in the block")
            logger.info("outer 3")
        logger.info("bridged")
        assert [line.split(": ", 1)[1] for line in lines(outer)] == \
            ["outer 1", "outer 2", "outer 3"]
        assert [line.split(": ", 1)[1] for line in lines(inner)] == ["inner"]
    assert [r.getMessage() for r in caplog.records] == ["bridged"]


def test_default_sink_bridges_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    logger = log.get_logger(NAME)
    caplog.set_level(logging.WARNING, logger=NAME)
    assert not logger.isEnabledFor(log.INFO) and logger.isEnabledFor(log.WARNING)
    logger.info("not seen %s", 1)
    logger.warning("seen %s", 2)
    try:
        fail_deep()
    except ValueError:
        logger.exception("failed %s", 3)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (NAME, logging.WARNING, "seen 2"), (NAME, logging.ERROR, "failed 3")]
    exc_info = caplog.records[1].exc_info
    assert exc_info is not None and isinstance(exc_info[1], ValueError)
    assert "ValueError: boom" in caplog.text
    # logging's own levels are log.py's
    assert (log.DEBUG, log.INFO, log.WARNING, log.ERROR) == \
        (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


# --- threads ---------------------------------------------------------------------------------

class Trickle:
    """A stream that writes each string in small pieces, letting other threads run between
    them (as a Python-level stream or a partial write may): whole lines need log.py's lock."""

    def __init__(self) -> None:
        self.parts: List[str] = []

    def write(self, text: str) -> int:
        for start in range(0, len(text), 7):
            self.parts.append(text[start:start + 7])
            time.sleep(0)
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise OSError("no descriptor")


def hammer(logger: log.Logger, threads: int, each: int) -> None:
    barrier = threading.Barrier(threads)

    def work(number: int) -> None:
        barrier.wait()
        for index in range(each):
            logger.info("thread %d line %d %s", number, index, "x" * 200)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert not worker.is_alive()


def check_whole(written: List[str], threads: int, each: int, pattern: re.Pattern[str]) -> None:
    seen = set()
    for line in written:
        match = pattern.match(line)
        assert match is not None, line[:120]
        body = re.fullmatch(r"thread (\d+) line (\d+) (x{200})", match.groups()[-1])
        assert body is not None, line[:120]
        seen.add((int(body.group(1)), int(body.group(2))))
    assert len(written) == threads * each
    assert seen == {(n, i) for n in range(threads) for i in range(each)}


def test_many_threads_every_line_whole_in_a_file(stream: TextIO,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", identity(stream))
    with log.to_stream(log.INFO, stream):
        hammer(log.get_logger(NAME), 8, 200)
    check_whole(lines(stream), 8, 200, JOURNAL)


def test_many_threads_every_line_whole_in_a_piecewise_stream(no_journal_env: None) -> None:
    trickle = Trickle()
    with log.to_stream(log.INFO, trickle):  # type: ignore[arg-type]
        hammer(log.get_logger(NAME), 8, 50)
    check_whole("".join(trickle.parts).splitlines(), 8, 50, PLAIN)


# --- end to end: the daemon's own stderr ---------------------------------------------------------

def run_daemon(tmp_path: Path, xenstored: Xenstored, journal: bool) -> List[str]:
    """Start ``python -m xenguest_agent run`` with stderr to a file, wait for its first publish
    and its log line, stop it with SIGTERM; its stderr lines."""
    guest = GuestRoot(tmp_path / "guest")
    path = tmp_path / "daemon.stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(path, "w") as stderr:
        if journal:
            env["JOURNAL_STREAM"] = identity(stderr)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "xenguest_agent", "run", "--xenstore",
             xenstored.spec, "--root", str(guest.root), "--os", "linux"],
            stderr=stderr, env=env)
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1"), path.read_text()
        assert wait_for(lambda: "published:" in path.read_text()), path.read_text()
        assert daemon.poll() is None, path.read_text()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, path.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(30)
    return path.read_text().splitlines()


def test_daemon_under_journal_stream_writes_priorities(tmp_path: Path, xenstored: Xenstored) -> None:
    written = run_daemon(tmp_path, xenstored, journal=True)
    assert written and all(JOURNAL.match(line) for line in written), written
    assert re.match(r"^<6>xenguest_agent\.cli: xenguest-agent \S+ starting: linux backend",
                    written[0]), written
    assert any(re.match(r"^<6>xenguest_agent\.daemon: stopped after \d+ rounds$", line)
               for line in written), written


def test_daemon_elsewhere_writes_plain_lines(tmp_path: Path, xenstored: Xenstored) -> None:
    written = run_daemon(tmp_path, xenstored, journal=False)
    matches: List[Optional[re.Match[str]]] = [PLAIN.match(line) for line in written]
    assert written and all(matches), written
    first = matches[0]
    assert first is not None and first.group(1, 2) == ("INFO", "xenguest_agent.cli")
    assert first.group(3).startswith("xenguest-agent ") and " starting: linux backend" in first.group(3)
