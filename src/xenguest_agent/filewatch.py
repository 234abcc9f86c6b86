"""Event-driven notice that the host name, the OS release files or resolv.conf changed.

With network events on, the daemon otherwise learns of these only at its safety sweep
(minutes).  This module tells it within the poll loop's next wake-up, with no polling
and no XenStore traffic:

* Linux: inotify(7) on the parent *directories* of the watched files, filtered by name.
  resolv.conf and os-release are usually replaced by rename (resolvconf, NetworkManager,
  systemd-resolved, package managers) and are often symlinks (``/etc/resolv.conf ->
  /run/systemd/resolve/stub-resolv.conf``), so a watch on the file itself would die
  with the old inode: the directory of each link in the chain is watched, and the chain
  is re-resolved after every change.  ``/proc/sys/kernel/hostname`` supports poll(2):
  sethostname(2) calls ``uts_proc_notify`` (kernel/utsname_sysctl.c), which bumps the
  sysctl's poll event, and ``proc_sys_poll`` (fs/proc/proc_sysctl.c) then reports
  POLLERR|POLLPRI once per change to every open file (POLLIN is always set, so only
  POLLPRI is asked for).  The event is shared by all UTS namespaces: a container's
  sethostname wakes us too, and costs one re-read of the names.
* FreeBSD: kqueue(2) ``EVFILT_VNODE`` on the directories (``NOTE_WRITE``: an entry was
  added, removed or renamed) and on the files themselves (written, attributes, deleted,
  renamed).  A directory event does not say which entry changed, so the files' stat
  signatures are compared.  FreeBSD has no event for ``kern.hostname``: the sweep keeps
  covering it there.

Every path goes through :class:`~xenguest_agent.host.Host`, so tests point the watch at a
temporary tree; symlinks are resolved inside that root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct

from xenguest_agent.host import Host
from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)

# What each collector reads (backends/linux.py os_info/host_names, backends/freebsd.py).
WATCHED: dict[str, dict[str, tuple[str, ...]]] = {
    "linux": {
        "os": ("/etc/os-release", "/usr/lib/os-release", "/etc/oracle-release",
               "/etc/centos-release", "/etc/redhat-release", "/etc/SuSE-release",
               "/etc/lsb-release", "/etc/debian_version", "/etc/alpine-release"),
        "names": ("/etc/resolv.conf",),
    },
    "freebsd": {
        "os": ("/etc/os-release", "/var/run/os-release"),
        "names": ("/etc/resolv.conf",),
    },
}
HOSTNAME = "/proc/sys/kernel/hostname"
MAX_LINKS = 8  # links followed per watched file (the kernel allows 40; none needs more)

# linux/inotify.h
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
DIRECTORY_MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB
                  | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


def resolve(root: str, guest_path: str) -> str | None:
    """``guest_path`` with every symlink resolved inside ``root`` (an absolute link
    target starts again at the root, as it would for the guest), or None for a loop.
    The last component need not exist."""
    done, queue, links = "/", [p for p in guest_path.split("/") if p], 0
    while queue:
        part = queue.pop(0)
        if part == ".":
            continue
        if part == "..":
            done = os.path.dirname(done)
            continue
        candidate = os.path.join(done, part)
        real = os.path.join(root, candidate.lstrip("/"))
        if os.path.islink(real):
            links += 1
            if links > 40:  # the kernel's MAXSYMLINKS
                return None
            target = os.readlink(real)
            if target.startswith("/"):
                done = "/"
            queue = [p for p in target.split("/") if p] + queue
        else:
            done = candidate
    return done


def plan(host: Host, watched: dict[str, tuple[str, ...]]) -> dict[str, dict[str, set[str]]]:
    """{directory (host path): {entry name: collectors}}: the directory of each watched
    file and of every link in its chain, so that replacing the link, or the file it
    points to, is seen.  Where a directory does not exist (yet: ``/run/systemd/resolve``
    before systemd-resolved starts), its nearest existing ancestor is watched for the
    first missing component instead."""
    out: dict[str, dict[str, set[str]]] = {}
    for collector, paths in watched.items():
        for path in paths:
            current = path
            for _ in range(MAX_LINKS):
                parent = resolve(host.root, os.path.dirname(current))
                if parent is None:
                    break
                name = os.path.basename(current)
                while parent != "/" and not os.path.isdir(host.path(parent)):
                    parent, name = os.path.dirname(parent), os.path.basename(parent)
                directory = host.path(parent)
                if not os.path.isdir(directory):
                    break
                out.setdefault(directory, {}).setdefault(name, set()).add(collector)
                entry = os.path.join(directory, name)
                if not os.path.islink(entry):
                    break
                target = os.readlink(entry)
                current = target if target.startswith("/") else os.path.join(parent, target)
    return out


def _libc() -> Any:
    # The symbols already loaded (libc among them): ctypes.util.find_library would run
    # `ldconfig -p` in a child process and import subprocess, for nothing.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


class FileWatch:
    """Tells the daemon's poll loop which collectors' files changed.

    ``start()`` -> False when this OS offers no usable mechanism (the daemon then keeps
    its sweep); ``fds()`` -> (fd, poll mask) pairs to add to its poll(); ``handle(fd)``
    after poll reported ``fd`` -> the collectors to re-run (``"os"``, ``"names"``);
    ``close()`` releases every descriptor."""

    def __init__(self, host: Host, os_name: str) -> None:
        self.host = host
        self.os_name = os_name
        self.watched = WATCHED.get(os_name, {})
        self._inotify: int | None = None
        self._libc: Any = None
        self._wds: dict[int, str] = {}
        self._plan: dict[str, dict[str, set[str]]] = {}
        self._hostname: int | None = None
        self._kqueue: Any = None
        self._vnodes: dict[int, tuple[str, set[str]]] = {}  # FreeBSD: fd -> (path, collectors)
        self._signatures: dict[str, tuple[int, ...] | None] = {}

    # --- the interface the daemon uses ------------------------------------------------------

    def start(self) -> bool:
        if not self.watched:
            return False
        try:
            if self.os_name == "linux":
                self._start_linux()
            else:
                self._start_freebsd()
        except (OSError, AttributeError) as exc:  # no inotify/kqueue, no libc symbol
            log.info("file change events unavailable (%s): the sweep covers them", exc)
            self.close()
            return False
        return True

    def fds(self) -> list[tuple[int, int]]:
        out = []
        if self._inotify is not None:
            out.append((self._inotify, select.POLLIN))
        if self._hostname is not None:
            out.append((self._hostname, select.POLLPRI))
        if self._kqueue is not None:
            out.append((self._kqueue.fileno(), select.POLLIN))
        return out

    def handle(self, fd: int) -> frozenset[str]:
        if fd == self._hostname:
            return frozenset({"names"})
        if fd == self._inotify:
            return self._drain_inotify()
        if self._kqueue is not None and fd == self._kqueue.fileno():
            return self._drain_kqueue()
        return frozenset()

    def close(self) -> None:
        for fd in (self._inotify, self._hostname, *self._vnodes):
            if fd is not None:
                os.close(fd)
        if self._kqueue is not None:
            self._kqueue.close()
        self._inotify = self._hostname = self._kqueue = None
        self._wds, self._vnodes = {}, {}

    # --- Linux ------------------------------------------------------------------------------

    def _start_linux(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1: " + os.strerror(ctypes.get_errno()))
        self._inotify = fd
        self._arm_linux()
        try:
            self._hostname = os.open(self.host.path(HOSTNAME), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.info("%s cannot be watched (%s): host name changes wait for the sweep", HOSTNAME, exc)

    def _arm_linux(self) -> None:
        """(Re)compute the directories to watch and bring the kernel's set in line."""
        assert self._inotify is not None
        self._plan = plan(self.host, self.watched)
        wanted = set(self._plan)
        for wd, directory in list(self._wds.items()):
            if directory not in wanted:
                self._libc.inotify_rm_watch(self._inotify, wd)
                del self._wds[wd]
        present = set(self._wds.values())
        for directory in sorted(wanted - present):
            wd = self._libc.inotify_add_watch(self._inotify, os.fsencode(directory), DIRECTORY_MASK)
            if wd < 0:
                log.debug("cannot watch %s: %s", directory, os.strerror(ctypes.get_errno()))
                continue
            self._wds[wd] = directory

    def _drain_inotify(self) -> frozenset[str]:
        assert self._inotify is not None
        changed: set[str] = set()
        rearm = False
        while True:
            try:
                data = os.read(self._inotify, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
            if not data:
                break
            offset = 0
            while offset + EVENT.size <= len(data):
                wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
                raw = data[offset + EVENT.size: offset + EVENT.size + length]
                offset += EVENT.size + length
                name = os.fsdecode(raw.split(b"\0", 1)[0])
                if mask & IN_Q_OVERFLOW:  # events were lost: assume everything changed
                    changed.update(self.watched)
                    rearm = True
                    continue
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    # the directory itself went away or moved: what it held is gone
                    entries = self._plan.get(self._wds.get(wd, ""), {})
                    changed.update(c for names in entries.values() for c in names)
                    if mask & IN_IGNORED:
                        self._wds.pop(wd, None)
                    rearm = True
                    continue
                collectors = self._plan.get(self._wds.get(wd, ""), {}).get(name)
                if collectors:
                    changed.update(collectors)
                    rearm = True  # a link may now point elsewhere
        if rearm:
            self._arm_linux()
        return frozenset(changed)

    # --- FreeBSD ----------------------------------------------------------------------------

    def _start_freebsd(self) -> None:
        self._kqueue = select.kqueue()  # type: ignore[attr-defined]  # AttributeError off BSD
        self._arm_freebsd()

    def _arm_freebsd(self) -> None:
        """Watch every planned directory and every existing planned entry (descriptors
        are reopened each time: a replaced file is a new vnode)."""
        for fd in self._vnodes:
            os.close(fd)  # closing a descriptor removes its kevents
        self._vnodes = {}
        self._plan = plan(self.host, self.watched)
        changes = []
        for directory, entries in self._plan.items():
            everyone = {c for names in entries.values() for c in names}
            targets = [(directory, everyone)] + [(os.path.join(directory, n), c) for n, c in entries.items()]
            for path, collectors in targets:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                except OSError:
                    continue
                self._vnodes[fd] = (path, collectors)
                changes.append(select.kevent(  # type: ignore[attr-defined]
                    fd, filter=select.KQ_FILTER_VNODE,  # type: ignore[attr-defined]
                    flags=select.KQ_EV_ADD | select.KQ_EV_CLEAR,  # type: ignore[attr-defined]
                    fflags=FREEBSD_NOTES))
        self._signatures = signatures(self._plan)
        if changes:
            self._kqueue.control(changes, 0, 0)

    def _drain_kqueue(self) -> frozenset[str]:
        events = self._kqueue.control(None, 64, 0)
        if not events:
            return frozenset()
        before = self._signatures
        self._arm_freebsd()
        return changed_collectors(before, self._signatures, self._plan)


# sys/event.h: NOTE_DELETE 0x1, NOTE_WRITE 0x2, NOTE_EXTEND 0x4, NOTE_ATTRIB 0x8, NOTE_RENAME 0x20
FREEBSD_NOTES = 0x1 | 0x2 | 0x4 | 0x8 | 0x20


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def signatures(planned: dict[str, dict[str, set[str]]]) -> dict[str, tuple[int, ...] | None]:
    """Each planned entry's identity and content stamp (followed through links)."""
    return {os.path.join(d, n): _signature(os.path.join(d, n)) for d, names in planned.items()
            for n in names}


def changed_collectors(before: dict[str, tuple[int, ...] | None],
                       after: dict[str, tuple[int, ...] | None],
                       planned: dict[str, dict[str, set[str]]]) -> frozenset[str]:
    """The collectors whose entries appeared, vanished or changed between two snapshots
    (a kqueue directory event does not name the entry)."""
    out: set[str] = set()
    for directory, names in planned.items():
        for name, collectors in names.items():
            path = os.path.join(directory, name)
            if before.get(path) != after.get(path):
                out.update(collectors)
    return frozenset(out)

