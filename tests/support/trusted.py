"""A scratch directory that the agent's trust check accepts.

A config that names commands or a hook directory must be root's alone: the file and
every directory up to ``/`` owned by root and writable by no one else
(config.check_trusted_config).  pytest's tmp_path lies under /tmp (mode 1777), which
fails that check by design, so tests that need a trusted config make one here, under
/run (root-owned, 0755 on Debian and every systemd system).  Without root there is no
such directory: the tests fail loudly rather than skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

BASE = "/run"


@contextlib.contextmanager
def trusted_directory() -> Iterator[Path]:
    if os.geteuid() != 0:
        raise AssertionError("a root-owned directory chain needs root: run the suite as root")
    path = Path(tempfile.mkdtemp(prefix="xenguest-agent-test-", dir=BASE))
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
