"""sysctlbyname(3) through ctypes (src/xenguest_agent/backends/freebsd_sysctl.py).

The real function exists only in FreeBSD's libc (lib/libc/gen/sysctlbyname.c); here a stand-in
with the same C signature plays the kernel: asked with ``oldp`` NULL it stores the size in
``*oldlenp``, asked with a buffer it copies the value, and a name it does not have fails with
ENOENT (sys/kern/kern_sysctl.c ``sysctl_root`` -> ``sysctl_find_oid``). The values are packed in
the C types the kernel declares (u_long hw.physmem in kern_mib.c, int hw.pagesize, u_int page
counts in vm_meter.c, uint64_t ZFS kstats, u_long dev.xen.balloon.* in balloon.c).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import struct
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from xenguest_agent.backends.freebsd import (
    MEMORY_SYSCTLS,
    SYSCTL,
    FreeBSDBackend,
    parse_sysctl,
)
from xenguest_agent.backends.freebsd_sysctl import (
    MAX_VALUE_SIZE,
    SysctlByName,
    SysctlError,
    decode_number,
    libc_sysctlbyname,
    read_numbers,
)
from xenguest_agent.fixture import FixtureRunner
from xenguest_agent.host import Host

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "freebsd"
TREES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())

#: The C type of each memory sysctl on amd64: "Q" u_long/uint64_t, "I" u_int, "i" int.
C_TYPES = {"hw.physmem": "Q", "hw.pagesize": "i", "vm.stats.vm.v_free_count": "I",
           "vm.stats.vm.v_inactive_count": "I", "vm.stats.vm.v_cache_count": "I",
           "kstat.zfs.misc.arcstats.size": "Q", "kstat.zfs.misc.arcstats.c_min": "Q",
           "dev.xen.balloon.low_mem": "Q", "dev.xen.balloon.high_mem": "Q"}


class Kernel:
    """A stand-in for libc's sysctlbyname with C semantics (ctypes arguments)."""

    def __init__(self, values: Dict[str, bytes], fail: Optional[int] = None) -> None:
        self.values = values
        self.fail = fail
        self.calls: List[str] = []

    def __call__(self, name: bytes, oldp, oldlenp, newp, newlen: int) -> int:
        key = name.decode()
        self.calls.append(key)
        assert newp is None and newlen == 0  # read only
        if self.fail is not None or key not in self.values:
            ctypes.set_errno(self.fail if self.fail is not None else errno.ENOENT)
            return -1
        value = self.values[key]
        if oldp is None:
            oldlenp.contents.value = len(value)
            return 0
        if oldlenp.contents.value < len(value):
            ctypes.set_errno(errno.ENOMEM)
            return -1
        ctypes.memmove(oldp, value, len(value))
        oldlenp.contents.value = len(value)
        return 0


def packed(values: Dict[str, str]) -> Dict[str, bytes]:
    return {k: struct.pack("=" + C_TYPES[k], int(v)) for k, v in values.items() if k in C_TYPES}


def test_decode_number_by_length() -> None:
    assert decode_number("a", struct.pack("=I", 4096)) == 4096
    assert decode_number("a", struct.pack("=Q", 8535236608)) == 8535236608
    with pytest.raises(SysctlError, match="3 bytes"):
        decode_number("a", b"\x01\x02\x03")


def test_two_calls_size_then_value_and_enoent_is_absent() -> None:
    kernel = Kernel({"hw.physmem": struct.pack("=Q", 4270436352)})
    read = SysctlByName(kernel)
    assert read("hw.physmem") == struct.pack("=Q", 4270436352)
    assert kernel.calls == ["hw.physmem", "hw.physmem"]
    assert read("kstat.zfs.misc.arcstats.size") is None  # no ZFS: ENOENT, not an error


def test_other_errors_and_oversized_values_raise() -> None:
    with pytest.raises(SysctlError) as failed:
        SysctlByName(Kernel({"hw.physmem": b"\0" * 8}, fail=errno.EPERM))("hw.physmem")
    assert failed.value.errno == errno.EPERM
    with pytest.raises(SysctlError) as big:
        SysctlByName(Kernel({"kern.version": b"x" * (MAX_VALUE_SIZE + 1)}))("kern.version")
    assert big.value.errno == errno.E2BIG


def test_read_numbers_skips_what_the_kernel_lacks() -> None:
    kernel = Kernel(packed({"hw.physmem": "2112618496", "hw.pagesize": "4096"}))
    assert read_numbers(MEMORY_SYSCTLS, SysctlByName(kernel)) == {
        "hw.physmem": "2112618496", "hw.pagesize": "4096"}


def test_no_sysctlbyname_outside_freebsd() -> None:
    assert libc_sysctlbyname("linux") is None
    # glibc has no sysctlbyname: even told it is FreeBSD, the lookup finds nothing
    assert libc_sysctlbyname("freebsd14") is None


class FakeLibrary:
    """ctypes.CDLL as seen by libc_sysctlbyname: the main program (None) or a path."""
    opened: List[Optional[str]] = []
    exports: Dict[Optional[str], bool] = {}

    def __init__(self, path: Optional[str], use_errno: bool = False) -> None:
        assert use_errno  # errno is read after a failed call: ctypes must keep it
        FakeLibrary.opened.append(path)
        if FakeLibrary.exports.get(path):
            self.sysctlbyname = lambda *args: 0


@pytest.mark.parametrize("exports, found, opened", [
    ({None: True}, True, [None]),                             # the main program's libc
    ({None: False, "/lib/libc.so.7": True}, True, [None, "/lib/libc.so.7"]),
    ({None: False, "/lib/libc.so.7": False}, False, [None, "/lib/libc.so.7"]),
])
def test_sysctlbyname_from_the_main_program_before_find_library(
        monkeypatch: pytest.MonkeyPatch, exports: Dict[Optional[str], bool], found: bool,
        opened: List[Optional[str]]) -> None:
    """dlopen(NULL) reaches libc on FreeBSD (rtld-elf do_dlsym searches list_main for the main
    program's handle), so find_library, which runs `ldconfig -r` in a child, is the
    fallback only."""
    FakeLibrary.opened, FakeLibrary.exports = [], exports
    looked_up: List[str] = []
    monkeypatch.setattr(ctypes, "CDLL", FakeLibrary)
    monkeypatch.setattr(ctypes.util, "find_library",
                        lambda name: looked_up.append(name) or "/lib/libc.so.7")
    result = libc_sysctlbyname("freebsd14")
    assert (result is not None) == found
    assert FakeLibrary.opened == opened
    assert looked_up == ([] if opened == [None] else ["c"])


@pytest.mark.parametrize("tree", TREES)
def test_memory_through_sysctlbyname_equals_the_sysctl_command_and_forks_nothing(
        tree: str) -> None:
    root = str(FIXTURES / tree)
    via_command = FreeBSDBackend(Host(root, FixtureRunner(root)))
    assert via_command.sysctlbyname is None  # a fixture root keeps the runner path
    expected = via_command.memory()
    captured = parse_sysctl((FIXTURES / tree / "_commands" / "sysctl.out").read_text())
    runner = FixtureRunner(root)
    kernel = Kernel(packed(captured))
    in_process = FreeBSDBackend(Host(root, runner), sysctlbyname=SysctlByName(kernel))
    assert in_process.memory() == expected
    assert [argv for argv in runner.calls if argv[0] == SYSCTL] == []
    assert set(kernel.calls) == set(MEMORY_SYSCTLS)
