"""The diff publisher against an in-memory store (the same behaviours are proven
against the real xenstored in tests/test_publish_real.py)."""

import errno

import pytest

from support.memstore import MemStore
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStoreError

MARKERS = {"data/updated": "1"}
QUIET = {"data/meminfo_free"}


def test_first_publish_writes_all_and_marks():
    store = MemStore()
    result = Publisher(store).publish({"data/os_name": "X", "attr/vif/0/ipv4/0": "10.0.0.2"},
                                      MARKERS, QUIET)
    assert sorted(result.written) == ["attr/vif/0/ipv4/0", "data/os_name", "data/updated"]
    assert store.leaves() == {"data/os_name": "X", "attr/vif/0/ipv4/0": "10.0.0.2",
                              "data/updated": "1"}


def test_unchanged_round_writes_nothing_and_memory_does_not_mark():
    store = MemStore()
    publisher = Publisher(store)
    desired = {"data/os_name": "X", "data/meminfo_free": "100"}
    publisher.publish(desired, MARKERS, QUIET)
    store.clear_log()
    assert not publisher.publish(desired, MARKERS, QUIET).changed
    assert store.writes() == []
    publisher.publish({**desired, "data/meminfo_free": "90"}, MARKERS, QUIET)
    assert store.writes() == ["data/meminfo_free"]  # memory alone: no data/updated
    store.clear_log()
    publisher.publish({**desired, "data/os_name": "Y", "data/meminfo_free": "90"}, MARKERS, QUIET)
    assert store.writes() == ["data/os_name", "data/updated"]


def test_stale_keys_are_swept_with_the_fewest_removals():
    store = MemStore()
    publisher = Publisher(store)
    publisher.publish({"attr/vif/0/ipv4/0": "10.0.0.2", "attr/vif/0/ipv4/1": "10.0.0.3",
                       "attr/vif/1/ipv4/0": "10.9.0.2", "attr/vif/1/ipv6/0": "2001:db8::1",
                       "data/domain": "example.org"}, MARKERS, QUIET)
    store.clear_log()
    result = publisher.publish({"attr/vif/0/ipv4/0": "10.0.0.2"}, MARKERS, QUIET)
    assert sorted(result.removed) == ["attr/vif/0/ipv4/1", "attr/vif/1", "data/domain"]
    assert store.leaves("attr") == {"attr/vif/0/ipv4/0": "10.0.0.2"}
    assert "data/domain" not in store.nodes


def test_start_reconciles_with_what_is_already_there():
    store = MemStore()
    # left behind by an earlier run, or by another agent
    for path, value in {"attr/vif/7/ipv4/0": "10.7.0.1", "data/os_name": "Old",
                        "attr/PVAddons/MajorVersion": "0", "data/other_tool": "keep"}.items():
        store.write(path, value)
    store.clear_log()
    result = Publisher(store).publish({"attr/PVAddons/MajorVersion": "0", "data/os_name": "New"},
                                      MARKERS, QUIET)
    assert result.removed == ["attr/vif/7"]
    assert sorted(result.written) == ["data/os_name", "data/updated"]  # MajorVersion already right
    assert store.nodes["data/other_tool"] == "keep"  # not ours: untouched


def test_refused_key_is_logged_once_and_others_land(caplog):
    store = MemStore()
    store.refuse["control"] = errno.EACCES
    publisher = Publisher(store)
    desired = {"control/feature-balloon": "1", "data/os_name": "X"}
    result = publisher.publish(desired, MARKERS, QUIET)
    assert result.refused == [("control/feature-balloon", errno.EACCES)]
    assert store.leaves("data") == {"data/os_name": "X", "data/updated": "1"}
    store.clear_log()
    again = publisher.publish(desired, MARKERS, QUIET)
    assert store.writes() == [] and not again.changed  # not retried while unchanged
    warnings = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 1 and "control/feature-balloon" in warnings[0].getMessage()


def test_invalidate_reads_back_and_repairs():
    store = MemStore()
    publisher = Publisher(store)
    desired = {"data/os_name": "X", "attr/vif/0/ipv4/0": "10.0.0.2"}
    publisher.publish(desired, MARKERS, QUIET)
    store.nodes.clear()  # a migration: the new tree is empty
    publisher.invalidate()
    publisher.publish(desired, MARKERS, QUIET)
    assert store.leaves() == {**desired, "data/updated": "1"}


def test_a_lone_memory_change_is_one_write_without_a_transaction():
    store = MemStore()
    publisher = Publisher(store)
    desired = {"data/os_name": "X", "data/meminfo_free": "100"}
    publisher.publish(desired, MARKERS, QUIET)
    store.clear_log()
    publisher.publish({**desired, "data/meminfo_free": "90"}, MARKERS, QUIET)
    assert store.requests == [("write", "data/meminfo_free", "90")]
    # two changes, or a non-quiet one, still go in one transaction
    store.clear_log()
    publisher.publish({**desired, "data/os_name": "Y", "data/meminfo_free": "80"}, MARKERS, QUIET)
    assert store.requests[0] == ("begin",) and store.requests[-1][0] == "end"


# --- issue 9: per-key reads, refusals retried with backoff, repair driven by watch events -------

class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_unreadable_owned_key_is_skipped_and_the_rest_lands(caplog):
    store = MemStore()
    store.write("data/os_name", "someone else's")
    store.unreadable["data/os_name"] = errno.EACCES
    store.refuse["data/os_name"] = errno.EACCES
    result = Publisher(store).publish({"data/os_name": "X", "data/domain": "example.org"},
                                      MARKERS, QUIET)
    assert result.unreadable == [("data/os_name", errno.EACCES)]
    assert result.refused == [("data/os_name", errno.EACCES)]
    assert store.nodes["data/domain"] == "example.org" and store.nodes["data/updated"] == "1"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "cannot read data/os_name" in messages and "quota" not in messages


def test_deep_garbage_is_removed_whole_without_reading_it():
    store = MemStore()
    deep = "attr/vif/9/" + "/".join(["a"] * 990)  # deeper than Python's recursion limit
    store.write(deep, "x")
    store.write("attr/vif/0/ipv4/0", "10.0.0.2")
    store.clear_log()
    result = Publisher(store).publish({"attr/vif/0/ipv4/0": "10.0.0.2"}, MARKERS, QUIET)
    assert result.removed == ["attr/vif/9"]
    assert store.leaves("attr") == {"attr/vif/0/ipv4/0": "10.0.0.2"}
    assert not any(r[1].startswith("attr/vif/9/") for r in store.requests if r[0] in ("ls", "read"))


def test_unlistable_node_holding_desired_keys_is_reset():
    """A node whose child list cannot be read (E2BIG: too many children) is
    removed and its desired keys written again, in the same transaction."""
    store = MemStore()
    store.write("attr/vif/0/ipv4/0", "10.0.0.2")
    store.write("attr/vif/0/junk", "x")
    store.unreadable["attr/vif/0"] = errno.E2BIG
    publisher = Publisher(store)
    desired = {"attr/vif/0/ipv4/0": "10.0.0.2", "data/os_name": "X"}
    first = publisher.publish(desired, MARKERS, QUIET)
    assert ("attr/vif/0", errno.E2BIG) in first.unreadable
    assert first.removed == ["attr/vif/0"]
    assert store.leaves("attr") == {"attr/vif/0/ipv4/0": "10.0.0.2"}


def test_refused_key_is_retried_with_backoff_until_it_lands():
    store, clock = MemStore(), Clock()
    store.refuse["attr/PVAddons"] = errno.ENOSPC
    publisher = Publisher(store, clock=clock)
    desired = {"attr/PVAddons/MajorVersion": "1", "data/os_name": "X"}
    publisher.publish(desired, MARKERS, QUIET)
    assert publisher.next_retry() == 101.0  # 1 s after the refusal
    store.clear_log()
    clock.now = 100.9
    publisher.publish(desired, MARKERS, QUIET)
    assert store.requests == []  # not due: not even a transaction
    for now, step in ((101.0, 2.0), (103.0, 4.0), (107.0, 8.0)):  # doubling while refused
        clock.now = now
        assert publisher.publish(desired, MARKERS, QUIET).refused
        assert publisher.next_retry() == now + step
    del store.refuse["attr/PVAddons"]  # the quota frees
    clock.now = 115.0
    result = publisher.publish(desired, MARKERS, QUIET)
    assert "attr/PVAddons/MajorVersion" in result.written
    assert store.nodes["attr/PVAddons/MajorVersion"] == "1"
    assert publisher.next_retry() is None


def test_backoff_is_capped_and_a_new_value_is_tried_at_once():
    store, clock = MemStore(), Clock()
    store.refuse["data/os_name"] = errno.EACCES
    publisher = Publisher(store, clock=clock)
    for _ in range(20):
        publisher.publish({"data/os_name": "X"}, MARKERS, QUIET)
        clock.now = publisher.next_retry()
    publisher.publish({"data/os_name": "X"}, MARKERS, QUIET)
    assert publisher.next_retry() - clock.now == 300.0
    store.clear_log()
    publisher.publish({"data/os_name": "Y"}, MARKERS, QUIET)
    assert ("write", "data/os_name", "Y") in store.requests


@pytest.mark.parametrize("code", [errno.ENOMEM, errno.EEXIST, errno.EIO])
def test_errors_that_are_not_about_one_key_fail_the_round(code):
    """xenstored answers ENOMEM for its memory or the domain's memory quota
    (xenstored_domain.c domain_memory_add) and EEXIST only for a duplicate watch
    (xenstored_watch.c do_watch): neither says anything about the key."""
    store = MemStore()
    store.refuse["data/os_name"] = code
    with pytest.raises(XenStoreError):
        Publisher(store).publish({"data/os_name": "X"}, MARKERS, QUIET)


def test_repeated_refusals_are_rate_limited_with_counts(caplog):
    store, clock = MemStore(), Clock()
    store.refuse["data/os_name"] = errno.EACCES
    publisher = Publisher(store, clock=clock)
    for _ in range(5):  # retries at +1, +2, +4, +8 s: all within ten minutes
        publisher.publish({"data/os_name": "X"}, MARKERS, QUIET)
        clock.now = publisher.next_retry()
    clock.now += 600
    publisher.publish({"data/os_name": "X"}, MARKERS, QUIET)
    lines = [r.getMessage() for r in caplog.records if "refused to write data/os_name" in r.getMessage()]
    assert len(lines) == 2
    assert lines[1].endswith("(4 more times since)") or "(4 more times since)" in lines[1]


def own_events(publisher, store):
    """What xenstored would send for our last round: one event per write or rm."""
    return [publisher.note_event(r[1]) for r in store.requests if r[0] in ("write", "rm")]


def test_own_writes_are_not_repairs_and_foreign_changes_are():
    store = MemStore()
    publisher = Publisher(store)
    desired = {"data/os_name": "X", "attr/vif/0/ipv4/0": "10.0.0.2", "attr/PVAddons/MajorVersion": "1"}
    publisher.publish(desired, MARKERS, QUIET)
    assert own_events(publisher, store) == [False] * 4
    assert not publisher.needs_repair
    # another writer: changes, deletes, adds garbage
    store.nodes["data/os_name"] = "Evil"
    store.rm("attr/PVAddons")
    store.write("attr/vif/9/junk", "x")
    store.clear_log()
    assert publisher.note_event("data/os_name")
    assert publisher.note_event("/local/domain/5/attr/PVAddons")  # absolute paths too
    assert publisher.note_event("attr/vif/9/junk")
    assert not publisher.note_event("data/not-ours")
    assert publisher.needs_repair
    result = publisher.publish(desired, MARKERS, QUIET)
    assert store.leaves("attr") == {"attr/vif/0/ipv4/0": "10.0.0.2",
                                    "attr/PVAddons/MajorVersion": "1"}
    assert store.nodes["data/os_name"] == "X"
    assert result.removed == ["attr/vif/9"]
    # only the suspect paths were read back, not the owned trees
    reads = {r[1] for r in store.requests if r[0] in ("ls", "read")}
    assert reads == {"data/os_name", "attr/PVAddons", "attr/vif/9/junk"}
    assert all(e is False for e in own_events(publisher, store))
    assert not publisher.needs_repair


def test_a_watch_registration_event_is_expected():
    publisher = Publisher(MemStore())
    publisher.expect_event("attr/vif")
    assert not publisher.note_event("attr/vif")  # xenstored fires a new watch once
    assert publisher.note_event("attr/vif")  # a second one is a change


def test_an_expectation_not_met_is_forgotten():
    """Removing a node another writer already removed fires nothing: our
    expectation must not swallow a later change for long."""
    clock = Clock()
    publisher = Publisher(MemStore(), clock=clock)
    publisher.expect_event("data/os_name")
    clock.now += 11
    assert publisher.note_event("data/os_name")


def test_a_refused_write_expects_no_event():
    store = MemStore()
    store.refuse["data/os_name"] = errno.EACCES
    publisher = Publisher(store)
    publisher.publish({"data/os_name": "X", "data/domain": "d"}, MARKERS, QUIET)
    assert publisher.note_event("data/os_name")  # no event was expected for it


def test_a_retry_refused_again_rewrites_no_marker():
    """Markers say "a batch changed": a retry that changed nothing (refused
    again, e.g. libxl's read-only control/) must not rewrite them, or xapi is
    nudged every retry for nothing."""
    store, clock = MemStore(), Clock()
    store.refuse["control"] = errno.EACCES
    publisher = Publisher(store, clock=clock)
    desired = {"control/feature-balloon": "1", "data/os_name": "X"}
    publisher.publish(desired, MARKERS, QUIET)
    store.clear_log()
    clock.now = publisher.next_retry()
    result = publisher.publish(desired, MARKERS, QUIET)
    assert result.refused == [("control/feature-balloon", errno.EACCES)]
    assert store.writes() == ["control/feature-balloon"]
    # once it lands, the markers follow it
    del store.refuse["control"]
    clock.now = publisher.next_retry()
    store.clear_log()
    publisher.publish(desired, MARKERS, QUIET)
    assert store.writes() == ["control/feature-balloon", "data/updated"]


def test_a_marker_another_writer_removed_or_changed_is_repaired():
    """data/updated (squeezed: "a guest agent runs", squeeze_xen.ml get_guest_agent) is a
    batch marker, not a desired key: removed or overwritten by another writer it stayed so
    (the fault campaign's owned-deleted/owned-overwritten classes found it).  A suspect
    marker is read back and written again like any owned key."""
    store = MemStore()
    publisher = Publisher(store)
    desired = {"data/os_name": "X", "attr/PVAddons/MajorVersion": "1"}
    publisher.publish(desired, MARKERS, QUIET)
    own_events(publisher, store)
    for damage in (lambda: store.rm("data/updated"),
                   lambda: store.write("data/updated", "0")):
        damage()
        store.clear_log()  # the damage is another writer's: its event is noted next
        assert publisher.note_event("data/updated")
        publisher.publish(desired, MARKERS, QUIET)
        assert store.nodes["data/updated"] == MARKERS["data/updated"]
        assert all(e is False for e in own_events(publisher, store))
        assert not publisher.needs_repair
