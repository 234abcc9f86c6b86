"""The real-xenstored test bed works: the daemon runs, the CLI helpers see exactly what was stored,
the trace counts requests exactly, and kills and restarts behave like a crashed host daemon.

Every other XenStore test stands on this one, so these checks are deliberately literal.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import support.xenstored
from support.xenstored import (
    SHIM_SOURCE,
    Request,
    Xenstored,
    XenstoredError,
    build_shim,
    check_requirements,
    parse_ls,
    parse_trace,
    unsanitise,
)

# --- round trips through Debian's CLI ------------------------------------------------------------

def test_write_read_ls_round_trip(xenstored: Xenstored) -> None:
    xenstored.write("/local/domain/7/data/os_name", "Debian GNU/Linux 12")
    assert xenstored.read("/local/domain/7/data/os_name") == "Debian GNU/Linux 12"
    assert xenstored.ls("/local/domain/7") == ["data"]
    assert xenstored.exists("/local/domain/7/data")


def test_read_of_missing_node_is_none(xenstored: Xenstored) -> None:
    assert xenstored.read("/no/such/node") is None
    assert not xenstored.exists("/no/such/node")


def test_empty_value_is_stored_and_read_back_empty(xenstored: Xenstored) -> None:
    xenstored.write("/ack", "")
    assert xenstored.read("/ack") == ""
    assert xenstored.dump("/")["ack"] == ""


@pytest.mark.parametrize("value", [
    "two words",
    "  leading and trailing  ",
    'say "hi" = "there"',
    "back\\slash \\n not a newline",
    "tab\there",
    "line1\nline2",
    "caf\u00e9",
])
def test_awkward_values_survive_read_and_dump(xenstored: Xenstored, value: str) -> None:
    xenstored.write("/v/x", value)
    assert xenstored.read("/v/x") == value
    assert xenstored.dump("/v") == {"x": value}


def test_rm_removes_subtree(xenstored: Xenstored) -> None:
    xenstored.write("/t/a/b", "1")
    xenstored.write("/t/c", "2")
    xenstored.rm("/t/a")
    assert xenstored.dump("/t") == {"c": "2"}
    xenstored.rm("/t/a")  # removing what is gone is not an error


def test_dump_of_nested_tree_is_exact(xenstored: Xenstored) -> None:
    xenstored.write("/local/domain/3/attr/vif/0/ipv4/0", "192.0.2.10")
    xenstored.write("/local/domain/3/attr/vif/0/ipv6/0", "2001:db8::10")
    xenstored.write("/local/domain/3/data/meminfo_free", "123456")
    xenstored.write("/local/domain/3/data/updated", "")
    long_value = "x" * 2000
    xenstored.write("/local/domain/3/data/long", long_value)

    assert xenstored.dump("/local/domain/3") == {
        "attr": "",
        "attr/vif": "",
        "attr/vif/0": "",
        "attr/vif/0/ipv4": "",
        "attr/vif/0/ipv4/0": "192.0.2.10",
        "attr/vif/0/ipv6": "",
        "attr/vif/0/ipv6/0": "2001:db8::10",
        "data": "",
        "data/meminfo_free": "123456",
        "data/updated": "",
        "data/long": long_value,
    }
    # A trailing slash on the prefix makes no difference.
    assert xenstored.dump("/local/domain/3/data/") == {
        "meminfo_free": "123456", "updated": "", "long": long_value}


def test_dump_of_missing_prefix_is_empty(xenstored: Xenstored) -> None:
    assert xenstored.dump("/local/domain/99") == {}


def test_fresh_daemon_has_only_its_own_node(xenstored: Xenstored) -> None:
    assert xenstored.dump("/") == {"tool": "", "tool/xenstored": ""}


# --- the trace -------------------------------------------------------------------------------------

def test_trace_counts_writes_exactly(xenstored: Xenstored) -> None:
    xenstored.write("/before", "not counted")
    mark = xenstored.mark()
    for i in range(7):
        xenstored.write(f"/counted/{i}", str(i))
    xenstored.read("/counted/0")

    assert xenstored.count("WRITE", since=mark) == 7
    assert xenstored.count("WRITE", since=mark, prefix="/counted/") == 7
    assert xenstored.count("WRITE", since=mark, prefix="/before") == 0
    assert xenstored.count("READ", since=mark) == 1
    assert xenstored.count(since=mark) == 8
    assert xenstored.count("WRITE") == 8

    mark = xenstored.mark()
    assert xenstored.count("WRITE", since=mark) == 0


def test_trace_records_op_and_path(xenstored: Xenstored) -> None:
    mark = xenstored.mark()
    xenstored.write("/a/b", "hello world")
    xenstored.read("/a/b")
    xenstored.dump("/a")
    # With -s the CLI sends one request per single-key operation, no transaction around it.
    assert xenstored.trace_requests()[mark:] == [
        Request("WRITE", "/a/b"),
        Request("READ", "/a/b"),
        Request("DIRECTORY", "/a"),
        Request("READ", "/a/b"),
        Request("DIRECTORY", "/a/b"),
    ]


def test_parse_trace_reads_in_lines_only() -> None:
    text = (
        "***\n"
        "CREATE connection 0x5562\n"
        "IN 0x5562 20261123 10:56:27 TRANSACTION_START ( )\n"
        "wrl: dom    0      0  msec      10000 credit       90200 reserve          0 discard\n"
        "OUT 0x5562 20261123 10:56:27 TRANSACTION_START (1 )\n"
        "IN 0x5562 20261123 10:56:27 WRITE (data/updated )\n"
        "IN 0x5562 20261123 10:56:27 WRITE (/x line one\n"
        "IN the value's second line, not a request)\n"
        "IN 0x5562 20261123 10:56:27 WATCH (control/shutdown tok )\n"
        "OUT 0x5562 20261123 10:56:27 ERROR (EINVAL )\n"
        "IN 0x5562 20261123 10:56:27 RESET_WATCHES ( )\n"
    )
    assert parse_trace(text) == [
        ("TRANSACTION_START", None),
        ("WRITE", "data/updated"),
        ("WRITE", "/x"),
        ("WATCH", "control/shutdown"),
        ("RESET_WATCHES", None),
    ]


def test_unsanitise_and_parse_ls() -> None:
    assert unsanitise(rb"a\\b\tc\nd\re\x00f\001") == b"a\\b\tc\nd\re\x00f\x01"
    out = b'/p/a = ""\n/p/a/b = "say "hi""\n/p/c = "caf\\xc3\\xa9"\n'
    assert parse_ls(out, "/p") == {"a": "", "a/b": 'say "hi"', "c": "caf\u00e9"}


# --- life cycle ------------------------------------------------------------------------------------

def test_kill_and_restart_gives_fresh_empty_store(xenstored: Xenstored) -> None:
    xenstored.write("/local/domain/1/data/x", "1")
    old_pid = xenstored.pid
    xenstored.kill()
    assert not xenstored.running
    assert xenstored.socket_path.exists(), "a killed daemon leaves its socket, like a crash"
    with pytest.raises(XenstoredError, match="not running"):
        xenstored.read("/local/domain/1/data/x")

    xenstored.start()
    assert xenstored.pid != old_pid
    assert xenstored.read("/local/domain/1/data/x") is None
    assert xenstored.dump("/") == {"tool": "", "tool/xenstored": ""}
    xenstored.write("/after", "ok")
    assert xenstored.read("/after") == "ok"


def test_restart_keeps_socket_and_trace(xenstored: Xenstored) -> None:
    socket_path, spec = xenstored.socket_path, xenstored.spec
    xenstored.write("/x", "1")
    mark = xenstored.mark()
    xenstored.restart()
    assert (xenstored.socket_path, xenstored.spec) == (socket_path, spec)
    assert spec == f"unix:{socket_path}"
    assert xenstored.read("/x") is None
    xenstored.write("/y", "2")
    assert xenstored.count("WRITE", since=mark) == 1


def test_stop_removes_socket_and_is_idempotent(xenstored: Xenstored) -> None:
    xenstored.stop()
    assert not xenstored.running
    assert not xenstored.socket_path.exists()
    xenstored.stop()


def test_long_workdir_still_gets_a_usable_socket(tmp_path: Path, xenstored_shim: Path) -> None:
    with Xenstored(tmp_path / ("deep" * 30), shim=xenstored_shim) as daemon:
        assert len(str(daemon.socket_path)) <= 100
        daemon.write("/ok", "1")
        assert daemon.read("/ok") == "1"
    assert not daemon.socket_path.exists()


def test_start_failure_raises_with_daemon_output(tmp_path: Path, xenstored_shim: Path) -> None:
    # xenstored ignores unknown options but refuses an unknown quota.
    daemon = Xenstored(tmp_path, shim=xenstored_shim, extra_args=["-Q", "bogus=1"])
    with pytest.raises(XenstoredError) as info:
        daemon.start()
    message = str(info.value)
    assert "exited with status 1" in message
    assert 'unknown quota "bogus=1"' in message  # xenstored's own complaint is in the error
    assert not daemon.running


def test_start_timeout_raises_and_kills(tmp_path: Path, xenstored_shim: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    silent = tmp_path / "never-listens"
    silent.write_text("#!/bin/sh\necho waiting forever\nexec sleep 300\n")
    silent.chmod(0o755)
    daemon = Xenstored(tmp_path / "w", shim=xenstored_shim, binary=silent, start_timeout=60)

    class Clock:
        """The helper's clock, which passes the start timeout only once the daemon has said
        something: its output must be in the error, and a loaded machine may take any time to
        run the script's echo (a real 0.2 s timeout raced it)."""

        @staticmethod
        def monotonic() -> float:
            spoke = daemon.log_path.exists() and b"waiting forever" in daemon.log_path.read_bytes()
            return time.monotonic() + (3600.0 if spoke else 0.0)

        sleep = staticmethod(time.sleep)

    monkeypatch.setattr(support.xenstored, "time", Clock)
    with pytest.raises(XenstoredError, match=r"did not accept connections .* within 60 s") as info:
        daemon.start()
    assert "waiting forever" in str(info.value)
    assert not daemon.running


def test_missing_daemon_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(XenstoredError, match="xen-utils-4.17"):
        check_requirements(tmp_path / "xenstored")


def test_shim_build_is_cached_by_source_hash(tmp_path: Path, xenstored_shim: Path) -> None:
    assert build_shim() == xenstored_shim
    source = tmp_path / "shim.c"
    source.write_text(SHIM_SOURCE.read_text() + "\n/* changed */\n")
    rebuilt = build_shim(source, cache=tmp_path / "cache")
    assert rebuilt.exists() and rebuilt != xenstored_shim
    assert build_shim(source, cache=tmp_path / "cache") == rebuilt


# --- quotas and domains ----------------------------------------------------------------------------

def test_quota_options_reach_the_daemon(xenstored_factory) -> None:
    daemon = xenstored_factory(quota_nodes=50, quota_node_size=512, quota_watches=7,
                               quota_transactions=3, quota_permissions=4, quota_memory=40000,
                               quota_outstanding=11, quota_transaction_nodes=9, path_max=200)
    settings = daemon.control("quota")
    for name, value in [("nodes", 50), ("node-size", 512), ("watches", 7), ("transactions", 3),
                        ("permissions", 4), ("memory", 40000), ("outstanding", 11),
                        ("transaction-nodes", 9), ("path-max", 200)]:
        assert any(line.split(":")[0].strip() == name and line.split(":")[1].split()[0] == str(value)
                   for line in settings.splitlines()), (name, settings)


def test_dom0_socket_is_exempt_from_node_quotas(xenstored_factory) -> None:
    """Quotas limit guest domains only: over the socket the agent is dom0 and is never limited.

    Proving the agent's behaviour at a quota needs it to connect as a guest domain (issue 3).
    """
    daemon = xenstored_factory(quota_nodes=3, quota_node_size=64)
    for i in range(10):
        daemon.write(f"/q/{i}", "v" * 100)
    assert len(daemon.dump("/q")) == 10


def test_path_max_applies_even_to_dom0(xenstored_factory) -> None:
    daemon = xenstored_factory(path_max=20)
    daemon.write("/123456789/12345678", "1")  # 19 characters
    mark = daemon.mark()
    with pytest.raises(XenstoredError, match="could not write"):
        daemon.write("/123456789/123456789/1", "1")
    assert daemon.count("WRITE", since=mark) == 1
    assert daemon.read("/123456789/123456789/1") is None


def test_permissions_need_the_domain_to_exist(xenstored_factory) -> None:
    """xenstored refuses ownership by a domain that does not exist; the shim's domain list makes
    guest domains exist, as a toolstack's guests do."""
    daemon = xenstored_factory(domains=[5])
    daemon.write("/local/domain/5/data", "")
    daemon.chmod("/local/domain/5/data", "n5", "r0")
    with pytest.raises(XenstoredError, match="setting permissions"):
        daemon.chmod("/local/domain/5/data", "n6")
