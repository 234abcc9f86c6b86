"""Shared fixtures. The XenStore ones run Debian's real xenstored (see tests/support/xenstored.py).

A test bed that cannot start is a failure, never a skip: a suite that quietly skips every XenStore
test would pass while proving nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.xenstored import Xenstored, XenstoredError, build_shim, check_requirements  # noqa: E402


# --- the real xenstored ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def xenstored_shim() -> Path:
    """The LD_PRELOAD shim, built once per session (and cached across sessions by source hash)."""
    try:
        check_requirements()
        return build_shim()
    except XenstoredError as exc:
        pytest.fail(f"real xenstored test bed unavailable: {exc}", pytrace=False)


@pytest.fixture
def xenstored_factory(tmp_path: Path, xenstored_shim: Path) -> Iterator[Callable[..., Xenstored]]:
    """Start daemons with custom options: ``xenstored_factory(quota_nodes=50)``; all stopped after.

    Each call gets its own directory under tmp_path; keyword arguments go to Xenstored.
    """
    started: List[Xenstored] = []

    def start(**options: object) -> Xenstored:
        daemon = Xenstored(tmp_path / f"xenstored{len(started)}", shim=xenstored_shim, **options)
        started.append(daemon)
        try:
            return daemon.start()
        except XenstoredError as exc:
            pytest.fail(f"real xenstored did not start: {exc}", pytrace=False)

    yield start
    for daemon in started:
        daemon.close()


@pytest.fixture
def xenstored(xenstored_factory: Callable[..., Xenstored]) -> Xenstored:
    """A fresh real xenstored with default options, stopped at teardown."""
    return xenstored_factory()
