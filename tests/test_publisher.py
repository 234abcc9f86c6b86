"""The diff publisher against an in-memory store (the same behaviours are proven
against the real xenstored in tests/test_publish_real.py)."""

import errno

from support.memstore import MemStore

from xenguest_agent.publisher import Publisher

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
