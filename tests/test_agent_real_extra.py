"""More behaviours that cross XenStore, on the real xenstored: VIF ids and SR-IOV
VFs found by MAC from the toolstack's device keys, resume detected from a clock
jump, and the pyxs Monitor defect the adapter avoids."""

import posixpath
import threading

import pytest
import pyxs.client
from pyxs import Client

from support.guestroot import GuestRoot
from support.waiting import wait_for
from xenguest_agent.agent import Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.daemon import Daemon
from xenguest_agent.host import Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore

HOME = "/local/domain/0"


def make_agent(guest, config=None):
    host = Host(str(guest.root))
    return Agent(LinuxBackend(host, CapturedAddresses(host)), config or Config())


def test_vif_and_sriov_found_by_mac_in_the_toolstacks_keys(xenstored, tmp_path):
    guest = GuestRoot(tmp_path / "guest")
    # a NIC whose kernel does not say which VIF it is, and an SR-IOV VF
    guest.nic("ens4", None, "00:16:3e:aa:bb:03", ["10.3.0.7"])
    guest.nic("ens5", None, "02:11:22:33:44:55", ["10.5.0.9", "2001:db8::9"])
    xenstored.write(f"{HOME}/device/vif/3/mac", "00:16:3E:AA:BB:03")
    xenstored.write(f"{HOME}/xenserver/device/net-sriov-vf/1/mac", "02:11:22:33:44:55")
    store = XenStore(xenstored.spec)
    store.connect()
    try:
        make_agent(guest).publish(store, Publisher(store))
    finally:
        store.close()
    assert xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.2"  # eth0, from sysfs
    assert xenstored.read(f"{HOME}/attr/vif/3/ipv4/0") == "10.3.0.7"
    assert xenstored.read(f"{HOME}/xenserver/attr/net-sriov-vf/1/ipv4/0") == "10.5.0.9"
    assert xenstored.read(f"{HOME}/xenserver/attr/net-sriov-vf/1/ipv6/0") == "2001:db8::9"


def test_clock_jump_means_resume_republish_and_hooks(xenstored, tmp_path, trusted_tmp):
    guest = GuestRoot(tmp_path / "guest")
    out = tmp_path / "resumed"
    hook = trusted_tmp / "hooks" / "post-resume" / "10-note"
    hook.parent.mkdir(parents=True)
    hook.write_text(f"#!/bin/sh\necho \"$XENGUEST_EVENT $XENGUEST_NEW_DOMID\" > {out}\n")
    hook.chmod(0o755)
    from xenguest_agent.hooks import Hooks

    suspended = [0.0]
    config = Config(poll_interval=0.1)
    store = XenStore(xenstored.spec)
    store.connect()
    xenstored.write(f"{HOME}/domid", "4")
    daemon = Daemon(make_agent(guest, config), store, Publisher(store), config,
                    hooks=Hooks(str(trusted_tmp / "hooks"), 30.0), suspended=lambda: suspended[0])
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1")
        xenstored.rm(f"{HOME}/attr")  # a checkpoint restore in place: same domid, keys lost
        suspended[0] = 30.0  # CLOCK_BOOTTIME ran 30 s ahead of CLOCK_MONOTONIC
        assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.2")
        assert wait_for(lambda: out.exists() and out.read_text() == "post-resume 4\n")
        assert daemon.resumes == 1
    finally:
        daemon.stop()
        thread.join(5)
        store.close()


class Spinning(Exception):
    """Raised by the counting dirname once the loop is provably stuck."""


class CountingPosixpath:
    """Stands in for the ``posixpath`` module pyxs.client imported: counts ``dirname`` calls
    that return their argument unchanged (a fixed point) and stops the loop after ``limit`` of
    them in a row, with no other call in between."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fixed_points = 0
        self.calls = 0

    def dirname(self, path):
        self.calls += 1
        parent = posixpath.dirname(path)
        self.fixed_points = self.fixed_points + 1 if parent == path else 0
        if self.fixed_points >= self.limit:
            raise Spinning(path)
        return parent

    def __getattr__(self, name):
        return getattr(posixpath, name)


def test_pyxs_monitor_spins_on_an_event_it_no_longer_watches(xenstored, monkeypatch):
    """The defect the adapter avoids by not using Monitor.wait (xenstore.py).

    pyxs 0.4.1 client.py Monitor.wait: an event whose path (or a parent) is no longer watched
    is walked up with ``posixpath.dirname`` while the path is non-empty; ``dirname('/')`` is
    ``'/'``, so the walk never ends and never blocks.  Shown by its state, not by CPU time:
    dirname keeps being called with '/' and returning '/', the loop's only changing variable,
    with nothing else touched, so every later turn is the same as this one."""
    spy = CountingPosixpath(limit=10_000)
    monkeypatch.setattr(pyxs.client, "posixpath", spy)
    with Client(unix_socket_path=str(xenstored.socket_path)) as client:
        monitor = client.monitor()
        monitor.watch(b"/local/domain/0/data", b"t")
        # a new watch fires once (docs/misc/xenstore.txt, WATCH): wait for that event, queued
        assert wait_for(lambda: monitor.events.qsize() == 1)
        monitor.unwatch(b"/local/domain/0/data", b"t")
        with pytest.raises(Spinning) as caught:
            next(monitor.wait())
        assert caught.value.args == (b"/",)
        # the walk from /local/domain/0/data: four steps up to '/', then '/' from '/' for ever
        assert spy.calls == 4 + spy.limit
        assert monitor.events.qsize() == 0  # the one event was taken; wait() never blocked again


def test_the_adapter_watches_without_pyxs_monitor(xenstored, monkeypatch):
    """What the test above is about: the adapter's watch path (its own second connection and
    a callback, xenstore.py XenStore.watch) never builds a pyxs Monitor."""

    def refuse(*args, **kwargs):
        raise AssertionError("pyxs Monitor used")

    monkeypatch.setattr(pyxs.client.Monitor, "__init__", refuse)
    monkeypatch.setattr(pyxs.client.Monitor, "wait", refuse)
    store = XenStore(xenstored.spec)
    store.connect()
    events = []
    try:
        store.on_event(lambda path, token: events.append((path, token)))
        store.watch("data", "tok")
        assert wait_for(lambda: ("data", "tok") in events)  # the registration event
        xenstored.write(f"{HOME}/data/x", "1")
        assert wait_for(lambda: ("data/x", "tok") in events)  # relative, as watched
    finally:
        store.close()
