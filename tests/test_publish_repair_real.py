"""Self-repair and per-key refusals against Debian's real xenstored (issue 9, items 7 and 10).

The publisher is driven directly, with a real watch connection (one watch and
token per owned key and tree, as the daemon sets them) feeding
``Publisher.note_event``; a publish runs only when an event made a path suspect.
Another writer is Debian's own xenstore-write/xenstore-rm; requests are counted
in xenstored's -T trace.

Watch semantics relied on (xen-project/xen 4.17, tools/xenstore/xenstored_watch.c
``fire_watches``/``is_child``, ``do_watch``): a write fires the watches at or
above the written node; a removal fires those at or above the removed node and,
exactly, those on each node removed with it; a new watch fires once at once.
"""

import errno
import threading

import pytest

from support.guestroot import GuestRoot
from support.waiting import leaves, wait_for
from xenguest_agent import schema
from xenguest_agent.agent import Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.host import Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore

HOME = "/local/domain/0"


class Watched:
    """A store, a publisher and one watch per owned key and tree, feeding note_event."""

    def __init__(self, spec, clock=None):
        self.store = XenStore(spec, timeout=5.0)
        self.store.connect()
        self.publisher = Publisher(self.store) if clock is None else Publisher(self.store, clock)
        self.answers = []
        self.suspect = threading.Event()
        self.store.on_event(self._on_event)
        for index, path in enumerate(schema.OWNED_TREES + schema.OWNED_KEYS):
            self.publisher.expect_event(path)
            self.store.watch(path, f"owned-{index}")

    def _on_event(self, path, token):
        answer = self.publisher.note_event(path)
        self.answers.append((path, answer))
        if answer:
            self.suspect.set()

    def settle(self):
        """Wait until every event our own requests (and watches) fire has arrived."""
        # well within EXPECT_TTL: an expectation never met would still be counted
        assert wait_for(lambda: self.publisher.awaited_events == 0, timeout=5), \
            self.publisher.awaited_events

    def close(self):
        self.store.close()


@pytest.fixture
def guest(tmp_path):
    return GuestRoot(tmp_path / "guest")


def make_agent(guest):
    host = Host(str(guest.root))
    return Agent(LinuxBackend(host, CapturedAddresses(host)), Config())


@pytest.fixture(params=["dom0", "guest-domain"])
def tier(request, xenstored_factory, guest_domain_factory):
    """(spec, xenstored, home): the dom0 socket, or an unprivileged guest domain
    whose events pass xenstored's permission checks (watch_permitted)."""
    if request.param == "dom0":
        daemon = xenstored_factory()
        return daemon.spec, daemon, HOME
    guest = guest_domain_factory()
    return guest.spec, guest.xenstored, guest.home


@pytest.fixture
def watched(tier):
    watched = Watched(tier[0])
    yield watched
    watched.close()


def read_paths(xenstored, since):
    return {r.path for r in xenstored.trace_requests()[since:] if r.op in ("READ", "DIRECTORY")}


def repair(xenstored, watched, agent, foreign, events):
    """Let another writer act, wait for its events (paths), publish once; the paths read."""
    start = len(watched.answers)
    foreign()
    assert wait_for(lambda: {p for p, a in watched.answers[start:] if a} >= set(events),
                    timeout=10), watched.answers[start:]
    mark = xenstored.mark()
    result = agent.publish(watched.store, watched.publisher, only=())
    watched.settle()
    assert not watched.publisher.needs_repair
    return result, read_paths(xenstored, mark)


def test_own_writes_cost_nothing_and_foreign_changes_are_repaired(tier, watched, guest):
    _, xenstored, HOME = tier  # noqa: N806
    agent = make_agent(guest)
    agent.publish(watched.store, watched.publisher)
    expected = leaves(xenstored.dump(HOME))
    watched.settle()
    # every event so far was the echo of a watch registration or of our own writes
    assert watched.answers and not any(answer for _, answer in watched.answers)
    assert not watched.publisher.needs_repair
    mark = xenstored.mark()
    agent.publish(watched.store, watched.publisher)
    assert xenstored.count(since=mark) == 0  # no re-read caused by our own events

    # another writer deletes an owned key
    _, reads = repair(xenstored, watched, agent, lambda: xenstored.rm(f"{HOME}/data/os_name"),
                      ["data/os_name"])
    assert xenstored.read(f"{HOME}/data/os_name") == expected["data/os_name"]
    assert reads == {"data/os_name"}  # only the suspect path, not the owned trees

    # changes an owned value
    _, reads = repair(xenstored, watched, agent,
                      lambda: xenstored.write(f"{HOME}/attr/vif/0/ipv4/0", "6.6.6.6"),
                      ["attr/vif/0/ipv4/0"])
    assert xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.2"
    assert reads == {"attr/vif/0/ipv4/0"}

    # writes garbage under attr/vif
    result, reads = repair(xenstored, watched, agent,
                           lambda: xenstored.write(f"{HOME}/attr/vif/9/ipv4/0", "6.6.6.6"),
                           ["attr/vif/9/ipv4/0"])
    assert result.removed == ["attr/vif/9"]
    assert reads == {"attr/vif/9/ipv4/0"}

    # removes a parent of owned trees: xenstored fires the tree watches exactly
    result, reads = repair(xenstored, watched, agent, lambda: xenstored.rm(f"{HOME}/attr"),
                           ["attr/vif", "attr/PVAddons"])
    assert reads == {"attr/vif", "attr/PVAddons"}
    if HOME == "/local/domain/0":
        assert leaves(xenstored.dump(HOME)) == expected
    else:
        # xenopsd made attr/ for the guest in a home the guest may not write: it
        # cannot make it again, so those keys are refused, each alone
        assert result.refused and {code for _, code in result.refused} == {errno.EACCES}
        assert all(path.startswith("attr/") for path, _ in result.refused)
        tree = leaves(xenstored.dump(HOME))
        assert {k: v for k, v in tree.items() if not k.startswith("attr/")} == \
            {k: v for k, v in expected.items() if not k.startswith("attr/")}

    # and after all that, our own writes still cost nothing
    watched.settle()
    mark = xenstored.mark()
    agent.publish(watched.store, watched.publisher)
    assert xenstored.count(since=mark) == 0


def test_a_listing_too_big_is_reset_and_the_rest_published(xenstored, guest):
    """300 long names under attr/vif/0: its child list passes XENSTORE_PAYLOAD_MAX
    and xenstored answers E2BIG (xenstored_core.c send_reply)."""
    for n in range(300):
        xenstored.write(f"{HOME}/attr/vif/0/garbage-{n:04d}-{'x' * 8}", "x")
    store = XenStore(xenstored.spec)
    store.connect()
    try:
        with pytest.raises(Exception) as caught:
            store.ls("attr/vif/0")
        assert getattr(caught.value, "errno", None) == errno.E2BIG
        agent, publisher = make_agent(guest), Publisher(store)
        result = agent.publish(store, publisher)
        assert ("attr/vif/0", errno.E2BIG) in result.unreadable
        tree = xenstored.dump(HOME)
        assert tree["data/os_distro"] == "debian"
        assert tree["attr/vif/0/ipv4/0"] == "10.0.0.2"
        assert not any("garbage" in k for k in tree)
        assert result.removed == ["attr/vif/0"]
        mark = xenstored.mark()
        agent.publish(store, publisher)
        assert xenstored.count(since=mark) == 0
    finally:
        store.close()


def test_990_levels_of_garbage_cost_one_removal(xenstored, guest):
    deep = "attr/vif/9/" + "/".join(["a"] * 990)
    assert len(deep) < 2048
    xenstored.write(f"{HOME}/{deep}", "x")
    store = XenStore(xenstored.spec)
    store.connect()
    try:
        mark = xenstored.mark()
        make_agent(guest).publish(store, Publisher(store))
        assert not xenstored.exists(f"{HOME}/attr/vif/9")
        assert xenstored.count("RM", since=mark) == 1
        assert not any(p.startswith("attr/vif/9/") for p in read_paths(xenstored, mark) if p)
    finally:
        store.close()


# --- the guest-domain tier: real permissions and quotas --------------------------------------

class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def guest_store(guest):
    store = XenStore(guest.spec, timeout=5.0)
    store.connect()
    return store


def test_an_unreadable_owned_key_stops_nothing(guest_domain, guest, caplog):
    """dom0 owns data/os_name and gives the guest no access: reading it back is
    EACCES.  That key alone is skipped (logged as unreadable, not as a quota);
    everything else is published, and the next round sends nothing."""
    xs, home = guest_domain.xenstored, guest_domain.home
    xs.write(f"{home}/data/os_name", "set by dom0")
    xs.chmod(f"{home}/data/os_name", "n0")
    store = guest_store(guest_domain)
    try:
        agent, publisher = make_agent(guest), Publisher(store)
        result = agent.publish(store, publisher)
        assert ("data/os_name", errno.EACCES) in result.unreadable
        assert ("data/os_name", errno.EACCES) in result.refused
        assert xs.read(f"{home}/data/os_distro") == "debian"
        assert xs.read(f"{home}/attr/vif/0/ipv4/0") == "10.0.0.2"
        assert xs.read(f"{home}/data/os_name") == "set by dom0"
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "cannot read data/os_name" in messages and "quota" not in messages
        mark = xs.mark()
        agent.publish(store, publisher)
        assert xs.count(since=mark) == 0  # refused key waits for its retry
    finally:
        store.close()


def test_refused_pvaddons_land_once_the_quota_frees(guest_domain_factory):
    """attr/PVAddons refused at the node quota (ENOSPC) is retried with backoff,
    not only when its value changes: once nodes are freed, it lands."""
    guest = guest_domain_factory(quota_nodes=60)
    xs, home = guest.xenstored, guest.home
    clock = Clock()
    store = guest_store(guest)
    try:
        filled = 0
        while True:  # the guest uses up its node quota (these nodes count against it)
            try:
                store.write(f"data/filler/{filled}", "x")
            except Exception as exc:
                assert getattr(exc, "errno", None) == errno.ENOSPC, exc
                break
            filled += 1
        assert 0 < filled < 60
        publisher = Publisher(store, clock=clock)
        desired = {"attr/PVAddons/Installed": "1", "attr/PVAddons/MajorVersion": "1",
                   "attr/PVAddons/MinorVersion": "0"}
        result = publisher.publish(desired)
        assert {path for path, code in result.refused if code == errno.ENOSPC} == set(desired)
        assert publisher.next_retry() == clock.now + 1.0
        mark = xs.mark()
        publisher.publish(desired)
        assert xs.count(since=mark) == 0  # not due yet: nothing sent
        clock.now = publisher.next_retry()
        assert publisher.publish(desired).refused  # due, still full: refused again
        assert publisher.next_retry() == clock.now + 2.0
        xs.rm(f"{home}/data/filler")  # the quota frees
        clock.now = publisher.next_retry()
        result = publisher.publish(desired)
        assert sorted(result.written) == sorted(desired)
        assert {k: xs.read(f"{home}/{k}") for k in desired} == desired
        assert publisher.next_retry() is None
    finally:
        store.close()


def test_a_conflicting_commit_withdraws_its_expected_events(xenstored, guest):
    """Another writer changes a key the transaction read: commit says EAGAIN and
    the work is redone (xenstored_transaction.c finalize_transaction).  The
    failed attempt fired nothing, so its expected events are withdrawn; the
    other writer's event is a suspect; nothing is left awaited."""
    watched = Watched(xenstored.spec)
    try:
        agent = make_agent(guest)
        agent.publish(watched.store, watched.publisher)
        watched.settle()
        guest.set_addresses("eth0", ["10.0.0.9"])
        store_read = watched.store.read
        interfered = []

        def read(path, tx_id=0):
            value = store_read(path, tx_id)
            if tx_id and not interfered:
                interfered.append(path)
                xenstored.write(f"{HOME}/data/os_name", "someone else")
            return value

        watched.store.read = read
        watched.publisher.note_event("data/os_name")  # make the next publish read in its transaction
        mark = xenstored.mark()
        agent.publish(watched.store, watched.publisher)
        watched.store.read = store_read
        assert interfered and xenstored.count("TRANSACTION_START", since=mark) == 2
        watched.settle()  # every expectation met or withdrawn
        assert wait_for(lambda: ("data/os_name", True) in watched.answers)
        agent.publish(watched.store, watched.publisher, only=())
        assert xenstored.read(f"{HOME}/data/os_name") != "someone else"
        assert xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.9"
        watched.settle()
        assert not watched.publisher.needs_repair
    finally:
        watched.close()
