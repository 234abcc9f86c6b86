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

The daemon writes the JSON itself (:func:`encode`: the few types the fields have, the text
``json.dumps(sort_keys=True, indent=1)`` gives) and names its temporary file after its pid,
so that it imports neither :mod:`json` nor :mod:`tempfile` (with :mod:`random` and
:mod:`shutil`); only ``status`` parses the file, with :mod:`json`.
"""

from __future__ import annotations

import errno
import os
import time

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


def wall_clock(at: float | None = None) -> str:
    """Now (or the POSIX time ``at``) as the file's times are written: ISO 8601 / RFC 3339,
    UTC, whole seconds, e.g. ``2026-01-01T00:00:00+00:00``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                         time.gmtime(time.time() if at is None else at))


#: JSON string escapes (RFC 8259 section 7) that have a short form
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                  "\b": "\\b", "\f": "\\f"}


def _string(text: str) -> str:
    """A JSON string in ASCII: printable ASCII as is, the rest escaped (RFC 8259 section 7;
    characters beyond the Basic Multilingual Plane as a UTF-16 surrogate pair)."""
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif " " <= char <= "~":
            out.append(char)
        else:
            code = ord(char)
            if code > 0xFFFF:
                code -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 | code >> 10, 0xDC00 | code & 0x3FF))
            else:
                out.append("\\u%04x" % code)
    return '"' + "".join(out) + '"'


def encode(value: Any, indent: str = "") -> str:
    """``value`` (None, bool, int, str, a list or a dict with str keys, nested) as JSON, laid
    out as ``json.dumps(value, sort_keys=True, indent=1)`` lays it out."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return _string(value)
    inner = indent + " "
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [inner + encode(item, inner) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        members = [inner + _string(key) + ": " + encode(value[key], inner) for key in sorted(value)]
        return "{\n" + ",\n".join(members) + "\n" + indent + "}"
    raise TypeError(f"not a state value: {type(value).__name__}")


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
        content = (encode(self._fields) + "\n").encode("ascii")
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
        # one writer per pid: a name left by an earlier process with this pid (it died between
        # open and rename) is removed; O_EXCL|O_NOFOLLOW never write through a planted link
        tmp = os.path.join(directory, f".state.{os.getpid()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            os.unlink(tmp)
            fd = os.open(tmp, flags, 0o600)
        try:
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, 0o644)
            finally:
                os.close(fd)
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
        import json  # only `status` reads the file: the daemon does not import json

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
