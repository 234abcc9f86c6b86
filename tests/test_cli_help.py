"""The CLI's help, usage and error text are argparse's own, at argparse's own width.

cli._help_formatter finds the width without importing shutil (which brings zlib, bz2, lzma
and locale into the daemon).  The source of truth is CPython itself: Lib/argparse.py
HelpFormatter.__init__ takes ``shutil.get_terminal_size().columns - 2`` when no width is
given, and Lib/shutil.py get_terminal_size uses COLUMNS when it is a positive integer, else
the terminal on sys.__stdout__, else the fallback 80 (also when the terminal reports 0).
So each case runs the real CLI twice, once with its formatter and once with argparse's stock
HelpFormatter put back, in the same environment and on the same kind of stdout, and the
outputs must be identical byte for byte.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

OURS = "from xenguest_agent import cli\nraise SystemExit(cli.main({argv!r}))\n"
STOCK = ("import argparse\nfrom xenguest_agent import cli\n"
         "cli._help_formatter = lambda: argparse.HelpFormatter\nraise SystemExit(cli.main({argv!r}))\n")


def _env(columns: Optional[str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if columns is not None:
        env["COLUMNS"] = columns
    return env


def _run(code: str, argv: List[str], columns: Optional[str],
         tty_columns: Optional[int]) -> Tuple[int, bytes, bytes]:
    """Run ``code`` with stdout on a pipe, or on a pseudo-terminal ``tty_columns`` wide."""
    script = code.format(argv=argv)
    if tty_columns is None:
        done = subprocess.run([sys.executable, "-c", script], env=_env(columns),
                              capture_output=True, timeout=60)
        return done.returncode, done.stdout, done.stderr
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, tty_columns, 0, 0))
        proc = subprocess.Popen([sys.executable, "-c", script], env=_env(columns),
                                stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        err = proc.communicate(timeout=60)[1]
        return proc.returncode, out, err
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


CASES = [
    pytest.param("100", None, id="COLUMNS=100, pipe"),
    pytest.param("200", None, id="COLUMNS=200, pipe"),
    pytest.param(None, None, id="no COLUMNS, pipe: fallback 80"),
    pytest.param("0", None, id="COLUMNS=0 ignored, pipe"),
    pytest.param("wide", None, id="COLUMNS not a number, pipe"),
    pytest.param(None, 120, id="no COLUMNS, terminal 120 wide"),
    pytest.param("-5", 64, id="COLUMNS negative, terminal 64 wide"),
    pytest.param("70", 150, id="COLUMNS wins over the terminal"),
    pytest.param(None, 0, id="terminal reporting 0 columns: fallback 80"),
]

ARGVS = [["--help"], ["run", "--help"], ["status", "--help"], ["show", "--help"],
         ["--version"], ["run", "--bogus"], ["run", "--os", "plan9"], []]


@pytest.mark.parametrize("columns, tty_columns", CASES)
def test_help_usage_and_errors_identical_to_argparse(columns: Optional[str],
                                                     tty_columns: Optional[int]) -> None:
    for argv in ARGVS:
        ours = _run(OURS, argv, columns, tty_columns)
        stock = _run(STOCK, argv, columns, tty_columns)
        assert ours == stock, argv
        assert ours[0] in (0, 2), (argv, ours)
        assert ours[1] + ours[2], argv  # something was printed


def test_width_follows_the_environment() -> None:
    """The comparison above can fail: the text does depend on the width."""
    narrow = _run(OURS, ["run", "--help"], "50", None)[1]
    wide = _run(OURS, ["run", "--help"], "200", None)[1]
    assert narrow != wide
