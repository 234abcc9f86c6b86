"""The guest-domain test bed works: through the ring bridge the agent's own adapter is an
unprivileged domain of the real xenstored, with a guest's relative paths, permissions, quotas,
watches, suspend/resume and migration.

Everything the agent's control, resume and migration tests claim rests on this bed behaving like a
real guest, so these checks use the adapter exactly as the agent does and check the tree through the
toolstack's dom0 connection.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Callable, Iterator, List, Tuple

import pytest

from support.guestbridge import GuestBridge
from support.toolstack import GuestDomain, XenStoreRefused
from support.waiting import wait_for
from xenguest_agent.xenstore import XenStore, XenStoreError

EVENT_WAIT = 30.0  # a failure guard for waits on events, never evidence of anything

#: A guest-writable subtree (xenopsd's rwperm_for_guest) the tests watch as a barrier: a write under
#: it, made after an action, fires after every event the action caused (xenstored queues a
#: connection's watch events in the order it served the changes, and the ring carries them in order).
BARRIER = "vm-data/test-barrier"
BARRIER_TOKEN = "barrier"


class Events:
    """Watch events delivered to the adapter's callback, with a wait that needs no sleep."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, str]] = []
        self._cond = threading.Condition()
        self._barriers = 0

    def __call__(self, path: str, token: str) -> None:
        with self._cond:
            self.items.append((path, token))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = EVENT_WAIT) -> List[Tuple[str, str]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.items) >= count, timeout)
            return list(self.items)

    def through_barrier(self, store: XenStore) -> List[Tuple[str, str]]:
        """Every event caused before this call, and no later one: writes a new node under BARRIER
        (watched with BARRIER_TOKEN, see :func:`watched`), waits for its event and returns what
        came before it, barrier events left out.  Replaces "wait until nothing arrives for a while"."""
        self._barriers += 1
        node = f"{BARRIER}/{self._barriers}"
        store.write(node, "1")
        with self._cond:
            assert self._cond.wait_for(lambda: (node, BARRIER_TOKEN) in self.items, EVENT_WAIT), \
                f"no event for the barrier {node}: {self.items}"
            before = self.items[:self.items.index((node, BARRIER_TOKEN))]
            return [event for event in before if event[1] != BARRIER_TOKEN]

    def clear(self) -> None:
        with self._cond:
            self.items.clear()


def connect(spec: str) -> XenStore:
    store = XenStore(spec, timeout=EVENT_WAIT)
    store.connect()
    return store


@pytest.fixture
def store(guest_domain: GuestDomain) -> Iterator[XenStore]:
    """The agent's adapter, connected as domain 5."""
    adapter = connect(guest_domain.spec)
    yield adapter
    adapter.close()


def refused(call: Callable[[], object]) -> int:
    with pytest.raises(XenStoreError) as info:
        call()
    return info.value.errno


# --- the home xenopsd builds ----------------------------------------------------------------------

def test_home_has_xenopsd_layout_and_permissions(guest_domain: GuestDomain) -> None:
    dom0 = guest_domain.toolstack.client
    home = guest_domain.home
    assert home == "/local/domain/5"
    # roperm_for_guest: owner dom0, the guest may read; rwperm_for_guest: the guest owns it.
    assert dom0.get_perms(home) == ["n0", "r5"]
    for d in ("data", "attr", "control", "feature", "xenserver/attr", "device"):
        assert dom0.get_perms(f"{home}/{d}") == ["n5"], d
    assert dom0.get_perms(f"{home}/xenserver") == ["n0", "r5"]
    assert dom0.read(f"{home}/domid") == "5"
    assert dom0.read(f"{home}/control/platform-feature-xs_reset_watches") == "1"
    assert dom0.read(f"{home}/unique-domain-id") == guest_domain.toolstack.unique_domain_id


def test_plain_xl_mode_writes_no_unique_domain_id(guest_domain_factory) -> None:
    guest = guest_domain_factory(unique_domain_id=False)
    assert guest.toolstack.client.read(f"{guest.home}/unique-domain-id") is None


# --- the adapter as domain 5 ----------------------------------------------------------------------

def test_relative_paths_land_in_the_guests_home(guest_domain: GuestDomain, store: XenStore) -> None:
    store.write("data/os_name", "Debian GNU/Linux 12")
    dom0 = guest_domain.toolstack.client
    assert dom0.read("/local/domain/5/data/os_name") == "Debian GNU/Linux 12"
    # The guest owns what it creates (and it counts against its node quota).
    assert dom0.get_perms("/local/domain/5/data/os_name") == ["n5"]
    assert store.read("domid") == "5"
    assert store.read("/local/domain/5/data/os_name") == "Debian GNU/Linux 12"
    assert "data" in (store.ls("/local/domain/5") or [])


def test_writing_outside_the_home_is_refused(guest_domain: GuestDomain, store: XenStore) -> None:
    dom0 = guest_domain.toolstack.client
    dom0.write("/local/domain/7/data/secret", "x")
    assert refused(lambda: store.write("/local/domain/0/x", "1")) == errno.EACCES
    assert refused(lambda: store.write("/local/domain/7/data/y", "1")) == errno.EACCES
    assert refused(lambda: store.read("/local/domain/7/data/secret")) == errno.EACCES
    # The home itself is read-only to the guest: only its rwperm subdirectories are writable.
    assert refused(lambda: store.write("name", "evil")) == errno.EACCES
    assert store.read("name") == "guest-5"
    assert dom0.read("/local/domain/0/x") is None


def test_node_quota_gives_enospc_and_the_connection_survives(guest_domain_factory) -> None:
    guest = guest_domain_factory(quota_nodes=40)
    store = connect(guest.spec)
    try:
        written = 0
        with pytest.raises(XenStoreError) as info:
            for written in range(100):
                store.write(f"data/k{written}", "v")
        assert info.value.errno == errno.ENOSPC
        # The guest already owns xenopsd's rwperm directories and the platform keys under them.
        assert 0 < written < 40
        print(f"\nquota_nodes=40: {written} nodes written, then ENOSPC")
        assert store.read("data/k0") == "v"
        store.rm("data/k0")
        store.write("data/again", "v")  # freed quota is usable again
    finally:
        store.close()


def test_value_size_limit_at_default_node_size(store: XenStore) -> None:
    store.write("data/big", "x" * 2000)
    assert store.read("data/big") == "x" * 2000  # a reply longer than the 1,024-byte ring
    # The 2,048-byte node record holds the value, the permissions and the child names.
    assert refused(lambda: store.write("data/big", "y" * 2047)) == errno.ENOSPC
    assert store.read("data/big") == "x" * 2000


def test_empty_value_is_written_through_the_ring(guest_domain: GuestDomain, store: XenStore) -> None:
    store.write("data/updated", "")
    assert guest_domain.toolstack.client.read(f"{guest_domain.home}/data/updated") == ""


def test_many_round_trips_wrap_the_ring_and_stay_in_order(store: XenStore) -> None:
    # ~100 KB each way: the free-running indexes go round each 1,024-byte ring ~100 times, and
    # every 1,500-byte request and reply is streamed in pieces across the wrap point.
    for i in range(70):
        value = f"{i:04d}" + "z" * 1496
        store.write(f"data/v{i % 3}", value)
        assert store.read(f"data/v{i % 3}") == value


def test_concurrent_connections_are_multiplexed(guest_domain: GuestDomain) -> None:
    stores = [connect(guest_domain.spec) for _ in range(3)]
    errors: List[BaseException] = []

    def work(n: int, store: XenStore) -> None:
        try:
            for i in range(60):
                store.write(f"data/c{n}", f"{n}-{i}")
                assert store.read(f"data/c{n}") == f"{n}-{i}"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert not errors
    assert guest_domain.toolstack.client.read(f"{guest_domain.home}/data/c2") == "2-59"


def test_a_closed_connection_gives_back_its_transactions(guest_domain: GuestDomain) -> None:
    # 4 x 5 open transactions > the quota of 10: passes only if the bridge ends a leaving
    # client's transactions, as closing /dev/xen/xenbus does.
    for _ in range(4):
        store = connect(guest_domain.spec)
        for _ in range(5):
            store.begin()
        store.close()
    store = connect(guest_domain.spec)
    try:
        store.transact(lambda tx: tx.write("data/after", "1"))
        assert store.read("data/after") == "1"
    finally:
        store.close()


def test_round_trip_time(store: XenStore) -> None:
    store.write("data/rt", "1")
    for _ in range(20):  # warm up
        store.read("data/rt")
    n = 500
    started = time.perf_counter()
    for _ in range(n):
        store.read("data/rt")
    per_request = (time.perf_counter() - started) / n
    print(f"\none request through the ring: {per_request * 1e3:.3f} ms")


# --- watches, suspend/resume, migration ----------------------------------------------------------

def watched(store: XenStore, path: str, token: str) -> Events:
    """Events of a watch on ``path``, and of the BARRIER watch (see Events.through_barrier)."""
    events = Events()
    store.on_event(events)
    store.watch(BARRIER, BARRIER_TOKEN)
    store.watch(path, token)
    return events


def test_watch_fires_on_registration_and_on_change(guest_domain: GuestDomain,
                                                   store: XenStore) -> None:
    events = watched(store, "control/shutdown", "shutdown")
    # relative stays relative
    assert events.through_barrier(store) == [("control/shutdown", "shutdown")]
    events.clear()
    guest_domain.toolstack.request_shutdown("poweroff")
    got = events.wait_for(1)
    assert ("control/shutdown", "shutdown") in got
    assert store.read("control/shutdown") == "poweroff"


def test_shutdown_request_is_acknowledged_by_an_empty_write(guest_domain: GuestDomain,
                                                           store: XenStore) -> None:
    toolstack = guest_domain.toolstack
    toolstack.request_shutdown("reboot")
    assert toolstack.wait_for_ack(timeout=0) is False  # no one acknowledged: the key says so
    store.write("control/shutdown", "")
    assert toolstack.wait_for_ack(timeout=EVENT_WAIT) is True
    toolstack.request_shutdown("halt")
    store.rm("control/shutdown")  # a vanished key is an acknowledgement too
    assert toolstack.wait_for_ack(timeout=EVENT_WAIT) is True


def test_libxl_read_only_control_refuses_new_keys(guest_domain_factory) -> None:
    guest = guest_domain_factory(control_writable=False)
    store = connect(guest.spec)
    try:
        assert guest.toolstack.client.get_perms(f"{guest.home}/control") == ["n0", "r5"]
        assert refused(lambda: store.write("control/feature-balloon", "1")) == errno.EACCES
        # A trap: the guest may remove a pre-created node, but never create it again.
        store.rm("control/feature-s4")
        assert refused(lambda: store.write("control/feature-s4", "1")) == errno.EACCES
        store.write("control/feature-poweroff", "1")  # pre-created writable by libxl
        assert store.read("control/platform-feature-xs_reset_watches") == "1"
        store.write("data/still", "fine")
        # The request is a plain write, so the guest can still acknowledge it.
        guest.toolstack.request_shutdown("reboot")
        store.write("control/shutdown", "")
        assert guest.toolstack.wait_for_ack(timeout=EVENT_WAIT) is True
    finally:
        store.close()


def test_watches_fire_once_after_resume(guest_domain: GuestDomain, store: XenStore) -> None:
    events = watched(store, "control/shutdown", "shutdown")
    store.watch("data", "data")
    assert sorted(events.through_barrier(store)) == [("control/shutdown", "shutdown"),
                                                     ("data", "data")]  # the registrations
    events.clear()
    guest_domain.toolstack.simulate_suspend_resume()
    got = events.through_barrier(store)  # every event the resume caused, each once
    assert sorted(got) == [("control/shutdown", "shutdown"), ("data", "data")]
    # Still watched after the resume.
    events.clear()
    guest_domain.toolstack.request_shutdown("poweroff")
    assert ("control/shutdown", "shutdown") in events.wait_for(1)


def test_transaction_spanning_a_suspend_fails_with_eagain(guest_domain: GuestDomain,
                                                          store: XenStore) -> None:
    tx = store.begin()
    tx.write("data/in-tx", "1")
    guest_domain.toolstack.simulate_suspend_resume()
    assert refused(lambda: tx.write("data/in-tx", "2")) == errno.EAGAIN
    assert tx.commit() is False  # EAGAIN: the caller redoes the work
    assert store.read("data/in-tx") is None
    store.transact(lambda t: t.write("data/in-tx", "3"))
    assert store.read("data/in-tx") == "3"


def test_requests_sent_while_suspended_complete_after_resume(guest_domain: GuestDomain,
                                                            store: XenStore) -> None:
    bridge: GuestBridge = guest_domain.bridge
    bridge.suspend()
    result: List[object] = []
    writer = threading.Thread(target=lambda: result.append(store.write("data/late", "1")))
    writer.start()
    # held, like a process frozen by the kernel: the bridge keeps it and sent nothing (its own
    # state, read on its I/O thread, instead of a sleep and "not done yet")
    assert wait_for(lambda: bridge._call(lambda: len(bridge._held)) == 1)
    assert writer.is_alive() and result == []
    guest_domain.toolstack.introduce()
    bridge.resume()
    writer.join(EVENT_WAIT)
    assert result == [None]
    assert guest_domain.toolstack.client.read(f"{guest_domain.home}/data/late") == "1"


def test_migration_gives_a_fresh_tree_and_the_connection_stays(guest_domain: GuestDomain,
                                                               store: XenStore) -> None:
    toolstack = guest_domain.toolstack
    old_uid = store.read("unique-domain-id")
    store.write("data/os_name", "Debian")
    store.write("control/feature-poweroff", "1")
    events = watched(store, "control/shutdown", "shutdown")
    assert events.through_barrier(store) == [("control/shutdown", "shutdown")]
    events.clear()

    new_uid = toolstack.simulate_migration()

    assert new_uid and new_uid != old_uid
    assert store.read("unique-domain-id") == new_uid
    assert store.read("data/os_name") is None  # the tree is not migrated
    assert store.read("control/feature-poweroff") is None
    assert store.read("control/platform-feature-xs_reset_watches") == "1"
    assert events.through_barrier(store) == [("control/shutdown", "shutdown")]  # re-registered, fired once
    store.write("data/os_name", "Debian")  # the same connection, usable at once
    assert toolstack.client.get_perms(f"{guest_domain.home}/data") == ["n5"]
    events.clear()
    toolstack.request_shutdown("suspend")
    assert ("control/shutdown", "shutdown") in events.wait_for(1)


def test_release_deletes_what_the_guest_owns(guest_domain: GuestDomain, store: XenStore) -> None:
    store.write("data/mine", "1")
    bridge, toolstack = guest_domain.bridge, guest_domain.toolstack
    bridge.suspend()
    toolstack.release()
    dom0 = toolstack.client
    assert dom0.read(f"{guest_domain.home}/data/mine") is None
    assert dom0.read(f"{guest_domain.home}/name") == "guest-5"  # dom0's nodes stay
    toolstack.build_home()
    toolstack.introduce()
    bridge.resume()


def test_dom0_client_reports_errors_by_name(guest_domain: GuestDomain) -> None:
    with pytest.raises(XenStoreRefused) as info:
        guest_domain.toolstack.client.set_perms("/no/such/node", ["n0"])
    assert info.value.errno == errno.ENOENT


def test_destroyed_domain_loses_its_connection_and_nodes(guest_domain: GuestDomain,
                                                         store: XenStore) -> None:
    store.write("data/mine", "1")
    dom0 = guest_domain.toolstack.client
    guest_domain.toolstack.destroy(remove_home=False)
    assert wait_for(lambda: not dom0.is_introduced(5), timeout=EVENT_WAIT)
    assert dom0.read(f"{guest_domain.home}/data/mine") is None  # xenstored deleted it
    assert dom0.read(f"{guest_domain.home}/name") == "guest-5"  # dom0's node stays


# --- the guest kernel's part ---------------------------------------------------------------------

def test_linux_kernel_acknowledges_what_it_handles(guest_domain_factory) -> None:
    guest = guest_domain_factory(kernel="linux")
    toolstack, dom0 = guest.toolstack, guest.toolstack.client
    for name in ("poweroff", "reboot", "suspend"):
        assert dom0.read(f"{guest.home}/control/feature-{name}") == "1"
    assert dom0.read(f"{guest.home}/control/feature-halt") is None
    assert toolstack.shutdown("poweroff", timeout=EVENT_WAIT) is True
    # garbage is ignored, never acknowledged: shown by the kernel's requests in xenstored's
    # trace, not by a wait.  A plain write (libxl's form of the request) takes effect at once,
    # so the kernel's first READ after it reads "garbage", and the TRANSACTION_END after that
    # READ ends its decision (shutdown_handler reads and acknowledges in one transaction).
    path = f"{guest.home}/control/shutdown"
    mark = guest.xenstored.mark()
    dom0.write(path, "garbage")

    def after_garbage() -> List[Tuple[str, object]]:
        ops = [(r.op, r.path) for r in guest.xenstored.trace_requests()[mark:]]
        return ops[ops.index(("WRITE", path)) + 1:]

    def decided() -> bool:
        ops = after_garbage()
        read = ("READ", "control/shutdown")  # relative: the guest's own request
        return read in ops and ("TRANSACTION_END", None) in ops[ops.index(read):]

    assert wait_for(decided, timeout=EVENT_WAIT), after_garbage()
    assert ("WRITE", "control/shutdown") not in after_garbage()  # no acknowledgement
    assert dom0.read(path) == "garbage"
    assert guest.kernel is not None and guest.kernel.taken() == ["poweroff"]


def test_kernel_keeps_handling_after_migration_but_its_flags_are_gone(guest_domain_factory) -> None:
    guest = guest_domain_factory(kernel="linux")
    guest.toolstack.simulate_migration()
    assert guest.toolstack.client.read(f"{guest.home}/control/feature-poweroff") is None
    assert guest.toolstack.shutdown("reboot", timeout=EVENT_WAIT) is True


def test_freebsd_kernel_advertises_nothing(guest_domain_factory) -> None:
    guest = guest_domain_factory(kernel="freebsd")
    assert sorted(guest.toolstack.client.ls(f"{guest.home}/control") or []) == [
        "has-vendor-device", "platform-feature-multiprocessor-suspend",
        "platform-feature-xs_reset_watches"]
    assert guest.toolstack.shutdown("halt", timeout=EVENT_WAIT) is True
