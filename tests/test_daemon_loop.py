"""The daemon's loop against the real xenstored: signals, event coalescing, reconnects.

Each test runs the real CLI as a subprocess (as a service manager would) or the
Daemon in a thread, and waits on what can be observed (XenStore keys, the
process exiting); timeouts are failure guards only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.guestroot import GuestRoot
from support.waiting import wait_for

HOME = "/local/domain/0"


@pytest.fixture
def cli_agent(xenstored, tmp_path):
    """``xenguest-agent run`` on a synthetic guest tree, logging to a file."""
    guest = GuestRoot(tmp_path / "guest")
    config = tmp_path / "config.yaml"
    config.write_text("poll_interval: 1\n")
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xenguest_agent", "run", "--xenstore", xenstored.spec,
             "--root", str(guest.root), "--os", "linux", "--config", str(config)],
            stderr=log_file)
    proc.log = log_path  # type: ignore[attr-defined]
    proc.guest = guest  # type: ignore[attr-defined]
    assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1", timeout=30), \
        log_path.read_text()
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_sighup_storm_then_sigterm_stops_the_daemon(cli_agent, xenstored):
    """A burst of SIGHUPs must not wedge the loop (issue 9, item 1).

    Before the fix the handler called queue.Queue.put, which takes a lock: a
    signal handled while the main thread held that lock blocked forever, and
    the SIGTERM that followed was never acted on.  The storm is sent in
    rounds, each followed by a check that the daemon still serves XenStore
    (a key removed behind its back comes back after a SIGHUP's republish)."""
    for _ in range(5):
        for _ in range(2000):
            os.kill(cli_agent.pid, signal.SIGHUP)
        xenstored.rm(f"{HOME}/data/os_uname")
        os.kill(cli_agent.pid, signal.SIGHUP)
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/os_uname") is not None, timeout=60), \
            "the daemon stopped publishing after a SIGHUP storm:\n" + Path(cli_agent.log).read_text()[-3000:]
    for _ in range(2000):
        os.kill(cli_agent.pid, signal.SIGHUP)
    cli_agent.send_signal(signal.SIGTERM)
    try:
        code = cli_agent.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM after a SIGHUP storm did not stop the daemon (wedged)")
    assert code == 0, Path(cli_agent.log).read_text()[-3000:]
