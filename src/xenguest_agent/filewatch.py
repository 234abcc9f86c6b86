"""Event-driven notice that the host name, the OS release files or resolv.conf changed.

With network events on, the daemon otherwise learns of these only at its safety sweep
(minutes).  This module tells it within the poll loop's next wake-up, with no polling
and no XenStore traffic.  resolv.conf and os-release are usually replaced by rename
(resolvconf, NetworkManager, systemd-resolved, package managers) and are often symlinks
(``/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf``), so a watch on the file
itself would die with the old inode: the *directory* of each link in the chain is
watched, and the chain is re-resolved after every change.

* Linux: dnotify, ``fcntl(dirfd, F_NOTIFY, ...)`` on each directory.  Not inotify(7):
  Python reaches inotify only through ctypes, and ctypes with libffi is a large share
  of the idle daemon's memory (docs/performance.md), while dnotify needs only the fcntl
  module.  From the kernel (fs/notify/dnotify/dnotify.c, Documentation/filesystems/
  dnotify.rst):

  - ``convert_arg``: DN_MODIFY is a write or truncate of an entry, DN_ATTRIB its
    chmod/chown/utimes, DN_CREATE a creation *or a rename into* the directory (how
    resolv.conf and os-release are replaced, and how a link is repointed), DN_DELETE an
    unlink or a rename out, DN_RENAME a rename inside it.  DN_MULTISHOT keeps the
    registration after the first event (``dnotify_handle_event`` frees it otherwise).
  - An event is a signal, nothing more: ``fcntl_dirnotify`` makes the calling process
    (its thread group, ``__f_setown`` with PIDTYPE_TGID) the owner, and
    ``send_sigio_to_task`` (fs/fcntl.c) sends it plain SIGIO, whose default action
    ends the process (signal(7)).  So our handler is installed before any directory is
    armed and only writes a byte to a self-pipe that the poll loop watches; where the
    kernel picks another thread, the daemon's ``signal.set_wakeup_fd`` wakes poll() and
    the handler runs before the next poll().  Neither says which entry changed: the
    entries' stat signatures are compared (as on FreeBSD), so a change elsewhere in
    the directory costs a few stat(2) calls and reports nothing.
  - Closing the descriptor ends the registration (``filp_flush`` in fs/open.c calls
    ``dnotify_flush``); :meth:`FileWatch.close` then restores the previous SIGIO
    handler.
  - F_NOTIFY fails with EINVAL on a kernel without CONFIG_DNOTIFY
    (include/linux/dnotify.h) or with ``fs.dir-notify-enable`` at 0: the sweep covers
    the files then.  Events come from this kernel's VFS, so a change made by another
    machine on a network filesystem is not seen either.  Only a directory's entries
    report: a watched directory renamed away whole is left to the sweep (one removed
    reports its entries' unlinking, and one made again at its path is reopened).
  - signal.signal works only in the main thread: elsewhere the directories are not
    watched (logged), and the host name still is.

  ``/proc/sys/kernel/hostname`` supports poll(2): sethostname(2) calls
  ``uts_proc_notify`` (kernel/utsname_sysctl.c), which bumps the sysctl's poll event,
  and ``proc_sys_poll`` (fs/proc/proc_sysctl.c) then reports POLLERR|POLLPRI once per
  change to every open file (POLLIN is always set, so only POLLPRI is asked for).  The
  event is shared by all UTS namespaces: a container's sethostname wakes us too, and
  costs one re-read of the names.
* FreeBSD: kqueue(2) ``EVFILT_VNODE`` on the directories (``NOTE_WRITE``: an entry was
  added, removed or renamed) and on the files themselves (written, attributes, deleted,
  renamed).  A directory event does not say which entry changed, so the files' stat
  signatures are compared.  FreeBSD has no event for ``kern.hostname``: the sweep keeps
  covering it there.

A signature is (device, inode, size, mtime, ctime): a rewrite in place that keeps the
size within one timestamp tick of the previous look is left to the sweep.  Every path
goes through :class:`~xenguest_agent.host.Host`, so tests point the watch at a temporary
tree; symlinks are resolved inside that root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal

from xenguest_agent.host import Host
from xenguest_agent.log import get_logger
from xenguest_agent.wakeup import Wakeup

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

# include/uapi/linux/fcntl.h (the fcntl module has them on Linux only; this module is
# imported on FreeBSD too)
F_NOTIFY = 1024 + 2  # F_LINUX_SPECIFIC_BASE + 2
DN_MODIFY, DN_CREATE, DN_DELETE, DN_RENAME, DN_ATTRIB = 0x2, 0x4, 0x8, 0x10, 0x20
DN_MULTISHOT = 0x80000000
DN_EVENTS = DN_MODIFY | DN_CREATE | DN_DELETE | DN_RENAME | DN_ATTRIB | DN_MULTISHOT


def _readlink(path: str) -> str | None:
    """The link's target, or None when ``path`` is not a link, or stopped being one: a
    link replaced between two looks (resolvconf and package managers do that) is seen by
    the change event it causes, and the next plan follows the new one."""
    try:
        return os.readlink(path)
    except OSError:  # EINVAL: not a link; ENOENT: gone
        return None


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
        target = _readlink(real)
        if target is not None:
            links += 1
            if links > 40:  # the kernel's MAXSYMLINKS
                return None
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
                target = _readlink(os.path.join(directory, name))
                if target is None:
                    break
                current = target if target.startswith("/") else os.path.join(parent, target)
    return out


class FileWatch:
    """Tells the daemon's poll loop which collectors' files changed.

    ``start()`` -> False when this OS offers no usable mechanism (the daemon then keeps
    its sweep); ``fds()`` -> (fd, poll mask) pairs to add to its poll(); ``handle(fd)``
    after poll reported ``fd`` -> the collectors to re-run (``"os"``, ``"names"``);
    ``close()`` releases every descriptor (and, on Linux, gives SIGIO back)."""

    def __init__(self, host: Host, os_name: str) -> None:
        self.host = host
        self.os_name = os_name
        self.watched = WATCHED.get(os_name, {})
        self._sigio: Wakeup | None = None  # Linux: the self-pipe the SIGIO handler writes
        self._previous: Any = None  # Linux: SIGIO's handler before start()
        self._dirs: dict[str, tuple[int, int, int]] = {}  # Linux: directory -> (fd, dev, ino)
        self._plan: dict[str, dict[str, set[str]]] = {}
        self._hostname: int | None = None
        self._kqueue: Any = None
        self._vnodes: dict[int, tuple[str, set[str]]] = {}  # FreeBSD: fd -> (path, collectors)
        self._signatures: dict[str, tuple[int, ...] | None] = {}

    # --- the interface the daemon uses ------------------------------------------------------

    def start(self) -> bool:
        if not self.watched:
            return False
        if self.os_name == "linux":
            return self._start_linux()
        try:
            self._start_freebsd()
        except (OSError, AttributeError) as exc:  # no kqueue
            log.info("file change events unavailable (%s): the sweep covers them", exc)
            self.close()
            return False
        return True

    def fds(self) -> list[tuple[int, int]]:
        out = []
        if self._sigio is not None:
            out.append((self._sigio.read_fd, select.POLLIN))
        if self._hostname is not None:
            out.append((self._hostname, select.POLLPRI))
        if self._kqueue is not None:
            out.append((self._kqueue.fileno(), select.POLLIN))
        return out

    def handle(self, fd: int) -> frozenset[str]:
        if fd == self._hostname:
            return frozenset({"names"})
        if self._sigio is not None and fd == self._sigio.read_fd:
            return self._drain_dnotify()
        if self._kqueue is not None and fd == self._kqueue.fileno():
            return self._drain_kqueue()
        return frozenset()

    def close(self) -> None:
        self._stop_dnotify()
        for fd in (self._hostname, *self._vnodes):
            if fd is not None:
                os.close(fd)
        if self._kqueue is not None:
            self._kqueue.close()
        self._hostname = self._kqueue = None
        self._vnodes = {}

    # --- Linux ------------------------------------------------------------------------------

    def _start_linux(self) -> bool:
        try:
            self._hostname = os.open(self.host.path(HOSTNAME), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.info("%s cannot be watched (%s): host name changes wait for the sweep", HOSTNAME, exc)
        try:
            self._sigio = Wakeup()
            # before any directory is armed: SIGIO's default action ends the process
            self._previous = signal.signal(signal.SIGIO, self._on_sigio)
            self._arm_linux()
        except (OSError, ValueError) as exc:  # ValueError: not the main thread
            log.info("directory change events unavailable (%s): the sweep covers os-release "
                     "and resolv.conf", exc)
            self._stop_dnotify()
        return self._sigio is not None or self._hostname is not None

    def _on_sigio(self, signum: int, frame: Any) -> None:
        """The SIGIO handler: a byte in the pipe (a full pipe drops it: one pending byte is
        enough), and whoever handled SIGIO before hears it too."""
        if self._sigio is not None:
            self._sigio.wake()
        if callable(self._previous):
            self._previous(signum, frame)

    def _arm_linux(self) -> None:
        """(Re)plan and bring the armed directories in line: one no longer planned, or
        replaced by another at its path, is closed (which ends its registration); a new
        one is opened and armed.  The signatures are taken last, so that any change after
        them raises a signal."""
        self._plan = plan(self.host, self.watched)
        for directory, (fd, dev, ino) in list(self._dirs.items()):
            try:
                info = os.stat(directory)
                same = (info.st_dev, info.st_ino) == (dev, ino)
            except OSError:
                same = False
            if directory not in self._plan or not same:
                os.close(fd)
                del self._dirs[directory]
        for directory in sorted(set(self._plan) - set(self._dirs)):
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                log.debug("cannot watch %s: %s", directory, exc)
                continue
            try:
                fcntl.fcntl(fd, F_NOTIFY, DN_EVENTS)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EINVAL:  # dnotify is off: no directory can be watched
                    raise
                log.debug("cannot watch %s: %s", directory, exc)
                continue
            info = os.fstat(fd)
            self._dirs[directory] = (fd, info.st_dev, info.st_ino)
        self._signatures = signatures(self._plan)

    def _drain_dnotify(self) -> frozenset[str]:
        """Empty the pipe first (a signal after this is a new byte, a new wake-up), then
        compare what changed, through the old plan and the new one."""
        assert self._sigio is not None
        self._sigio.drain()
        before, before_plan = self._signatures, self._plan
        self._arm_linux()
        return (changed_collectors(before, self._signatures, before_plan)
                | changed_collectors(before, self._signatures, self._plan))

    def _stop_dnotify(self) -> None:
        for fd, _dev, _ino in self._dirs.values():
            os.close(fd)  # no SIGIO is sent for it from here on
        self._dirs = {}
        if self._sigio is None:
            return
        if signal.getsignal(signal.SIGIO) == self._on_sigio:
            # One sent before the descriptors closed may still be pending: taken here,
            # while SIGIO is blocked, rather than by a default action that ends us.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
            try:
                while signal.SIGIO in signal.sigpending():
                    signal.sigtimedwait({signal.SIGIO}, 0)
                    if callable(self._previous):
                        self._previous(signal.SIGIO, None)
                previous = self._previous if self._previous is not None else signal.SIG_DFL
                signal.signal(signal.SIGIO, previous)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._sigio.close()
        self._sigio = None
        self._previous = None

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

