"""control/shutdown handling, with fake hook jobs (the seam) and an in-memory store; the real
hook runner where a test says so (the same flows against the real xenstored:
test_control_real.py)."""

import errno
import os

import pytest

from support.memstore import MemStore
from xenguest_agent.config import ControlConfig
from xenguest_agent.control import Control, describe
from xenguest_agent.hooks import Hooks
from xenguest_agent.xenstore import XenStoreUnavailable


class FakeJob:
    def __init__(self):
        self.done = False
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeHooks:
    """Records what Control starts; the jobs finish only when the test says so."""

    def __init__(self):
        self.started = []
        self.jobs = []

    def _job(self):
        job = FakeJob()
        self.jobs.append(job)
        return job

    def start(self, event, details):
        self.started.append(("hooks", event, details.get("request")))
        return self._job()

    def start_command(self, name, argv, timeout):
        self.started.append(("command", tuple(argv)))
        return self._job()

    def finish_all(self):
        for job in self.jobs:
            job.done = True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


COMMANDS = {"poweroff": ("systemctl", "poweroff"), "reboot": ("systemctl", "reboot"),
            "halt": ("systemctl", "halt")}


def make(mode="auto", kernel=("poweroff", "reboot", "suspend"), unadvertised=(), state_path=None,
         hooks=None):
    hooks, clock = hooks or FakeHooks(), Clock()
    control = Control(ControlConfig(mode=mode, grace=2.0), COMMANDS, hooks, kernel, unadvertised,
                      clock, state_path=state_path)
    return control, hooks, clock


def commands(hooks):
    return [s[1] for s in hooks.started if s[0] == "command"]


def test_kernel_acknowledges_in_auto_mode_agent_only_observes():
    store, (control, hooks, clock) = MemStore(), make()
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    assert control.deadline() == 102.0
    assert hooks.started == [("hooks", "pre-shutdown", "poweroff")]
    store.write("control/shutdown", "")  # the kernel's acknowledgement
    control.on_event(store)
    assert control.deadline() is None
    clock.now = 103.0
    control.on_deadline(store)
    assert commands(hooks) == []
    hooks.finish_all()
    control.poll()
    assert control.pending is None


def test_nobody_acknowledges_agent_takes_over_after_grace_whatever_the_hooks_do():
    """Issue 9 item 2: the pre-shutdown hooks are still running at the deadline; the
    acknowledgement is not held back by them, and the command is queued behind them."""
    store, (control, hooks, clock) = MemStore(), make()
    store.write("control/shutdown", "reboot")
    control.on_event(store)
    assert not hooks.jobs[0].done  # still running
    clock.now = 102.0
    control.on_deadline(store)
    assert store.nodes["control/shutdown"] == ""  # acknowledged at the deadline
    assert hooks.started == [("hooks", "pre-reboot", "reboot"), ("command", ("systemctl", "reboot"))]
    assert control.busy and control.deadline() is None
    hooks.finish_all()
    control.poll()
    assert control.pending is None and not control.busy


def test_ack_is_read_compared_and_written_in_one_transaction():
    """Linux drivers/xen/manage.c shutdown_handler: transaction start, read, write "", end."""
    store, (control, _, clock) = MemStore(), make()
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    store.requests.clear()
    clock.now = 102.0
    control.on_deadline(store)
    ops = [r[0] for r in store.requests]
    assert ops == ["begin", "read", "write", "end"]
    assert store.requests[-1] == ("end", b"T\x00")  # committed


def test_kernel_acknowledged_before_the_deadline_unseen_means_no_command():
    """The key already holds "" when the grace period ends (its watch event not yet
    handled): the transaction's read sees it and nothing is carried out."""
    store, (control, hooks, clock) = MemStore(), make()
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    store.nodes["control/shutdown"] = ""
    clock.now = 102.0
    control.on_deadline(store)
    assert commands(hooks) == [] and store.writes() == ["control/shutdown"]


@pytest.mark.parametrize("mode", ["agent", "auto"])
def test_refused_acknowledgement_acts_once_per_request(mode, caplog):
    """Issue 9 item 11: with control/shutdown read-only (EACCES on the ack) the command and the
    hooks ran again at every watch event.  Linux (manage.c) ignores the write's result and
    carries the request out; so does the agent, once, and says so."""
    store, (control, hooks, clock) = MemStore(), make(mode=mode)
    store.write("control/shutdown", "poweroff")
    store.refuse["control/shutdown"] = errno.EACCES
    for _ in range(6):  # the request's event, then spurious ones (resume checks, re-fires)
        control.on_event(store)
        clock.now += 3.0
        control.on_deadline(store)
        hooks.finish_all()
        control.poll()
    assert hooks.started == [("hooks", "pre-shutdown", "poweroff"),
                             ("command", ("systemctl", "poweroff"))]
    assert store.nodes["control/shutdown"] == "poweroff"
    assert any("could not acknowledge" in r.getMessage() for r in caplog.records)


def test_a_request_is_new_once_the_key_held_something_else():
    store, (control, hooks, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    control.on_event(store)
    assert len(commands(hooks)) == 1
    store.write("control/shutdown", "reboot")  # a different request
    control.on_event(store)
    store.write("control/shutdown", "")
    control.on_event(store)
    store.write("control/shutdown", "reboot")  # asked again after the acknowledgement
    control.on_event(store)
    assert commands(hooks) == [("systemctl", "poweroff"), ("systemctl", "reboot"),
                               ("systemctl", "reboot")]


def test_agent_mode_acts_at_once_and_observe_mode_never():
    store, (control, hooks, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", "halt")
    control.on_event(store)
    assert hooks.started == [("hooks", "pre-shutdown", "halt"), ("command", ("systemctl", "halt"))]
    assert store.nodes["control/shutdown"] == ""
    store, (control, hooks, clock) = MemStore(), make(mode="observe")
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    assert control.deadline() is None
    clock.now = 1000.0
    control.on_deadline(store)
    assert commands(hooks) == [] and store.nodes["control/shutdown"] == "poweroff"
    assert hooks.started == [("hooks", "pre-shutdown", "poweroff")]


def test_suspend_is_never_performed_by_the_agent():
    store, (control, hooks, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", "suspend")
    control.on_event(store)
    assert commands(hooks) == [] and store.nodes["control/shutdown"] == "suspend"
    assert hooks.started == [("hooks", "pre-suspend", "suspend")]


def test_cancel_kills_the_requests_jobs():
    store, (control, hooks, clock) = MemStore(), make()
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    clock.now = 102.0
    control.on_deadline(store)
    control.cancel()
    assert [job.cancelled for job in hooks.jobs] == [True, True] and control.pending is None


class LostStore(MemStore):
    """The connection breaks at the acknowledgement's transaction."""

    def __init__(self):
        super().__init__()
        self.lost = True

    def transact(self, work, attempts=8):
        if self.lost:
            raise XenStoreUnavailable("the connection broke")
        return super().transact(work, attempts)


@pytest.mark.parametrize("mode", ["agent", "auto"])
def test_a_lost_connection_at_the_ack_leaves_the_request_to_handle_after_reconnecting(mode):
    store, (control, hooks, clock) = LostStore(), make(mode=mode)
    store.write("control/shutdown", "poweroff")
    with pytest.raises(XenStoreUnavailable):
        control.on_event(store)
        clock.now = 102.0
        control.on_deadline(store)
    assert commands(hooks) == []
    store.lost = False  # reconnected: the watch fires again, the loop checks the deadline
    control.on_event(store)
    control.on_deadline(store)
    assert commands(hooks) == [("systemctl", "poweroff")]
    assert store.nodes["control/shutdown"] == ""


@pytest.mark.parametrize("value", [
    "poweroff; rm -rf /", "$(reboot)", "POWEROFF", "reboot\n", "x" * 4000, "halt\x00now", " poweroff",
])
def test_hostile_values_are_refused_and_logged_once(value, caplog):
    store, (control, hooks, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", value)
    control.on_event(store)
    control.on_event(store)
    assert hooks.started == [] and store.nodes["control/shutdown"] == value
    refusals = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert len(refusals) == 1
    assert len(refusals[0].getMessage()) < 300  # bounded, whatever the value's size


def test_describe_bounds_untrusted_text():
    assert describe("a" * 1000).endswith("... (1000 bytes)")
    assert "\\n" in describe("x\ny")


def test_features_linux_remembers_the_kernels_and_freebsd_advertises():
    store, (control, _, _) = MemStore(), make()
    store.write("control/feature-poweroff", "1")
    store.write("control/feature-reboot", "1")
    control.learn(store)
    assert control.advertised() == {"control/feature-poweroff": "1", "control/feature-reboot": "1"}
    store, (control, _, _) = MemStore(), make(kernel=(), unadvertised=("poweroff", "reboot", "suspend"))
    control.learn(store)
    assert control.advertised() == {"control/feature-poweroff": "1", "control/feature-reboot": "1",
                                    "control/feature-suspend": "1"}


# --- item 12: the kernel's flags survive a restart of the agent ------------------------------

def booted_tree():
    """What Linux wrote at boot: setup_shutdown_watcher (drivers/xen/manage.c) writes
    control/feature-<cmd> = 1 for poweroff, reboot and suspend; feature-vcpu-hotplug is
    written by someone else when present (xapi checks it for changing_VCPUs_live)."""
    store = MemStore()
    for name in ("poweroff", "reboot", "suspend", "vcpu-hotplug"):
        store.write(f"control/feature-{name}", "1")
    return store


EXPECTED = {f"control/feature-{n}": "1" for n in ("poweroff", "reboot", "suspend", "vcpu-hotplug")}


def test_flags_learned_at_boot_survive_a_restart_after_a_migration(trusted_tmp):
    """Issue 9 item 12: the restarted agent sees a fresh tree without the kernel's flags."""
    state = str(trusted_tmp / "run" / "kernel-features")
    control, _, _ = make(state_path=state)
    control.learn(booted_tree())
    assert control.advertised() == EXPECTED
    with open(state) as kept:
        assert kept.read() == "poweroff\nreboot\nsuspend\nvcpu-hotplug\n"
    restarted, _, _ = make(state_path=state)
    restarted.learn(MemStore())  # the destination's tree: nothing of the kernel's
    assert restarted.advertised() == EXPECTED


def test_state_file_is_written_only_when_it_changes(trusted_tmp):
    state = trusted_tmp / "kernel-features"
    control, _, _ = make(state_path=str(state))
    control.learn(booted_tree())
    before = os.stat(state)
    control.learn(booted_tree())
    make(state_path=str(state))[0].learn(booted_tree())
    after = os.stat(state)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert sorted(os.listdir(trusted_tmp)) == ["kernel-features"]  # no temporary left


def test_state_file_contents_are_bounded_and_only_known_flags(trusted_tmp):
    state = trusted_tmp / "kernel-features"
    state.write_text("reboot\n$(rm -rf /)\nballoon\n" + "x" * 100000 + "\npoweroff\n")
    control, _, _ = make(state_path=str(state))
    control.learn(MemStore())
    assert control.advertised() == {"control/feature-reboot": "1"}  # poweroff is past the bound


@pytest.mark.parametrize("attack", ["symlink", "foreign owner", "world-writable", "writable dir"])
def test_untrusted_state_file_is_ignored(trusted_tmp, tmp_path, attack, caplog):
    folder = trusted_tmp / "run"
    folder.mkdir()
    state = folder / "kernel-features"
    if attack == "symlink":
        planted = tmp_path / "planted"
        planted.write_text("poweroff\n")
        state.symlink_to(planted)
    else:
        state.write_text("poweroff\n")
        if attack == "foreign owner":
            os.chown(state, 1000, 1000)
        elif attack == "world-writable":
            state.chmod(0o666)
        else:
            folder.chmod(0o777)
    control, _, _ = make(state_path=str(state))
    control.learn(MemStore())
    assert control.advertised() == {}
    assert any("ignoring the state file" in r.getMessage() for r in caplog.records)


# --- with the real hook runner --------------------------------------------------------------

def test_shutdown_request_runs_pre_reboot_hooks_and_then_the_command(trusted_tmp, tmp_path):
    out = tmp_path / "ran"
    folder = trusted_tmp / "hooks" / "pre-reboot"
    folder.mkdir(parents=True)
    hook = folder / "10-note"
    hook.write_text(f"#!/bin/sh\nsleep 0.2\necho hook $XENGUEST_REQUEST >> {out}\n")
    hook.chmod(0o755)
    hooks = Hooks(str(trusted_tmp / "hooks"), 30.0)
    store, clock = MemStore(), Clock()
    control = Control(ControlConfig(mode="agent"), {"reboot": ("sh", "-c", f"echo command >> {out}")},
                      hooks, (), (), clock)
    store.write("control/shutdown", "reboot")
    control.on_event(store)  # returns at once: the hooks run on their own thread
    assert store.nodes["control/shutdown"] == ""
    assert control.pending is not None and control.pending.jobs[-1].wait(30)
    assert out.read_text() == "hook reboot\ncommand\n"
    control.poll()
    assert control.pending is None
