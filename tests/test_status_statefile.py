"""The daemon's state file (xenguest_agent.statefile): atomic, rewritten only on change,
bounded, and read tolerantly by ``status``.

The daemon writes the JSON without the json module; the format is JSON as RFC 8259 defines it
(section 7: strings, escapes, surrogate pairs), and the expected text of every case is what
Python's own ``json.dumps(..., sort_keys=True, indent=1)`` writes, the layout the file had
before, so files written by either version read the same.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import stat
from pathlib import Path

import pytest

from xenguest_agent.statefile import (
    FREEBSD_STATE_PATH,
    LINUX_STATE_PATH,
    MAX_FILE_BYTES,
    MAX_REFUSED,
    MAX_TEXT,
    StateFile,
    encode,
    state_path,
    wall_clock,
)


def test_paths_per_os() -> None:
    assert state_path("linux") == LINUX_STATE_PATH == "/run/xenguest-agent/state.json"
    assert state_path("freebsd") == FREEBSD_STATE_PATH == "/var/run/xenguest-agent/state.json"


def test_first_update_creates_the_directory_and_the_file(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the modes must not depend on the umask
    try:
        path = tmp_path / "run" / "xenguest-agent" / "state.json"
        assert StateFile(str(path)).update(pid=123, version="1.2", started="2026-01-01T00:00:00+00:00",
                                           connected=True, xenstore="/dev/xen/xenbus") is True
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.parent.stat().st_uid == os.getuid()
    assert StateFile.read(str(path)) == {"pid": 123, "version": "1.2",
                                         "started": "2026-01-01T00:00:00+00:00", "connected": True,
                                         "xenstore": "/dev/xen/xenbus"}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left


def test_unchanged_content_is_not_rewritten_a_change_is_renamed_in(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(str(path))
    assert state.update(pid=1, last_publish="2026-01-01T00:00:00+00:00", refused=[])
    inode = path.stat().st_ino
    assert state.update(last_publish="2026-01-01T00:00:00+00:00", refused=[]) is False
    assert path.stat().st_ino == inode  # not written again
    assert state.update(refused=[("attr/vif/0/ipv4/0", "EDQUOT")]) is True
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert StateFile.read(str(path)) == {"pid": 1, "last_publish": "2026-01-01T00:00:00+00:00",
                                         "refused": [["attr/vif/0/ipv4/0", "EDQUOT"]]}


def test_a_removed_file_is_written_again(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(str(path))
    state.update(pid=1)
    path.unlink()
    assert state.update(pid=1) is True and path.exists()


def test_bounded(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    refused = [(f"attr/vif/{i}/ipv4/0", "EDQUOT") for i in range(1000)]
    StateFile(str(path)).update(refused=refused, version="v" * 10_000)
    data = StateFile.read(str(path))
    assert data is not None
    assert len(data["refused"]) == MAX_REFUSED
    assert len(data["version"]) == MAX_TEXT
    assert path.stat().st_size < MAX_FILE_BYTES


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="lastpublish"):
        StateFile(str(tmp_path / "s.json")).update(lastpublish="x")


def test_a_failed_rename_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.mkdir()  # rename of a file onto a directory fails
    (target / "x").write_text("")
    with pytest.raises(OSError):
        StateFile(str(target)).update(pid=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("content", [None, b"", b"{not json", b"[1, 2]", b"\xff\xfe",
                                     b" " * (MAX_FILE_BYTES + 1)])
def test_read_tolerates_missing_and_garbled(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "state.json"
    if content is not None:
        path.write_bytes(content)
    assert StateFile.read(str(path)) is None


def test_read_drops_fields_of_the_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"pid": "12", "connected": "yes", "version": 3, "started": "s",
                                "refused": [["a", "EACCES"], ["b"], [1, 2], "c"], "other": 1}))
    assert StateFile.read(str(path)) == {"started": "s", "refused": [["a", "EACCES"]]}
    path.write_text(json.dumps({"pid": True}))
    assert StateFile.read(str(path)) == {}


def test_refusals_as_errno_numbers_are_stored_by_name(tmp_path: Path) -> None:
    # the publisher reports (path, errno number): PublishResult.refused
    path = tmp_path / "state.json"
    StateFile(str(path)).update(refused=[("attr/vif/0/ipv4/0", errno.EDQUOT),
                                         ("data/os_name", errno.EACCES), ("x", 99999)])
    assert StateFile.read(str(path)) == {"refused": [["attr/vif/0/ipv4/0", "EDQUOT"],
                                                     ["data/os_name", "EACCES"], ["x", "99999"]]}


def test_wall_clock_is_iso_utc_whole_seconds() -> None:
    stamp = wall_clock()
    parsed = datetime.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == datetime.timedelta(0) and parsed.microsecond == 0


HOSTILE = ["", "plain", 'quote " and \\ backslash', "tab\tnl\nret\rbs\bff\f", "\x00\x01\x1f",
           "del \x7f", "caf\u00e9", "\u2028\u2029", "\ud7ff\ue000\uffff", "\U0001f600 \U0010ffff",
           "lone \udc80 surrogate", "/", "<>&'"]


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63, [], {}, [[]], *HOSTILE,
    {"pid": 12, "refused": [["a", "EDQUOT"], ["b\u00ff", "c"]], "connected": False,
     "version": None, "z": [], "a": {"n": [1, [2, {}]]}},
    {key: 1 for key in ("b", "a", "\u00e9", "A", "_", "aa")},
])
def test_encode_writes_what_json_dumps_writes(value: object) -> None:
    assert encode(value) == json.dumps(value, sort_keys=True, indent=1)
    assert json.loads(encode(value)) == value


@pytest.mark.parametrize("text", HOSTILE)
def test_every_text_field_round_trips_in_ascii(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    StateFile(str(path)).update(pid=7, version=text, xenstore=text, refused=[(text, text)],
                                connected=True)
    expected = {"pid": 7, "version": text, "xenstore": text, "refused": [[text, text]],
                "connected": True}
    assert path.read_bytes() == (json.dumps(expected, sort_keys=True, indent=1) + "\n").encode("ascii")
    assert StateFile.read(str(path)) == expected


def test_encode_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        encode(1.5)
    with pytest.raises(TypeError):
        encode((1, 2))


def test_a_file_from_the_previous_writer_reads_back(tmp_path: Path) -> None:
    # the bytes the json-module writer (version 1.0.0) produced for a running daemon
    path = tmp_path / "state.json"
    path.write_bytes(b'{\n "connected": true,\n "last_publish": "2026-01-01T00:00:05+00:00",\n'
                     b' "pid": 4242,\n "refused": [\n  [\n   "attr/vif/0/ipv4/0",\n   "EDQUOT"\n'
                     b'  ]\n ],\n "started": "2026-01-01T00:00:00+00:00",\n "version": "1.0.0",\n'
                     b' "xenstore": "/dev/xen/xenbus"\n}\n')
    old = path.read_bytes()
    assert StateFile.read(str(path)) == {
        "connected": True, "last_publish": "2026-01-01T00:00:05+00:00", "pid": 4242,
        "refused": [["attr/vif/0/ipv4/0", "EDQUOT"]], "started": "2026-01-01T00:00:00+00:00",
        "version": "1.0.0", "xenstore": "/dev/xen/xenbus"}
    # and the new writer, given the same facts, writes the same bytes
    other = tmp_path / "new.json"
    StateFile(str(other)).update(pid=4242, version="1.0.0", started="2026-01-01T00:00:00+00:00",
                                 connected=True, xenstore="/dev/xen/xenbus",
                                 refused=[("attr/vif/0/ipv4/0", errno.EDQUOT)],
                                 last_publish="2026-01-01T00:00:05+00:00")
    assert other.read_bytes() == old


def test_a_temporary_left_by_a_dead_writer_with_our_pid_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    stale = tmp_path / f".state.{os.getpid()}.tmp"
    stale.write_text("half a file")
    assert StateFile(str(path)).update(pid=1) is True
    assert StateFile.read(str(path)) == {"pid": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_link_planted_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.chmod(victim, 0o600)
    (tmp_path / f".state.{os.getpid()}.tmp").symlink_to(victim)
    path = tmp_path / "state.json"
    assert StateFile(str(path)).update(pid=1) is True
    assert victim.read_text() == "keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not path.is_symlink() and StateFile.read(str(path)) == {"pid": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]


def test_a_temporary_name_that_cannot_be_replaced_raises_and_writes_nothing(tmp_path: Path) -> None:
    # unlink(2) refuses a directory (EISDIR on Linux, EPERM on FreeBSD): the writer must
    # raise (the daemon logs it) rather than loop or write elsewhere
    (tmp_path / f".state.{os.getpid()}.tmp").mkdir()
    with pytest.raises(OSError):
        StateFile(str(tmp_path / "state.json")).update(pid=1)
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("at", [0.0, 1.0, 59.999, 951782400.5, 1767225599.9999, 4102444800.0])
def test_wall_clock_is_what_datetime_writes(at: float) -> None:
    """RFC 3339 date-time in UTC with whole seconds: datetime's isoformat is the reference."""
    expected = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="seconds")
    assert wall_clock(at) == expected
