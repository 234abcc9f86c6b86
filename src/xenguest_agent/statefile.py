"""The daemon's small state file, read by ``xenguest-agent status``.

The daemon is the only one that knows when it last published, what xenstored refused and
whether it is connected; ``status`` runs in another process, so the daemon leaves these facts
in a file under /run (Linux ``/run/xenguest-agent/state.json``, FreeBSD
``/var/run/xenguest-agent/state.json``: both are memory file systems emptied at boot, so a
file left there is from this boot).

The file is rewritten only when its content changes (a publish round that changed nothing
writes nothing), atomically (a temporary file in the same directory, then ``rename``, so a
reader sees the old or the new file, never half of one), mode 0644 in a 0755 directory, and
bounded: at most :data:`MAX_REFUSED` refusals, each path and value cut to
:data:`MAX_TEXT`.  Reading tolerates a missing, unreadable, oversized or garbled file.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import tempfile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LINUX_STATE_PATH = "/run/xenguest-agent/state.json"
FREEBSD_STATE_PATH = "/var/run/xenguest-agent/state.json"

#: fields the daemon may set (anything else is refused: a typo must not pass silently)
FIELDS = ("pid", "version", "started", "last_publish", "refused", "connected", "xenstore")
MAX_REFUSED = 32
MAX_TEXT = 256
#: more than the bounded fields can make; a larger file is not ours
MAX_FILE_BYTES = 64 * 1024


def state_path(os_name: str) -> str:
    """The state file of the daemon on ``os_name`` ("linux" or "freebsd")."""
    return FREEBSD_STATE_PATH if os_name == "freebsd" else LINUX_STATE_PATH


def wall_clock() -> str:
    """Now, as the file's times are written: ISO 8601, UTC, whole seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _text(value: object) -> str:
    return str(value)[:MAX_TEXT]


def _normal(name: str, value: Any) -> Any:
    """One field, bounded and in the JSON form the reader expects."""
    if name == "pid":
        return None if value is None else int(value)
    if name == "connected":
        return bool(value)
    if name == "refused":  # (path, errno number or name): stored as names ("EDQUOT")
        return [[_text(path), _text(errno.errorcode.get(code, code) if isinstance(code, int) else code)]
                for path, code in list(value)[:MAX_REFUSED]]
    return None if value is None else _text(value)


class StateFile:
    """The daemon's writer: ``update(**fields)`` merges the fields into what this instance
    wrote last and rewrites the file only when the result differs.  A new instance starts
    afresh (a file left by an earlier daemon is replaced, not merged), so the daemon's first
    update names every field it knows."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fields: dict[str, Any] = {}
        self._written: bytes | None = None

    def update(self, **fields: Any) -> bool:
        """Merge ``fields`` and write the file if its content changed; True when written.
        OSError propagates (the caller logs it: a state file is never worth stopping for)."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown state field(s): {', '.join(unknown)}")
        for name, value in fields.items():
            self._fields[name] = _normal(name, value)
        content = (json.dumps(self._fields, sort_keys=True, indent=1) + "\n").encode("ascii")
        if content == self._written and os.path.exists(self.path):
            return False
        self._write(content)
        self._written = content
        return True

    def _write(self, content: bytes) -> None:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)  # whatever the umask (root's, as the daemon runs)
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                os.fchmod(handle.fileno(), 0o644)
            os.rename(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @staticmethod
    def read(path: str) -> dict[str, Any] | None:
        """The fields the daemon last wrote, or None when the file is missing, unreadable,
        too large or not a JSON object; fields of the wrong type are dropped."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError:
            return None
        if len(data) > MAX_FILE_BYTES:
            return None
        try:
            loaded = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(loaded, dict):
            return None
        return _checked(loaded)


def _checked(loaded: dict[str, Any]) -> dict[str, Any]:
    """Keep the known fields whose type is right (another writer or an old version may
    have left something else)."""
    out: dict[str, Any] = {}
    pid = loaded.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        out["pid"] = pid
    for name in ("version", "started", "last_publish", "xenstore"):
        if isinstance(loaded.get(name), str):
            out[name] = loaded[name][:MAX_TEXT]
    if isinstance(loaded.get("connected"), bool):
        out["connected"] = loaded["connected"]
    refused = loaded.get("refused")
    if isinstance(refused, list):
        pairs: list[list[str]] = [
            [item[0][:MAX_TEXT], item[1][:MAX_TEXT]] for item in refused[:MAX_REFUSED]
            if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)]
        out["refused"] = pairs
    return out
