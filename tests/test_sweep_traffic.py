"""The safety sweep re-collects the guest's own facts (OS, names, addresses) in case an event
was missed; it must not read XenStore again for what XenStore itself reports by watch
(issue 14: XenStore requests per idle hour).  A static IP request is watched
(watches.py, STATIC_IP_TOKENS); the one thing a sweep can add is a NIC that was not there
before, which a waiting request may name (staticip/manager.py resolves requests against the
NICs it has): only then is the request tree read again."""

from __future__ import annotations

import errno
from pathlib import Path

from support.guestroot import GuestRoot
from xenguest_agent.agent import Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.daemon import ALL, Daemon
from xenguest_agent.host import Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore, XenStoreError


class RecordingStaticIp:
    """The daemon's seam to the static IP driver: counts the looks at the request tree."""

    notify = None

    def __init__(self, refuse: int = 0) -> None:
        self.looks = 0
        self.refuse = refuse

    def feature_keys(self) -> dict[str, str]:
        return {}

    def on_event(self, store: XenStore) -> None:
        self.looks += 1
        if self.refuse:
            self.refuse -= 1
            raise XenStoreError(errno.EACCES, "EACCES (refused)", "xenserver/device/vif")


def sweep(daemon: Daemon) -> None:
    daemon._dirty = set(ALL)  # what the loop sets when the sweep is due (daemon._loop)
    daemon._publish_dirty()


def test_a_sweep_reads_the_static_ip_requests_again_only_when_a_nic_appeared(xenstored,
                                                                             tmp_path: Path):
    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    agent = Agent(LinuxBackend(host, CapturedAddresses(host)), Config())
    store = XenStore(xenstored.spec)
    store.connect()
    static_ip = RecordingStaticIp()
    daemon = Daemon(agent, store, Publisher(store), Config(), static_ip=static_ip)  # type: ignore[arg-type]
    try:
        sweep(daemon)  # the first round: the NICs are new
        assert static_ip.looks == 1
        sweep(daemon)
        sweep(daemon)
        assert static_ip.looks == 1  # the same NICs: the watches cover the requests
        guest.nic("eth7", 7, "00:16:3e:00:00:77", ["10.7.0.1"])
        sweep(daemon)
        assert static_ip.looks == 2  # a NIC appeared: a waiting request may name it
        daemon._full = True  # a full republish (resume, migration, SIGHUP) looks again
        daemon._publish_dirty()
        assert static_ip.looks == 3
    finally:
        store.close()
        daemon.wakeup.close()


def test_a_refused_look_at_the_requests_is_tried_again_at_the_next_sweep(xenstored,
                                                                        tmp_path: Path):
    """Found by review: the NIC set was remembered before the read, so a read xenstored
    refused (EACCES, EAGAIN) was never tried again while the NICs stayed the same."""
    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    agent = Agent(LinuxBackend(host, CapturedAddresses(host)), Config())
    store = XenStore(xenstored.spec)
    store.connect()
    static_ip = RecordingStaticIp(refuse=1)
    daemon = Daemon(agent, store, Publisher(store), Config(), static_ip=static_ip)  # type: ignore[arg-type]
    daemon._connected = True  # as after _start_session: _guarded runs the step
    try:
        daemon._dirty = set(ALL)
        daemon._guarded(daemon._publish_dirty)  # refused: logged, "retrying next round"
        assert static_ip.looks == 1
        sweep(daemon)
        assert static_ip.looks == 2  # the same NICs, but the last look was refused
        sweep(daemon)
        assert static_ip.looks == 2
    finally:
        store.close()
        daemon.wakeup.close()
