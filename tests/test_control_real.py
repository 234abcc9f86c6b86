"""Shutdown requests, hooks and resume detection through the real CLI and the
real xenstored (over its socket, as dom0; the guest-domain versions with
permissions and quotas are in test_guest_domain_agent.py)."""

import signal
import sys
import time

import pytest
from support.guestroot import GuestRoot
from support.waiting import script, spawn_logged, wait_for

from xenguest_agent.xenstore import XenStore

HOME = "/local/domain/0"




@pytest.fixture
def agent(xenstored, tmp_path):
    """The real CLI as a subprocess, with a config whose poweroff/reboot commands
    and hooks only write marker files."""
    guest = GuestRoot(tmp_path / "guest")
    marks = tmp_path / "marks"
    marks.mkdir()
    etc = tmp_path / "etc"
    poweroff = script(etc / "fake-poweroff", f"echo poweroff >> {marks}/actions\n")
    reboot = script(etc / "fake-reboot", f"echo reboot >> {marks}/actions\n")
    for event in ("pre-shutdown", "pre-reboot", "post-resume", "post-migrate"):
        script(etc / "hooks" / event / "10-record",
               f"echo \"$1 old=$XENGUEST_OLD_DOMID new=$XENGUEST_NEW_DOMID "
               f"req=$XENGUEST_REQUEST\" >> {marks}/hooks\n")
    config = etc / "config.yaml"
    config.write_text(f"poll_interval: 0.2\ncontrol:\n  mode: auto\n  grace: 0.3\n"
                      f"  commands:\n    poweroff: [{poweroff}]\n    reboot: [{reboot}]\n")
    xenstored.write(f"{HOME}/domid", "5")
    proc = spawn_logged([sys.executable, "-m", "xenguest_agent", "run", "--xenstore", xenstored.spec,
                         "--root", str(guest.root), "--os", "linux", "--config", str(config),
                         "--log-level", "debug"], tmp_path / "agent.log")
    assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1"), \
        (tmp_path / "agent.log").read_text()
    proc.marks = marks
    proc.log = tmp_path / "agent.log"
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, proc.log.read_text()


def request(xenstored, reason):
    """What xenopsd's Domain.shutdown does: rm + write in one transaction."""
    store = XenStore(xenstored.spec)
    store.connect()
    try:
        def work(tx):
            tx.rm(f"{HOME}/control/shutdown")
            tx.write(f"{HOME}/control/shutdown", reason)
        store.transact(work)
    finally:
        store.close()
    return time.monotonic()


def read_lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_unanswered_request_is_acknowledged_and_performed_within_a_second(agent, xenstored):
    sent = request(xenstored, "poweroff")
    assert wait_for(lambda: xenstored.read(f"{HOME}/control/shutdown") == "", timeout=2)
    acked = time.monotonic() - sent
    assert acked < 1.0, f"acknowledged after {acked:.2f}s"
    assert wait_for(lambda: read_lines(agent.marks / "actions") == ["poweroff"])
    assert read_lines(agent.marks / "hooks") == ["pre-shutdown old= new= req=poweroff"]


def test_request_the_kernel_answers_is_only_observed(agent, xenstored):
    request(xenstored, "reboot")
    xenstored.write(f"{HOME}/control/shutdown", "")  # the kernel's acknowledgement
    time.sleep(0.8)  # well past the 0.3 s grace
    assert read_lines(agent.marks / "actions") == []
    # the pre-reboot hook ran only if the agent read the key before the
    # acknowledgement (a race a real kernel always wins): not asserted here


def test_default_power_commands_never_run_on_a_captured_tree(xenstored, tmp_path):
    """With --root, an unanswered request finds no command (the OS's own
    systemctl/shutdown would power off the test machine) and is not acknowledged."""
    guest = GuestRoot(tmp_path / "guest")
    config = tmp_path / "config.yaml"
    config.write_text("poll_interval: 0.2\ncontrol:\n  mode: agent\n")
    log = tmp_path / "agent.log"
    proc = spawn_logged([sys.executable, "-m", "xenguest_agent", "run", "--xenstore", xenstored.spec,
                         "--root", str(guest.root), "--os", "linux", "--config", str(config)], log)
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1")
        request(xenstored, "poweroff")
        assert wait_for(lambda: "no command is configured" in log.read_text())
        assert xenstored.read(f"{HOME}/control/shutdown") == "poweroff"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_hostile_value_is_refused_never_executed(agent, xenstored):
    request(xenstored, "poweroff;touch /tmp/pwned")
    time.sleep(0.8)
    assert xenstored.read(f"{HOME}/control/shutdown") == "poweroff;touch /tmp/pwned"
    assert read_lines(agent.marks / "actions") == [] and read_lines(agent.marks / "hooks") == []
    assert "refusing unknown control/shutdown value" in agent.log.read_text()


def test_migration_republishes_everything_and_runs_hooks(agent, xenstored):
    # the destination: a fresh tree, a new domid; the guest kernel re-fires watches
    for node in ("data", "attr"):
        xenstored.rm(f"{HOME}/{node}")
    started = time.monotonic()
    xenstored.write(f"{HOME}/domid", "7")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.2", timeout=2)
    assert time.monotonic() - started < 1.0
    assert xenstored.read(f"{HOME}/data/os_distro") == "debian"
    assert wait_for(lambda: read_lines(agent.marks / "hooks") ==
                    ["post-resume old=5 new=7 req=", "post-migrate old=5 new=7 req="])
