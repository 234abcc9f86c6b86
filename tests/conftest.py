"""Shared fixtures. The XenStore ones run Debian's real xenstored (see tests/support/xenstored.py).

A test bed that cannot start is a failure, never a skip: a suite that quietly skips every XenStore
test would pass while proving nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support.toolstack import GuestDomain  # noqa: E402
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


# --- the agent as a real unprivileged guest domain (issue 3) --------------------------------------

@pytest.fixture
def guest_domain_factory(
        xenstored_factory: Callable[..., Xenstored]) -> Iterator[Callable[..., GuestDomain]]:
    """Start a guest domain on its own real xenstored: ``guest_domain_factory(quota_nodes=50)``.

    ``guest_domain_factory(domid=5, *, kernel=None, unique_domain_id=True, control_writable=True,
    extra_keys=None, **xenstored_options)``: ``kernel`` starts a guest kernel's shutdown watcher
    ("linux", "freebsd", "freebsd-old", "none"; see support.toolstack.KERNELS); the next three go
    to the Toolstack (plain-xl mode without unique-domain-id; libxl's read-only control/; extra
    keys written in the home); the rest to Xenstored (quota_nodes, quota_node_size, quota_watches,
    quota_transactions, ...). The domain is built and introduced; connect the agent to ``.spec``.
    Everything is closed at teardown, before the daemons stop.
    """
    started: List[GuestDomain] = []

    def start(domid: int = 5, *, kernel: Optional[str] = None, unique_domain_id: bool = True,
              control_writable: bool = True, extra_keys: Optional[Dict[str, str]] = None,
              **xenstored_options: object) -> GuestDomain:
        domains = tuple(xenstored_options.pop("domains", ())) + (domid,)  # type: ignore[arg-type]
        daemon = xenstored_factory(domains=domains, **xenstored_options)
        guest = GuestDomain(daemon, domid, kernel=kernel, unique_domain_id=unique_domain_id,
                            control_writable=control_writable, extra_keys=extra_keys)
        started.append(guest)
        try:
            return guest.start()
        except Exception as exc:  # the bed is broken: a failure, never a skip
            pytest.fail(f"guest domain {domid} did not start: {exc}\n"
                        f"{daemon.log_path.read_text(errors='replace')[-2000:]}", pytrace=False)

    yield start
    for guest in started:
        guest.close()


@pytest.fixture
def guest_domain(guest_domain_factory: Callable[..., GuestDomain]) -> GuestDomain:
    """Domain 5 on a fresh real xenstored with default quotas, built and introduced like xenopsd
    does: ``.spec`` for ``XenStore(spec)``, ``.domid``, ``.home``, ``.toolstack``, ``.bridge``,
    ``.xenstored``."""
    return guest_domain_factory()


# --- network namespaces (live rtnetlink) -------------------------------------------------------

@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, always deleted afterwards.  Needs root and iproute2: without
    them the test fails (CI installs iproute2), it never skips."""
    import os
    import shutil
    import subprocess
    import time

    if shutil.which("ip") is None:
        pytest.fail("iproute2's 'ip' is required for the live network tests (install iproute2)",
                    pytrace=False)
    name = f"xga-test-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(f"'ip netns add' is unavailable ({result.stderr.strip()}); the live network "
                    "tests need root and iproute2", pytrace=False)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


# --- a directory hooks may run from (hooks.py trusts no world-writable ancestor such as /tmp) ----

@pytest.fixture
def trusted_tmp() -> Iterator[Path]:
    """A fresh directory whose every ancestor is root's and not group/other-writable, as the
    hook and config trust checks require (support/trusted.py); tmp_path lives under /tmp
    (mode 1777), where no hook may ever run."""
    from support.trusted import trusted_directory

    with trusted_directory() as path:
        yield path
