"""Numeric sysctls read in-process with sysctlbyname(3), so the memory tick forks nothing.

FreeBSD's libc exports ``int sysctlbyname(const char *name, void *oldp, size_t *oldlenp,
const void *newp, size_t newlen)`` (lib/libc/gen/sysctlbyname.c).  Called with ``oldp`` NULL
it stores the value's size in ``*oldlenp``; called again with a buffer that large it copies
the value and stores the length copied.  A name the kernel does not have fails with ENOENT
(``kstat.zfs...`` without ZFS, ``dev.xen.balloon...`` without the balloon driver).

The values the backend reads this way are plain integers in the machine's byte order, of
the C type the kernel declares: ``hw.physmem`` an ``unsigned long`` (sys/kern/kern_mib.c,
CTLTYPE_ULONG), ``hw.pagesize`` an ``int``, the ``vm.stats.vm.v_*_count`` page counts
``u_int`` (sys/vm/vm_meter.c), the ZFS kstats ``uint64_t``, ``dev.xen.balloon.low_mem`` /
``high_mem`` ``unsigned long`` (sys/dev/xen/balloon/balloon.c, SYSCTL_ULONG).  So the length
says how to decode: 4 or 8 bytes.

Only :func:`libc_sysctlbyname` touches ctypes and it can only run on FreeBSD; the calling
protocol (:class:`SysctlByName`) and the decoding are pure and tested on any OS with a
stand-in for the C function.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, Optional
    CFunction = Callable[..., int]
    SysctlRead = Callable[[str], Optional[bytes]]

#: ``(name, oldp, oldlenp, newp, newlen) -> int``, with C calling conventions (ctypes types).
#: ``name -> raw bytes``, or None when the kernel has no such name.

_DECODERS = {4: struct.Struct("=I"), 8: struct.Struct("=Q")}

#: A value larger than this is not one of the numbers read here: refuse it instead of
#: allocating whatever the kernel claims.
MAX_VALUE_SIZE = 64


class SysctlError(OSError):
    """sysctlbyname(3) failed for a reason other than a missing name."""


def decode_number(name: str, raw: bytes) -> int:
    """A 4- or 8-byte native unsigned integer (u_int, int >= 0, u_long, uint64_t)."""
    decoder = _DECODERS.get(len(raw))
    if decoder is None:
        raise SysctlError(errno.EINVAL,
                          f"sysctl {name}: {len(raw)} bytes is not a 4- or 8-byte number")
    return int(decoder.unpack(raw)[0])


class SysctlByName:
    """The two-call protocol of sysctlbyname(3) around a C function (or a stand-in)."""

    def __init__(self, function: CFunction) -> None:
        self.function = function

    def __call__(self, name: str) -> Optional[bytes]:
        encoded = name.encode("ascii")
        size = ctypes.c_size_t(0)
        if self.function(encoded, None, ctypes.pointer(size), None, 0) != 0:
            return self._failed(name)
        if size.value > MAX_VALUE_SIZE:
            raise SysctlError(errno.E2BIG, f"sysctl {name}: {size.value} bytes")
        buffer = ctypes.create_string_buffer(max(size.value, 1))
        if self.function(encoded, buffer, ctypes.pointer(size), None, 0) != 0:
            return self._failed(name)
        return buffer.raw[:size.value]

    @staticmethod
    def _failed(name: str) -> Optional[bytes]:
        code = ctypes.get_errno()
        if code == errno.ENOENT:
            return None
        raise SysctlError(code, f"sysctlbyname({name}): {os.strerror(code)}")


def libc_sysctlbyname(platform: str = sys.platform) -> Optional[SysctlByName]:
    """sysctlbyname(3) from FreeBSD's libc; None elsewhere (glibc has no such function), so
    the caller keeps the ``sysctl`` command."""
    if not platform.startswith("freebsd"):
        return None
    # dlopen(NULL) is the main program, and rtld-elf's dlsym searches it and every library it
    # loaded at start-up, libc among them (libexec/rtld-elf/rtld.c, do_dlsym: obj->mainprog,
    # list_main).  Only if that fails, ctypes.util.find_library: it runs `ldconfig -r` in a
    # child and imports subprocess and shutil.
    function = getattr(ctypes.CDLL(None, use_errno=True), "sysctlbyname", None)
    if function is None:
        from ctypes.util import find_library

        path = find_library("c")
        if path is None:
            return None
        function = getattr(ctypes.CDLL(path, use_errno=True), "sysctlbyname", None)
        if function is None:
            return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                         ctypes.c_void_p, ctypes.c_size_t]
    function.restype = ctypes.c_int
    return SysctlByName(function)


def read_numbers(names: Iterable[str], read: SysctlRead) -> Dict[str, str]:
    """{name: decimal text} for each name the kernel has, as ``sysctl -i`` would print it
    (names it lacks are skipped), so the same parsers serve both paths."""
    values: Dict[str, str] = {}
    for name in names:
        raw = read(name)
        if raw is not None:
            values[name] = str(decode_number(name, raw))
    return values
