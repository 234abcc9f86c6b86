"""Small helpers shared by the integration tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

#: The default failure guard of :func:`wait_for`: long, because the machine may be loaded.  It only
#: bounds how long a failing test takes; no test may read a meaning into the time something took
#: (speed is the benchmark's business) or into something not happening within it.
GUARD = 30.0


def wait_for(predicate: Callable[[], object], timeout: float = GUARD, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; True if it became true.

    Only ever ``assert wait_for(...)``: a False after the timeout is a failure, never evidence
    that something did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def leaves(tree: dict[str, str]) -> dict[str, str]:
    """The nodes of a dumped tree that have no children (the published keys)."""
    return {k: v for k, v in tree.items() if not any(o.startswith(k + "/") for o in tree)}


def script(path: Path, body: str) -> Path:
    """An executable /bin/sh script (a fake command or a hook)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def spawn_logged(argv: Sequence[str], log: Path, mode: str = "w",
                 **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` with stderr going to ``log``.  The child keeps its own descriptor;
    the parent's copy is closed at once, so no test leaks the file (-W error::ResourceWarning)."""
    with open(log, mode) as stderr:
        return subprocess.Popen(list(argv), stderr=stderr, **kwargs)
