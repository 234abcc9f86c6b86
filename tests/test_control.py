"""control/shutdown handling and hooks, with a fake runner and an in-memory store
(the same flows against the real xenstored as a guest domain: test_control_real.py)."""

import os

import pytest
from support.memstore import MemStore

from xenguest_agent.config import ControlConfig
from xenguest_agent.control import Control, describe
from xenguest_agent.hooks import Hooks
from xenguest_agent.host import CommandResult


class FakeRunner:
    def __init__(self):
        self.calls = []

    def __call__(self, argv, timeout=5.0):
        self.calls.append(tuple(argv))
        return CommandResult(tuple(argv), 0, "", "")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


COMMANDS = {"poweroff": ("systemctl", "poweroff"), "reboot": ("systemctl", "reboot"),
            "halt": ("systemctl", "halt")}


def make(mode="auto", hooks_dir="/nonexistent", kernel=("poweroff", "reboot", "suspend"),
         unadvertised=()):
    runner, clock = FakeRunner(), Clock()
    control = Control(ControlConfig(mode=mode, grace=2.0), COMMANDS, runner, Hooks(str(hooks_dir)),
                      kernel, unadvertised, clock)
    return control, runner, clock


def test_kernel_acknowledges_in_auto_mode_agent_only_observes():
    store, (control, runner, clock) = MemStore(), make()
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    assert control.deadline() == 102.0
    store.write("control/shutdown", "")  # the kernel's acknowledgement
    control.on_event(store)
    clock.now = 103.0
    control.on_deadline(store)
    assert runner.calls == [] and control.pending is None


def test_nobody_acknowledges_agent_takes_over_after_grace():
    store, (control, runner, clock) = MemStore(), make()
    store.write("control/shutdown", "reboot")
    control.on_event(store)
    assert runner.calls == []
    clock.now = 102.5
    control.on_deadline(store)
    assert store.nodes["control/shutdown"] == ""  # acknowledged
    assert runner.calls == [("systemctl", "reboot")]


def test_agent_mode_acts_at_once_and_observe_mode_never():
    store, (control, runner, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", "halt")
    control.on_event(store)
    assert runner.calls == [("systemctl", "halt")] and store.nodes["control/shutdown"] == ""
    store, (control, runner, clock) = MemStore(), make(mode="observe")
    store.write("control/shutdown", "poweroff")
    control.on_event(store)
    assert control.deadline() is None
    clock.now = 1000.0
    control.on_deadline(store)
    assert runner.calls == [] and store.nodes["control/shutdown"] == "poweroff"


def test_suspend_is_never_performed_by_the_agent():
    store, (control, runner, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", "suspend")
    control.on_event(store)
    assert runner.calls == [] and store.nodes["control/shutdown"] == "suspend"


@pytest.mark.parametrize("value", [
    "poweroff; rm -rf /", "$(reboot)", "POWEROFF", "reboot\n", "x" * 4000, "halt\x00now", " poweroff",
])
def test_hostile_values_are_refused_and_logged_once(value, caplog):
    store, (control, runner, _) = MemStore(), make(mode="agent")
    store.write("control/shutdown", value)
    control.on_event(store)
    control.on_event(store)
    assert runner.calls == [] and store.nodes["control/shutdown"] == value
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


def write_hook(folder, name, body, mode=0o755):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    os.chmod(path, mode)
    return path


def test_hooks_run_in_order_with_environment_and_unsafe_ones_skipped(tmp_path, caplog):
    out = tmp_path / "out.txt"
    pre = tmp_path / "hooks" / "pre-shutdown"
    write_hook(pre, "20-second", f"#!/bin/sh\necho \"2 $1 $XENGUEST_REQUEST\" >> {out}\n")
    write_hook(pre, "10-first", f"#!/bin/sh\necho \"1 $1 $XENGUEST_EVENT\" >> {out}\nexit 3\n")
    write_hook(pre, "30-world-writable", f"#!/bin/sh\necho bad >> {out}\n", 0o757)
    write_hook(pre, "40-not-executable", f"#!/bin/sh\necho bad >> {out}\n", 0o644)
    write_hook(pre, "50.dpkg-old", f"#!/bin/sh\necho bad >> {out}\n")
    (pre / "60-dir").mkdir()
    results = Hooks(str(tmp_path / "hooks")).run("pre-shutdown", {"request": "poweroff"})
    assert out.read_text() == "1 pre-shutdown pre-shutdown\n2 pre-shutdown poweroff\n"
    assert [r.returncode for r in results] == [3, 0]
    skipped = " ".join(r.getMessage() for r in caplog.records if "skipping" in r.getMessage())
    assert "30-world-writable" in skipped and "40-not-executable" in skipped and "60-dir" in skipped
    assert "50.dpkg-old" not in skipped  # ignored silently, like run-parts


def test_hook_timeout_is_enforced(tmp_path):
    write_hook(tmp_path / "post-resume", "slow", "#!/bin/sh\nsleep 5\n")
    (result,) = Hooks(str(tmp_path), timeout=0.3).run("post-resume", {})
    assert result.returncode is None and result.seconds < 2


def test_shutdown_request_runs_pre_shutdown_hooks(tmp_path):
    out = tmp_path / "ran"
    write_hook(tmp_path / "pre-reboot", "note", f"#!/bin/sh\necho $XENGUEST_REQUEST > {out}\n")
    store, (control, _, _) = MemStore(), make(hooks_dir=tmp_path)
    store.write("control/shutdown", "reboot")
    control.on_event(store)
    assert out.read_text() == "reboot\n"
