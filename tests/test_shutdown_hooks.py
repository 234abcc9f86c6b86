"""The daemon's stop path runs the pre-shutdown/pre-reboot hooks when systemd is taking the
system down (Linux acknowledges control/shutdown itself, so the agent learns of the shutdown
only when it is stopped: shutdownstate.py), and none on a plain stop.  The daemon runs against
the real xenstored; the question "is systemd shutting down?" is the injected seam."""

import os
import threading
import time

import pytest
from support.guestroot import GuestRoot
from support.waiting import wait_for

from xenguest_agent.agent import Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.daemon import Daemon
from xenguest_agent.hooks import Hooks
from xenguest_agent.host import Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore

HOME = "/local/domain/0"


def run_and_stop(xenstored, tmp_path, kind):
    hooks_dir = tmp_path / "hooks"
    ran = tmp_path / "ran"
    for event in ("pre-shutdown", "pre-reboot"):
        (hooks_dir / event).mkdir(parents=True)
        hook = hooks_dir / event / "10-record"
        hook.write_text('#!/bin/sh\necho "$1 $XENGUEST_REQUEST" >> %s\n' % ran)
        os.chmod(hook, 0o755)
    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    config = Config(interval=600)
    store = XenStore(xenstored.spec)
    store.connect()
    asked = []

    def shutdown_kind():
        asked.append(time.monotonic())
        return kind

    daemon = Daemon(Agent(LinuxBackend(host, CapturedAddresses(host)), config), store,
                    Publisher(store), config, hooks=Hooks(str(hooks_dir)),
                    shutdown_kind=shutdown_kind)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1", timeout=30)
        assert not asked  # asked only on the way out, never while running
    finally:
        daemon.stop()
        thread.join(60)
        store.close()
    assert not thread.is_alive()
    assert len(asked) == 1
    return ran.read_text().splitlines() if ran.exists() else []


@pytest.mark.parametrize("kind,expected", [("poweroff", ["pre-shutdown poweroff"]),
                                           ("halt", ["pre-shutdown halt"]),
                                           ("reboot", ["pre-reboot reboot"])])
def test_stopped_during_a_system_shutdown_runs_its_hooks(xenstored, tmp_path, kind, expected):
    assert run_and_stop(xenstored, tmp_path, kind) == expected


def test_a_plain_stop_runs_no_shutdown_hook(xenstored, tmp_path):
    assert run_and_stop(xenstored, tmp_path, None) == []


def test_a_request_the_agent_already_served_does_not_run_its_hook_twice(xenstored, tmp_path):
    """When the agent sees control/shutdown before the kernel acknowledges it (a race the agent
    sometimes wins: seen in the system test, where the pre-reboot hook ran with the stop-path
    wiring absent), Control runs the pre-reboot hook; the kernel's reboot then stops the agent,
    and the stop path must not run the same hook a second time."""
    from xenguest_agent.config import ControlConfig
    from xenguest_agent.control import Control
    from xenguest_agent.host import CommandResult

    def runner(argv, timeout=5.0):
        return CommandResult(tuple(argv), 0, "", "")

    hooks_dir = tmp_path / "hooks"
    ran = tmp_path / "ran"
    (hooks_dir / "pre-reboot").mkdir(parents=True)
    hook = hooks_dir / "pre-reboot" / "10-record"
    hook.write_text('#!/bin/sh\necho "$1 $XENGUEST_REQUEST" >> %s\n' % ran)
    os.chmod(hook, 0o755)
    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    config = Config(interval=600, control=ControlConfig(mode="observe"))
    store = XenStore(xenstored.spec)
    store.connect()
    hooks = Hooks(str(hooks_dir))
    control = Control(config.control, {}, runner, hooks, (), (), time.monotonic)
    daemon = Daemon(Agent(LinuxBackend(host, CapturedAddresses(host)), config), store,
                    Publisher(store), config, control=control, hooks=hooks,
                    shutdown_kind=lambda: "reboot")
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1", timeout=30)
        xenstored.write(f"{HOME}/control/shutdown", "reboot")
        assert wait_for(lambda: ran.exists(), timeout=60)
        xenstored.write(f"{HOME}/control/shutdown", "")  # the kernel's acknowledgement
    finally:
        daemon.stop()
        thread.join(60)
        store.close()
    assert not thread.is_alive()
    assert ran.read_text().splitlines() == ["pre-reboot reboot"]
