"""Only what root put there: the checks behind every hook and state file the agent trusts.

A file the agent runs as root (a hook) or believes (its state under /run) must be one that only
root could have put there: owned by root and not writable by group or others, and so must every
directory above it, from ``/`` down.  The chain is walked with one descriptor per component, each
opened relative to its parent with ``O_NOFOLLOW``, so a component swapped for a symlink is never
followed; the file is opened the same way and checked with ``fstat`` on that descriptor, the one
that is then used (executed, read).

"Owned by root" means uid 0 or the agent's own effective uid: a file owned by the user the agent
runs as grants that user nothing it does not already have (sshd's StrictModes rule); run as root,
which the daemon is, only uid 0 is accepted.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Set

#: Where a process can name one of its own descriptors as a path that execve(2)
#: accepts (the child inherits the descriptor under the same number).  Linux:
#: procfs.  FreeBSD: fdescfs mounted on /dev/fd with ``nodup``; only then does a
#: lookup of /dev/fd/N give the file's own vnode (sys/fs/fdescfs/fdesc_vnops.c,
#: fdesc_get_ino_alloc with FMNT_NODUP); otherwise it is a synthetic character
#: device (fdesc_getattr) that stat(2) cannot match and execve(2) refuses, and
#: without fdescfs /dev/fd holds only 0, 1 and 2.
FD_DIRS = ("/proc/self/fd", "/dev/fd")


class UntrustedError(Exception):
    """A directory or hook that someone other than root could have changed."""


def _owners() -> Set[int]:
    return {0, os.geteuid()}


def require_trusted(info: os.stat_result, what: str) -> None:
    """Owned by root (or the agent's own uid) and not writable by group or others."""
    if info.st_uid not in _owners():
        raise UntrustedError(f"{what} is owned by uid {info.st_uid}, not root")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedError(f"{what} is writable by group or others "
                             f"(mode {stat.S_IMODE(info.st_mode):04o})")


def open_trusted_directory(path: str) -> int:
    """A descriptor of ``path`` after checking every component from ``/`` down."""
    if not os.path.isabs(path):
        raise UntrustedError(f"{path} is not an absolute path")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open("/", flags)
    shown = "/"
    try:
        require_trusted(os.fstat(fd), "/")
        for part in [p for p in path.split("/") if p]:
            if part in (".", ".."):
                raise UntrustedError(f"{path}: '{part}' is not allowed in the hook directory")
            shown = os.path.join(shown, part)
            try:
                child = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                if os.path.islink(shown):  # ELOOP on Linux, EMLINK on FreeBSD
                    raise UntrustedError(f"{shown} is a symlink") from None
                raise
            os.close(fd)
            fd = child
            require_trusted(os.fstat(fd), shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_trusted_hook(directory_fd: int, name: str, shown: str) -> int:
    """A descriptor of the hook ``name`` in the checked directory, checked itself."""
    try:
        # O_NONBLOCK: a FIFO planted here must not block the open
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=directory_fd)
    except OSError as exc:
        try:
            if stat.S_ISLNK(os.lstat(name, dir_fd=directory_fd).st_mode):
                raise UntrustedError(f"{shown} is a symlink") from None
        except FileNotFoundError:
            pass
        raise UntrustedError(f"{shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedError(f"{shown} is not a regular file")
        if not info.st_mode & stat.S_IXUSR:
            raise UntrustedError(f"{shown} is not executable")
        require_trusted(info, shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fd_executable(fd: int) -> Optional[str]:
    """A path naming descriptor ``fd`` itself, or None when this system has none."""
    mine = os.fstat(fd)
    for base in FD_DIRS:
        try:
            seen = os.stat(f"{base}/{fd}")
        except OSError:
            continue
        if (seen.st_dev, seen.st_ino) == (mine.st_dev, mine.st_ino):
            return f"{base}/{fd}"
    return None
