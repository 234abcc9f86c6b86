"""Onlining hot-added vCPUs and memory blocks from kernel uevents.

Datagrams are built by hand in the kernel's format (torvalds/linux lib/kobject_uevent.c:
``alloc_uevent_skb`` puts ``<action>@<devpath>`` and a NUL first, then the NUL-separated
``KEY=VALUE`` variables ``kobject_uevent_env`` collected: ACTION, DEVPATH, SUBSYSTEM, the
subsystem's own, SEQNUM).  The events a hot-plug produces follow the kernel:
drivers/xen/cpu_hotplug.c ``vcpu_hotplug`` -> ``enable_hotplug_cpu`` registers the CPU
(``register_cpu``, drivers/base/cpu.c: ``add`` on /devices/system/cpu/cpuN, subsystem cpu)
and leaves it offline; ``disable_hotplug_cpu`` offlines and unregisters it (``offline``,
``remove``); drivers/base/memory.c creates memory blocks the same way (subsystem memory).
The sysfs stand-in (tests/fixtures/hotplug/sysfs, copied per test) is read and written
through ``Host(root)``; where the real attribute refuses a write (``state`` of a block that
is already online: ``state_store`` returns -EINVAL when ``device_online`` reports 1), a
Host subclass models that refusal.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from xenguest_agent.host import Host
from xenguest_agent.hotplug import (
    CPU,
    DRAIN_LIMIT,
    MEMORY,
    HotplugEvents,
    Onlined,
    Uevent,
    parse_uevent,
    target,
)
from xenguest_agent.hotplug_rules import Decision, HotplugPolicy

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "hotplug" / "sysfs"


def uevent(action: str, devpath: str, subsystem: str, *extra: str, seqnum: int = 4242) -> bytes:
    """A kernel uevent datagram as lib/kobject_uevent.c lays it out."""
    head = f"{action}@{devpath}".encode() + b"\0"
    env = [f"ACTION={action}", f"DEVPATH={devpath}", f"SUBSYSTEM={subsystem}", *extra,
           f"SEQNUM={seqnum}"]
    return head + b"".join(item.encode() + b"\0" for item in env)


def cpu_event(action: str, number: int) -> bytes:
    # cpu_uevent (drivers/base/cpu.c) adds a MODALIAS for each CPU device
    return uevent(action, f"/devices/system/cpu/cpu{number}", "cpu",
                  "MODALIAS=cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001")


def memory_event(action: str, number: int) -> bytes:
    return uevent(action, f"/devices/system/memory/memory{number}", "memory")


# --- the parser ---------------------------------------------------------------------------------

def test_parses_a_cpu_add() -> None:
    problems: list[str] = []
    event = parse_uevent(cpu_event("add", 4), problems)
    assert problems == []
    assert event is not None
    assert (event.action, event.devpath, event.subsystem) == ("add", "/devices/system/cpu/cpu4", "cpu")
    assert event.get("SEQNUM") == "4242"
    assert (event.get("MODALIAS") or "").startswith("cpu:type:")
    assert target(event) == (CPU, 4)


def test_parses_a_memory_block_add() -> None:
    event = parse_uevent(memory_event("add", 40), [])
    assert event is not None and target(event) == (MEMORY, 40)


def test_libudev_messages_are_ignored_silently() -> None:
    # udevd's re-broadcast on group 2 starts with the "libudev" magic (systemd
    # src/libsystemd/sd-device/device-monitor.c, struct monitor_netlink_header)
    problems: list[str] = []
    data = b"libudev\0" + b"\xfe\xed\xca\xfe" + b"\0" * 32 + b"ACTION=add\0SUBSYSTEM=cpu\0"
    assert parse_uevent(data, problems) is None and problems == []


@pytest.mark.parametrize("data, why", [
    (b"", "header"),
    (b"ACTION=add\0DEVPATH=/devices/system/cpu/cpu1\0", "header"),   # no ACTION@DEVPATH
    (b"add@devices/x\0ACTION=add\0DEVPATH=devices/x\0", "header"),  # devpath not absolute
    (b"add@/devices/system/cpu/cpu1\0ACTION=remove\0DEVPATH=/devices/system/cpu/cpu1\0", "disagrees"),
    (b"add@/devices/system/cpu/cpu1\0ACTION=add\0DEVPATH=/devices/system/cpu/cpu2\0", "disagrees"),
    (b"add@/devices/system/cpu/cpu1\0ACTION=add\0junk\0", "'='"),
])
def test_damaged_datagrams_are_reported(data: bytes, why: str) -> None:
    problems: list[str] = []
    assert parse_uevent(data, problems) is None
    assert len(problems) == 1 and why in problems[0]


@pytest.mark.parametrize("devpath, subsystem", [
    ("/devices/system/cpu/cpufreq", "cpu"),              # not a CPU device
    ("/devices/system/cpu/cpu4/cache/index0", "cpu"),    # below a CPU
    ("/devices/system/memory/memory4", "cpu"),           # subsystem and path disagree
    ("/devices/system/cpu/cpu1234567", "cpu"),           # absurd number
    ("/devices/system/cpu/cpu01", "cpu"),                # not how the kernel names cpu1
    ("/devices/virtual/net/eth0", "net"),
])
def test_other_devices_are_not_targets(devpath: str, subsystem: str) -> None:
    event = parse_uevent(uevent("add", devpath, subsystem), [])
    assert event is not None and target(event) is None


# --- the event source on a fixture sysfs, through a socketpair seam ----------------------------

class Seam:
    """One end of a datagram socketpair standing in for the netlink socket: recvfrom reports
    the sender's netlink address (port id 0 is the kernel), and can fail on demand."""

    def __init__(self) -> None:
        self.inner, self.feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.senders: list[int] = []
        self.errors: list[int] = []

    def send(self, data: bytes, sender: int = 0) -> None:
        self.senders.append(sender)
        self.feed.send(data)

    def recvfrom(self, size: int) -> tuple[bytes, tuple[int, int]]:
        if self.errors:
            raise OSError(self.errors.pop(0), "injected")
        data = self.inner.recv(size)
        return data, (self.senders.pop(0), 1)

    def setblocking(self, flag: bool) -> None:
        self.inner.setblocking(flag)

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()
        self.feed.close()


def policy(cpus: bool = True, memory: bool = True) -> HotplugPolicy:
    return HotplugPolicy(Decision(cpus, "test"), Decision(memory, "test"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "root")
    return tmp_path / "root"


def sysfs(root: Path, rel: str) -> Path:
    return root / "sys/devices/system" / rel


def hot_add_cpu(root: Path, number: int) -> None:
    """What register_cpu leaves behind: the device directory with online=0."""
    sysfs(root, f"cpu/cpu{number}").mkdir()
    sysfs(root, f"cpu/cpu{number}/online").write_text("0\n")


def hot_add_memory(root: Path, number: int) -> None:
    sysfs(root, f"memory/memory{number}").mkdir()
    sysfs(root, f"memory/memory{number}/state").write_text("offline\n")


Starter = Callable[..., tuple[HotplugEvents, Seam]]


@pytest.fixture
def start() -> Iterator[Starter]:
    """Opens a HotplugEvents on a Seam; everything is closed at teardown, pass or fail."""
    opened: list[tuple[HotplugEvents, Seam]] = []

    def starter(root: Path, pol: HotplugPolicy | None = None,
                host: Host | None = None) -> tuple[HotplugEvents, Seam]:
        seam = Seam()
        events = HotplugEvents(host or Host(str(root)), pol or policy(),
                               opener=lambda: seam)  # type: ignore[arg-type,return-value]
        opened.append((events, seam))
        assert events.open()
        return events, seam
    yield starter
    for events, seam in opened:
        events.close()
        seam.close()


@pytest.fixture
def source(root: Path, start: Starter) -> tuple[HotplugEvents, Seam]:
    return start(root)


def readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def test_open_touches_nothing(root: Path, source: tuple[HotplugEvents, Seam]) -> None:
    # cpu2 and memory1 are offline at start: the administrator's choice, left alone
    assert sysfs(root, "cpu/cpu2/online").read_text() == "0\n"
    assert sysfs(root, "memory/memory1/state").read_text() == "offline\n"
    events, seam = source
    assert events.fileno() == seam.fileno() and events.deadline() is None
    assert events.read_ready(1.0) == ()


def test_hot_added_cpu_is_onlined_and_logged(root: Path, source: tuple[HotplugEvents, Seam],
                                             caplog: pytest.LogCaptureFixture) -> None:
    events, seam = source
    hot_add_cpu(root, 3)
    seam.send(cpu_event("add", 3))
    assert readable(events.fileno())
    with caplog.at_level(logging.INFO, logger="xenguest_agent.hotplug"):
        assert events.read_ready(1.0) == (Onlined(CPU, 3, "onlined"),)
    assert sysfs(root, "cpu/cpu3/online").read_text() == "1"
    lines = [r.getMessage() for r in caplog.records if "hot-added CPU 3" in r.getMessage()]
    assert lines == ["onlined hot-added CPU 3 (wrote '1' to /sys/devices/system/cpu/cpu3/online)"]
    assert not readable(events.fileno())


def test_synthetic_add_does_not_undo_an_admins_offline(root: Path,
                                                       source: tuple[HotplugEvents, Seam]) -> None:
    # `udevadm trigger` writes "add" to every uevent file (kobject_synth_uevent): cpu2 was
    # there before, so it stays offline; the kernel's own offline event changes nothing
    events, seam = source
    seam.send(cpu_event("offline", 2))
    seam.send(cpu_event("add", 2))
    seam.send(memory_event("add", 1))
    assert events.read_ready(1.0) == ()
    assert sysfs(root, "cpu/cpu2/online").read_text() == "0\n"
    assert sysfs(root, "memory/memory1/state").read_text() == "offline\n"


def test_vcpu_removed_then_made_available_again(root: Path,
                                                source: tuple[HotplugEvents, Seam]) -> None:
    # xl vcpu-set down then up: disable_hotplug_cpu sends offline and remove,
    # enable_hotplug_cpu registers the device again (add) and leaves it offline
    events, seam = source
    for action in ("offline", "remove", "add"):
        seam.send(cpu_event(action, 2))
    assert events.read_ready(1.0) == (Onlined(CPU, 2, "onlined"),)
    assert sysfs(root, "cpu/cpu2/online").read_text() == "1"


def test_a_cpu_that_came_up_already_is_left(root: Path, source: tuple[HotplugEvents, Seam]) -> None:
    events, seam = source
    hot_add_cpu(root, 3)
    sysfs(root, "cpu/cpu3/online").write_text("1\n")  # a udev rule was faster
    seam.send(cpu_event("add", 3))
    assert events.read_ready(1.0) == (Onlined(CPU, 3, "already online"),)
    assert sysfs(root, "cpu/cpu3/online").read_text() == "1\n"


def test_hot_added_memory_block_is_onlined(root: Path, source: tuple[HotplugEvents, Seam]) -> None:
    events, seam = source
    for number in (8, 9):
        hot_add_memory(root, number)
        seam.send(memory_event("add", number))
    assert events.read_ready(1.0) == (Onlined(MEMORY, 8, "onlined"), Onlined(MEMORY, 9, "onlined"))
    # "online", not online_movable: the kernel picks the zone by its online_policy
    # (Documentation/admin-guide/mm/memory-hotplug.rst, "Onlining Memory Blocks Manually")
    assert sysfs(root, "memory/memory8/state").read_text() == "online"


def test_memory_is_left_to_the_kernel_when_it_auto_onlines(root: Path, start: Starter) -> None:
    sysfs(root, "memory/auto_online_blocks").write_text("online\n")
    events, seam = start(root)
    hot_add_memory(root, 8)
    seam.send(memory_event("add", 8))
    assert events.read_ready(1.0) == ()
    assert sysfs(root, "memory/memory8/state").read_text() == "offline\n"


class RacingHost(Host):
    """Models a memory ``state`` store losing the race: someone else onlined the block
    first, and the kernel refuses the write with EINVAL (drivers/base/memory.c state_store);
    or the store fails (EBUSY) and the block stays offline."""

    def __init__(self, root: str, error: int, raced: bool) -> None:
        super().__init__(root)
        self.error, self.raced = error, raced

    def write_text(self, guest_path: str, text: str) -> None:
        if self.raced:
            super().write_text(guest_path, "online\n")
        raise OSError(self.error, os.strerror(self.error))


def test_losing_the_race_is_not_a_failure(root: Path, start: Starter,
                                          caplog: pytest.LogCaptureFixture) -> None:
    events, seam = start(root, host=RacingHost(str(root), errno.EINVAL, raced=True))
    hot_add_memory(root, 8)
    seam.send(memory_event("add", 8))
    assert events.read_ready(1.0) == (Onlined(MEMORY, 8, "already online"),)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failed_write_is_reported(root: Path, start: Starter,
                                          caplog: pytest.LogCaptureFixture) -> None:
    events, seam = start(root, host=RacingHost(str(root), errno.EBUSY, raced=False))
    hot_add_memory(root, 8)
    seam.send(memory_event("add", 8))
    assert events.read_ready(1.0) == (Onlined(MEMORY, 8, "failed: Device or resource busy"),)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [("could not online hot-added memory block 8: writing 'online' to "
                        "/sys/devices/system/memory/memory8/state: Device or resource busy")]
    hot_add_cpu(root, 3)  # the source keeps working
    seam.send(cpu_event("add", 3))
    assert events.read_ready(2.0) == (Onlined(CPU, 3, "failed: Device or resource busy"),)


def test_policy_limits_what_is_onlined(root: Path, start: Starter) -> None:
    events, seam = start(root, policy(cpus=False, memory=True))
    hot_add_cpu(root, 3)
    hot_add_memory(root, 8)
    seam.send(cpu_event("add", 3))
    seam.send(memory_event("add", 8))
    assert events.read_ready(1.0) == (Onlined(MEMORY, 8, "onlined"),)
    assert sysfs(root, "cpu/cpu3/online").read_text() == "0\n"


def test_nothing_wanted_opens_nothing(root: Path) -> None:
    opened: list[int] = []
    events = HotplugEvents(Host(str(root)), policy(False, False),
                           opener=lambda: opened.append(1))  # type: ignore[arg-type,return-value]
    assert events.open() is False and opened == [] and events.fileno() == -1


def test_a_refused_socket_is_reported(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")
    events = HotplugEvents(Host(str(root)), policy(), opener=refuse)
    assert events.open() is False and events.fileno() == -1
    assert any("cannot open the kernel uevent socket" in r.getMessage() for r in caplog.records)


def test_no_netlink_means_no_source(root: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    # FreeBSD's Python has no socket.AF_NETLINK: open() declines, nothing raises
    monkeypatch.delattr(socket, "AF_NETLINK")
    events = HotplugEvents(Host(str(root)), policy())
    assert events.open() is False and events.fileno() == -1
    assert any("only on Linux" in r.getMessage() for r in caplog.records)


def test_device_added_while_subscribing_is_onlined(root: Path) -> None:
    # between the start-up scan and the subscription an add would be neither "already
    # there" nor seen as an event: open() rescans after subscribing
    seam = Seam()

    def opener() -> Seam:
        hot_add_cpu(root, 5)
        return seam
    events = HotplugEvents(Host(str(root)), policy(), opener=opener)  # type: ignore[arg-type]
    try:
        assert events.open()
        assert sysfs(root, "cpu/cpu5/online").read_text() == "1"
        seam.send(cpu_event("add", 5))  # its queued add then changes nothing
        assert events.read_ready(1.0) == ()
    finally:
        seam.close()


def test_only_the_kernel_is_believed(root: Path, source: tuple[HotplugEvents, Seam]) -> None:
    events, seam = source
    hot_add_cpu(root, 3)
    seam.send(cpu_event("add", 3), sender=4321)  # a user-space process on group 1
    seam.send(b"libudev\0" + cpu_event("add", 3))
    assert events.read_ready(1.0) == ()
    assert sysfs(root, "cpu/cpu3/online").read_text() == "0\n"


def test_damage_is_logged_once(root: Path, source: tuple[HotplugEvents, Seam],
                               caplog: pytest.LogCaptureFixture) -> None:
    events, seam = source
    for _ in range(3):
        seam.send(b"garbage")
    hot_add_cpu(root, 3)
    seam.send(cpu_event("add", 3))
    assert events.read_ready(1.0) == (Onlined(CPU, 3, "onlined"),)
    assert len([r for r in caplog.records if "unreadable kernel uevent" in r.getMessage()]) == 1


def test_lost_events_rescan_for_new_devices(root: Path, source: tuple[HotplugEvents, Seam]) -> None:
    # ENOBUFS: the kernel dropped uevents (net/netlink/af_netlink.c netlink_overrun)
    events, seam = source
    hot_add_cpu(root, 3)
    hot_add_memory(root, 8)
    seam.errors.append(errno.ENOBUFS)
    seam.send(cpu_event("add", 7))  # a device whose add survived but is gone again: nothing
    assert events.read_ready(1.0) == (Onlined(CPU, 3, "onlined"), Onlined(MEMORY, 8, "onlined"))
    assert sysfs(root, "cpu/cpu2/online").read_text() == "0\n"  # not new: untouched


def test_a_broken_socket_is_closed(root: Path, source: tuple[HotplugEvents, Seam],
                                   caplog: pytest.LogCaptureFixture) -> None:
    events, seam = source
    seam.errors.append(errno.EIO)
    assert events.read_ready(1.0) == ()
    assert events.fileno() == -1 and seam.inner.fileno() == -1
    assert any("reading kernel uevents failed" in r.getMessage() for r in caplog.records)
    assert events.read_ready(2.0) == ()


def test_drains_in_bounded_steps(root: Path, source: tuple[HotplugEvents, Seam]) -> None:
    events, seam = source
    for number in range(DRAIN_LIMIT + 5):
        seam.send(uevent("add", f"/devices/virtual/net/v{number}", "net"))
    events.read_ready(1.0)
    assert readable(events.fileno())  # the rest waits for the next turn of the loop
    events.read_ready(1.0)
    assert not readable(events.fileno())


def test_a_handler_bug_does_not_end_the_loop(root: Path, source: tuple[HotplugEvents, Seam],
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    events, seam = source
    hot_add_cpu(root, 3)
    real = events.handle
    calls: list[int] = []

    def flaky(event: Uevent) -> Onlined | None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return real(event)
    monkeypatch.setattr(events, "handle", flaky)
    seam.send(memory_event("add", 1))
    seam.send(cpu_event("add", 3))
    assert events.read_ready(1.0) == (Onlined(CPU, 3, "onlined"),)
    assert any("handling the uevent add@/devices/system/memory/memory1 failed" in r.getMessage()
               for r in caplog.records)


def test_from_settings_reads_the_distro_rules(root: Path) -> None:
    rules = root / "lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "40-vm-hotadd.rules").write_text(
        'SUBSYSTEM=="cpu", ACTION=="add", TEST=="online", ATTR{online}="1"\n')
    (root / "run/udev").mkdir(parents=True)
    (root / "run/udev/control").write_text("")
    events = HotplugEvents.from_settings(Host(str(root)), "auto", "auto")
    assert (events.policy.online_cpus, events.policy.online_memory) == (False, True)
    assert "40-vm-hotadd.rules" in events.policy.cpus.reason
    forced = HotplugEvents.from_settings(Host(str(root)), True, "false")
    assert (forced.policy.online_cpus, forced.policy.online_memory) == (True, False)
    with pytest.raises(ValueError):
        HotplugEvents.from_settings(Host(str(root)), "maybe")


def test_uevent_get_returns_none_for_missing_keys() -> None:
    assert Uevent("add", "/x", "cpu", (("A", "1"),)).get("B") is None


def test_the_thread_beside_the_loop_onlines_and_stops(root: Path) -> None:
    """HotplugThread: the onlining runs on a thread of its own (a memory block's online can
    take a while and needs no XenStore), waiting in poll() until a uevent or stop()."""
    from support.waiting import wait_for
    from xenguest_agent.hotplug import HotplugThread

    seam = Seam()
    events = HotplugEvents(Host(str(root)), policy(),
                           opener=lambda: seam)  # type: ignore[arg-type,return-value]
    runner = HotplugThread(events)
    try:
        assert runner.start()
        hot_add_cpu(root, 3)
        seam.send(cpu_event("add", 3))
        assert wait_for(lambda: sysfs(root, "cpu/cpu3/online").read_text() == "1", timeout=30)
    finally:
        runner.stop()
        seam.close()
    assert not runner._thread.is_alive() and events.fileno() == -1


def test_the_thread_does_not_start_when_nothing_is_wanted(root: Path) -> None:
    from xenguest_agent.hotplug import HotplugThread

    runner = HotplugThread(HotplugEvents(Host(str(root)), policy(cpus=False, memory=False)))
    assert runner.start() is False
    runner.stop()
    assert not runner._thread.is_alive()


def test_the_udev_rules_are_read_on_the_hotplug_thread_not_before_the_first_publish(
        root: Path) -> None:
    """`run` builds the source with ``from_settings`` before the daemon's first publish and
    starts the thread after it (cli.py, daemon.py): reading every udev rules file (and loading
    hotplug_rules) is left to the thread, so it is not on the way to the first publish.  What
    is decided and done stays the same: the rule file is still honoured, a CPU still onlined."""
    import threading

    from support.waiting import wait_for
    from xenguest_agent.hotplug import HotplugThread

    rules = root / "lib/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "40-vm-hotadd.rules").write_text(  # memory only: CPUs are left to the agent
        'SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline", ATTR{state}="online"\n')
    (root / "run/udev").mkdir(parents=True)
    (root / "run/udev/control").write_text("")
    reads: list[tuple[str, str]] = []

    class Recording(Host):
        def listdir(self, guest_path: str) -> tuple[str, ...]:
            reads.append((threading.current_thread().name, guest_path))
            return super().listdir(guest_path)

    seam = Seam()
    events = HotplugEvents.from_settings(Recording(str(root)), "auto", "auto",
                                         opener=lambda: seam)  # type: ignore[arg-type,return-value]
    assert not [path for _, path in reads if "udev" in path]
    runner = HotplugThread(events)
    try:
        assert runner.start()
        assert wait_for(lambda: events.fileno() != -1, timeout=30)
        udev = [(thread, path) for thread, path in reads if "udev" in path]
        assert udev and {thread for thread, _ in udev} == {"xenguest-hotplug"}
        assert (events.policy.online_cpus, events.policy.online_memory) == (True, False)
        hot_add_cpu(root, 3)
        seam.send(cpu_event("add", 3))
        assert wait_for(lambda: sysfs(root, "cpu/cpu3/online").read_text() == "1", timeout=30)
    finally:
        runner.stop()
        seam.close()
    assert not runner._thread.is_alive()
