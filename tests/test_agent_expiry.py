"""A failed collector's last good value is kept for a bounded time, then its
keys are withdrawn (issue 9, item 14): a broken collector must not leave a fact
published as current for ever."""

import logging

from support.guestroot import GuestRoot
from support.memstore import MemStore
from xenguest_agent.agent import LAST_GOOD_MAX_AGE, Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.host import Host
from xenguest_agent.publisher import Publisher


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def broken():
    raise OSError("the address source went away")


def make(tmp_path):
    clock = Clock()
    host = Host(str(GuestRoot(tmp_path / "guest").root))
    agent = Agent(LinuxBackend(host, CapturedAddresses(host)), Config(), clock=clock)
    return agent, clock


def test_failed_collector_keys_are_withdrawn_after_the_bounded_age(tmp_path, caplog):
    agent, clock = make(tmp_path)
    store = MemStore()
    publisher = Publisher(store)
    agent.publish(store, publisher)
    assert store.nodes["attr/vif/0/ipv4/0"] == "10.0.0.2"
    agent.backend.interfaces = broken  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING)
    for step in range(10):  # failing, but within the age: the last good value stays
        clock.now += LAST_GOOD_MAX_AGE / 10 - 1
        agent.publish(store, publisher)
        assert store.nodes.get("attr/vif/0/ipv4/0") == "10.0.0.2", step
    clock.now += 20
    result = agent.publish(store, publisher)
    assert "attr/vif/0" in result.removed
    assert not any(k.startswith("attr/vif/") for k in store.nodes)
    assert store.nodes["data/os_distro"] == "debian"  # the other collectors' keys stay
    failures = [r.getMessage() for r in caplog.records if "collector interfaces failed" in r.getMessage()]
    # eleven failed rounds over 900 s: one line, then one per ten minutes with a count
    assert len(failures) == 2 and "more times since)" in failures[1]
    assert any("withdrawing" in r.getMessage() for r in caplog.records)
    # it recovers: the keys come back at once
    del agent.backend.interfaces
    agent.publish(store, publisher)
    assert store.nodes["attr/vif/0/ipv4/0"] == "10.0.0.2"


def test_a_collector_not_rerun_is_not_expired(tmp_path):
    """A memory tick re-runs only memory: the others keep their value, however old."""
    agent, clock = make(tmp_path)
    store = MemStore()
    publisher = Publisher(store)
    agent.publish(store, publisher)
    clock.now += LAST_GOOD_MAX_AGE * 3
    agent.publish(store, publisher, only=("memory",))
    assert store.nodes["attr/vif/0/ipv4/0"] == "10.0.0.2"


def test_an_unreadable_mac_entry_is_skipped_alone():
    """The toolstack's MAC table is read per key: one VIF whose entry the guest
    may not read (EACCES) or whose name is odd does not fail the round."""
    import errno

    from xenguest_agent.agent import read_mac_directory

    store = MemStore()
    store.write("device/vif/0/mac", "00:16:3e:00:00:01")
    store.write("device/vif/1/mac", "00:16:3e:00:00:02")
    store.unreadable["device/vif/1"] = errno.EACCES
    store.unreadable["xenserver/device/net-sriov-vf"] = errno.EACCES
    macs = read_mac_directory(store)
    assert macs.vifs == {"00:16:3e:00:00:01": 0}
    assert macs.sriov == {}
