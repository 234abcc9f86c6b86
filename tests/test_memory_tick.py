"""Issue 14: the memory rule for ``data/meminfo_free`` and the memory tick.

The reader is rrdp-squeezed (xen-api ocaml/xcp-rrdd/bin/rrdp-squeezed/rrdp_squeezed.ml):
``MemoryActions.watch_fired`` reads the key when its watch fires and caches the value;
the plugin's main loop reports the cached value as the VM's ``memory_internal_free``
at every rrdd sample.  So a write is needed only when the figure moved enough to
matter, and the tick that finds it has not must cost nothing past the read.

The rule's decisions are checked as a pure function on hand-built cases; the tick
on the real daemon against the real xenstored, counting calls at the render seam.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Optional

import pytest

from support.guestroot import GuestRoot
from support.waiting import wait_for
from xenguest_agent.agent import Agent, memory_due
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config, MemoryConfig
from xenguest_agent.daemon import Daemon
from xenguest_agent.facts import Memory
from xenguest_agent.host import Host
from xenguest_agent.loopsources import LoopSources
from xenguest_agent.publisher import Publisher
from xenguest_agent.sdnotify import Notifier
from xenguest_agent.ticks import MEMORY_CHECK, ping_window, tick_interval
from xenguest_agent.wakeup import Wakeup
from xenguest_agent.xenstore import XenStore

HOME = "/local/domain/0"
MIB = 1024
BIG = 24 * 1024 * MIB     # KiB: a 24 GiB guest, 1 % = 251,658 KiB (above 16 MiB)
SMALL = 1024 * MIB        # KiB: a 1 GiB guest, 1 % = 10,486 KiB (below 16 MiB)
DEFAULTS = MemoryConfig(threshold_kib=16 * MIB, threshold_percent=1.0, min_interval=120.0,
                        max_age=600.0)


def mem(total: int, free: int) -> Memory:
    return Memory(total_kib=total, free_kib=free)


@pytest.mark.parametrize("published, elapsed, current, due, why", [
    (None, 0.0, mem(BIG, 100), True, "nothing published yet"),
    (mem(BIG, 10 * 1024 * MIB), 1.0, mem(BIG + MIB, 10 * 1024 * MIB), True,
     "total changed (balloon, hot-plug)"),
    (mem(BIG, 10 * 1024 * MIB), 10_000.0, mem(BIG, 10 * 1024 * MIB), False, "did not move"),
    # the busy host: a 24 GiB guest breathing by 20-30 MiB wrote 144 times an hour
    (mem(BIG, 10 * 1024 * MIB), 300.0, mem(BIG, 10 * 1024 * MIB + 30 * MIB), False,
     "past 16 MiB but not past 1 % of 24 GiB: both must be passed"),
    (mem(BIG, 10 * 1024 * MIB), 600.0, mem(BIG, 10 * 1024 * MIB + 30 * MIB), True,
     "any move, once max_age passed"),
    (mem(BIG, 10 * 1024 * MIB), 599.0, mem(BIG, 10 * 1024 * MIB + 1), False,
     "a small move before max_age"),
    (mem(BIG, 10 * 1024 * MIB), 119.0, mem(BIG, 10 * 1024 * MIB - 300 * MIB), False,
     "past both thresholds, before min_interval"),
    (mem(BIG, 10 * 1024 * MIB), 120.0, mem(BIG, 10 * 1024 * MIB - 300 * MIB), True,
     "past both thresholds, min_interval passed"),
    (mem(BIG, 10 * 1024 * MIB), 15.0, mem(BIG, 10 * 1024 * MIB - 1024 * MIB), True,
     "a large move (4 x 1 % of 24 GiB = 983 MiB) is written at once"),
    (mem(SMALL, 512 * MIB), 120.0, mem(SMALL, 512 * MIB + 15 * MIB), False,
     "1 GiB guest: 15 MiB passes 1 % but not 16 MiB"),
    (mem(SMALL, 512 * MIB), 120.0, mem(SMALL, 512 * MIB + 17 * MIB), True,
     "1 GiB guest: 17 MiB passes both"),
    (mem(SMALL, 512 * MIB), 1.0, mem(SMALL, 512 * MIB - 64 * MIB), True,
     "1 GiB guest: 64 MiB = 4 x 16 MiB is prompt"),
])
def test_memory_rule(published, elapsed, current, due, why):
    assert memory_due(published, 1000.0, 1000.0 + elapsed, current, DEFAULTS) is due, why


def test_the_defaults_are_the_documented_rule():
    assert MemoryConfig() == DEFAULTS


def test_the_tick_rides_on_the_watchdog_ping():
    """systemd/xenguest-agent.service has WatchdogSec=45s, so the notifier's interval is
    22.5 s (sd_watchdog_enabled(3): half the timeout).  systemd's own event loop pings
    between 1/2 and 3/4 of the period and never sooner than 1/4 (systemd
    src/libsystemd/sd-event/sd-event.c, ``arm_watchdog``, ``process_watchdog``):
    11.25 s to 33.75 s here, and the 30 s memory check falls inside, carrying the ping."""
    assert ping_window(22.5) == (11.25, 33.75)
    assert tick_interval(None) == MEMORY_CHECK == 30.0
    assert tick_interval(22.5) == 30.0      # the unit's watchdog: one wake-up serves both
    assert tick_interval(15.0) == 22.5      # a shorter watchdog (30 s): the checks follow its pings
    assert tick_interval(5.0) == 7.5
    assert tick_interval(300.0) == 30.0     # a longer one: pinged from the ticks (daemon._loop)


class QuietNet:
    """A network event source that exists and never fires (a seam for LoopSources)."""

    name = "test"

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def open(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.r

    def deadline(self):
        return None

    def read_ready(self, _now):
        return None

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class CountingAgent(Agent):
    """Counts the memory reads and the renders (the seam after the read)."""

    memory_reads = 0
    renders = 0

    def _run_collector(self, name):
        if name == "memory":
            self.memory_reads += 1
        return super()._run_collector(name)

    def render(self, *args, **kwargs):
        self.renders += 1
        return super().render(*args, **kwargs)


def test_a_memory_tick_below_the_rule_renders_nothing(xenstored, tmp_path):
    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    config = Config(interval=600.0)
    agent = CountingAgent(LinuxBackend(host, CapturedAddresses(host)), config)
    store = XenStore(xenstored.spec)
    store.connect()
    # a 0.05 s watchdog interval makes the memory tick 0.075 s (tick_interval)
    daemon = Daemon(agent, store, Publisher(store), config, net_events=QuietNet(),
                    notifier=Notifier(str(tmp_path / "notify"), watchdog_interval=0.05))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/meminfo_free") == "1523400")
        reads, renders = agent.memory_reads, agent.renders
        guest.set_memory(1523400 + 1024)  # 1 MiB: far below 16 MiB
        assert wait_for(lambda: agent.memory_reads >= reads + 10, timeout=60)
        assert agent.renders == renders, "a tick below the rule rendered"
        assert xenstored.read(f"{HOME}/data/meminfo_free") == "1523400"
        guest.set_memory(1523400 - 100 * MIB)  # past 4 x 16 MiB: written at the next tick
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/meminfo_free")
                        == str(1523400 - 100 * MIB), timeout=60)
        assert agent.renders > renders
    finally:
        daemon.stop()
        thread.join(30)
        store.close()
        notify.close()
    assert not thread.is_alive()


class CountingNet(QuietNet):
    """QuietNet that counts the loop's looks at it, with a coalescing window it can open."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.window_closes: Optional[float] = None

    def deadline(self):
        return self.window_closes

    def read_ready(self, _now):
        self.reads += 1
        return None


def test_an_idle_tick_reads_no_socket_that_poll_did_not_report() -> None:
    """The memory tick wakes on poll()'s timeout alone: nothing is readable, so nothing is
    read (each read that answers EAGAIN is a system call and an exception in every idle
    wake-up).  The network source is still asked when its coalescing window closes, and
    when its socket is readable."""
    net = CountingNet()
    wakeup = Wakeup()
    sources = LoopSources(wakeup, net)  # type: ignore[arg-type]
    try:
        assert sources.open(frozenset({"memory", "interfaces"}))
        assert sources.wait(0.0, time.monotonic) == set()
        assert net.reads == 0
        net.window_closes = time.monotonic() + 3600.0  # open, not closed: nothing is due yet
        sources.wait(0.0, time.monotonic)
        assert net.reads == 0
        net.window_closes = time.monotonic()
        sources.wait(0.0, time.monotonic)
        assert net.reads == 1
        net.window_closes = None
        os.write(net.w, b"x")
        sources.wait(5.0, time.monotonic)
        assert net.reads == 2
    finally:
        sources.close()
        wakeup.close()


class BrokenFiles:
    """A file watch whose descriptor is readable and whose handling fails (an odd file)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.write(self.w, b"x")

    def start(self) -> bool:
        return True

    def fds(self):
        return [(self.r, select.POLLIN)]

    def handle(self, fd):
        raise FileNotFoundError(2, "No such file or directory", "etc/resolv.conf")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_a_file_watch_failure_means_collect_everything_not_a_dead_loop() -> None:
    """The loop's poll step must not raise because one watched file misbehaved (the
    guide: the daemon never exits because of one odd file): what may have changed is
    everything, collected again."""
    files = BrokenFiles()
    wakeup = Wakeup()
    sources = LoopSources(wakeup, None, files)  # type: ignore[arg-type]
    try:
        sources.open(frozenset({"memory", "os", "names"}))
        assert sources.wait(5.0, time.monotonic) == {"memory", "os", "names"}
    finally:
        sources.close()
        wakeup.close()
