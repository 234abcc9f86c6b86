"""A Python child process inside a network namespace, read line by line.

The live rtnetlink and uevent tests run a small listener script in a namespace
(``ip netns exec`` execs it in place, so the child's pid is the listener's) and read what it
prints; the test fails, never hangs, when the child goes quiet or ends early.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from typing import Sequence

import pytest


def run(*argv: str) -> None:
    """Run a setup command (``ip ...``); its failure fails the test with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed: {result.stderr.strip()}", pytrace=False)


class NamespaceChild:
    """``python -c script *args`` in namespace ``ns``; its stdout lines, then "eof"."""

    what = "the child"

    def __init__(self, ns: str, script: str, args: Sequence[str] = (), timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-W", "error::ResourceWarning",
             "-c", script, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("eof")

    def expect(self, timeout: float | None = None) -> str:
        """The next line; fails the test when none comes within ``timeout``."""
        wait = self.timeout if timeout is None else timeout
        try:
            return self.lines.get(timeout=wait)
        except queue.Empty:
            self.kill()
            pytest.fail(f"no line from {self.what} within {wait}s", pytrace=False)

    def kill(self) -> None:
        """Stop the child and close its pipes (after the reader saw their end)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
