"""The daemon's state file (xenguest_agent.statefile): atomic, rewritten only on change,
bounded, and read tolerantly by ``status``."""

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
