"""FreeBSD backend: one ``sysctl`` and one ``ifconfig`` per round, through the host's runner.

FreeBSD describes itself through sysctl(3) MIBs rather than files, so this backend
asks ``/sbin/sysctl -i`` for every name it needs in one command (``-i``: names this
kernel does not have are skipped silently, sbin/sysctl/sysctl.c ``parse``), keeps
that snapshot for the few milliseconds a collection round lasts, and parses it
with pure functions.  ``ifconfig -a`` is the one source of how interfaces are
stacked (lagg ports, vlan parents, bridge members): no sysctl exposes that
(freebsd_ifconfig.py).  The memory tick, every few seconds, reads its few numbers
in-process with sysctlbyname(3) on a live FreeBSD instead (freebsd_sysctl.py).  Every
command goes through :attr:`Host.run`, so the tests replay FreeBSD 13 and 14 trees on
Linux (tests/fixtures/freebsd/, modelled from the sources until real captures are
contributed; :mod:`xenguest_agent.fixture`).

Facts, each checked against freebsd/freebsd-src:

- XenStore is the character device ``/dev/xen/xenstore``, made by
  ``xs_dev_attach`` (sys/dev/xen/xenstore/xenstore_dev.c, ``make_dev_credf(...,
  "xen/xenstore")``); FreeBSD has no ``/dev/xen/xenbus``.
- Every xenbus front-end device carries ``dev.<driver>.<unit>.xenstore_path``, its
  XenStore node (``xenbusb_device_sysctl_init`` in sys/xen/xenbus/xenbusb.c), which
  for a NIC is ``device/vif/<id>`` (``xenbusb_front_enumerate_type`` in
  sys/xen/xenbus/xenbusb_front.c builds it from ``device/<type>/<id>``).  The
  netfront driver is named ``xn`` and names its ifnet ``xn<unit>``
  (sys/dev/xen/netfront/netfront.c, ``netfront_driver`` and ``if_initname``);
  units are handed out by newbus, so ``xn1`` is not necessarily VIF 1.
- The balloon driver is the ``xenballoon`` device on the xenstore bus
  (sys/dev/xen/balloon/balloon.c); newbus gives every attached device the
  ``dev.<driver>.<unit>.%driver`` sysctl (sys/kern/subr_bus.c ``device_sysctl_init``).
- The kernel performs ``control/shutdown`` requests itself
  (sys/dev/xen/control/control.c ``xctrl_on_watch_event``): it reads the value,
  acknowledges it by writing "" *before* looking it up (so an unknown value is
  acknowledged too, and then ignored), and runs the handler of
  ``xctrl_shutdown_reasons``: "poweroff" and "halt" both ``xctrl_poweroff``
  (``shutdown_nice(RB_POWEROFF|RB_HALT)``), "reboot", "suspend" (``xctrl_suspend``
  stops every user process with ``stop_all_proc`` and resumes them afterwards: no
  freeze timeout to tune) and "crash" (a panic).  It writes no
  ``control/feature-*`` key, so the agent advertises them (control.py).
"""

from __future__ import annotations

import re
import time

from xenguest_agent.backends.addresses import AddressSource, PsutilAddresses
from xenguest_agent.backends.base import (
    host_names_from,
    os_info_from_release,
    parse_os_release,
    split_version,
)
from xenguest_agent.backends.freebsd_ifconfig import build_interfaces, parse_ifconfig
from xenguest_agent.backends.freebsd_sysctl import (
    libc_sysctlbyname,
    read_numbers,
)
from xenguest_agent.facts import Capabilities, HostNames, Interface, Memory, OsInfo
from xenguest_agent.host import CommandResult, Host
from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Mapping, Optional, Tuple

    from xenguest_agent.backends.freebsd_sysctl import SysctlRead

log = get_logger(__name__)

#: sys/dev/xen/xenstore/xenstore_dev.c: make_dev_credf(..., "xen/xenstore")
DEFAULT_XENSTORE = "/dev/xen/xenstore"

SYSCTL = "/sbin/sysctl"
IFCONFIG = "/sbin/ifconfig"
FREEBSD_VERSION = "/bin/freebsd-version"
SHUTDOWN = "/sbin/shutdown"

#: The numbers :func:`memory_from_sysctl` uses: read with sysctlbyname(3) on a live
#: FreeBSD (no fork every memory tick), from the ``sysctl`` snapshot under a fixture root.
MEMORY_SYSCTLS = (
    "hw.physmem",                     # bytes of physical memory (kern_mib.c)
    "hw.pagesize",                    # bytes per page
    "vm.stats.vm.v_free_count",       # pages, sys/vm/vm_meter.c
    "vm.stats.vm.v_inactive_count",
    "vm.stats.vm.v_cache_count",      # real before FreeBSD 11, a 0 dummy since (COMPAT_FREEBSD11)
    "kstat.zfs.misc.arcstats.size",   # bytes, only with ZFS loaded
    "kstat.zfs.misc.arcstats.c_min",
    "dev.xen.balloon.low_mem",        # pages ballooned out (sys/dev/xen/balloon/balloon.c)
    "dev.xen.balloon.high_mem",
)

#: Everything the backend reads from sysctl, in one command.  Subtrees (``dev.xn``)
#: print every leaf below them (sysctl.c ``sysctl_all``).
SYSCTL_NAMES = (
    "kern.osrelease",                 # uname -r (sys/kern/kern_mib.c)
    "kern.hostname",                  # hostname(1)
) + MEMORY_SYSCTLS + (
    "dev.xn",                         # netfront NICs
    "dev.xbd",                        # blkfront disks
    "dev.xenballoon",                 # the balloon driver
)

#: How long one sysctl snapshot serves: the collectors of a round run back to back.
SNAPSHOT_TTL = 1.0

_SYSCTL_LINE = re.compile(r"^([A-Za-z0-9_%.\-]+): ?(.*)$")
_XENSTORE_PATH = re.compile(r"^dev\.xn\.(\d+)\.xenstore_path$")
_VIF_NODE = re.compile(r"^device/vif/(\d+)$")


class FreeBSDError(Exception):
    """A FreeBSD source is missing or could not be understood."""


# --- pure parsers -------------------------------------------------------------------------

def parse_sysctl(text: str) -> Dict[str, str]:
    """``sysctl`` output (``name: value`` per leaf, sbin/sysctl/sysctl.c ``show_var``)
    -> {name: value}.  A line that does not start a new ``name:`` continues the
    previous value (string values may contain newlines)."""
    values: Dict[str, str] = {}
    last: Optional[str] = None
    for line in text.splitlines():
        match = _SYSCTL_LINE.match(line)
        if match:
            last = match.group(1)
            values[last] = match.group(2).strip()
        elif last is not None and line.strip():
            values[last] = f"{values[last]}\n{line.strip()}"
    return values


def _number(values: Mapping[str, str], name: str) -> Optional[int]:
    value = values.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise FreeBSDError(f"sysctl {name} is not a number: {value!r}") from exc


def memory_from_sysctl(values: Mapping[str, str]) -> Memory:
    """Memory in KiB from the VM counters.

    total = ``hw.physmem`` (bytes, fixed at boot: sys/kern/kern_mib.c) minus the pages the
    balloon driver holds, ``dev.xen.balloon.low_mem`` + ``high_mem`` (pages): its
    ``decrease_reservation`` allocates them with ``vm_page_alloc`` and keeps them
    (sys/dev/xen/balloon/balloon.c), so they are neither free nor inactive and, left in
    the total, would show as used.  free means what Linux's ``MemAvailable`` means,
    memory that can be handed to applications without swapping (docs/freebsd.md):

        (v_free_count + v_inactive_count + v_cache_count) * hw.pagesize
        + max(0, arcstats.size - arcstats.c_min)

    Free pages are free; inactive pages are reclaimed by the page daemon before
    anything is paged out (sys/vm/vm_pageout.c, the inactive queue scan frees clean
    pages and moves dirty ones to the laundry); the cache queue (FreeBSD 10 and
    older) held clean pages ready for reuse.  The laundry queue is left out: its
    pages are dirty and must be written (anonymous ones to swap) before reuse.
    The ZFS ARC is wired memory that shrinks down to ``c_min`` under memory
    pressure, so what it holds above that floor is available too."""
    physmem = _number(values, "hw.physmem")
    pagesize = _number(values, "hw.pagesize")
    free = _number(values, "vm.stats.vm.v_free_count")
    inactive = _number(values, "vm.stats.vm.v_inactive_count")
    missing = [name for name, value in (("hw.physmem", physmem), ("hw.pagesize", pagesize),
                                        ("vm.stats.vm.v_free_count", free),
                                        ("vm.stats.vm.v_inactive_count", inactive))
               if value is None]
    if missing:
        raise FreeBSDError(f"sysctl did not report {', '.join(missing)}")
    assert physmem is not None and pagesize is not None and free is not None and inactive is not None
    cache = _number(values, "vm.stats.vm.v_cache_count") or 0
    available = (free + inactive + cache) * pagesize
    arc_size = _number(values, "kstat.zfs.misc.arcstats.size")
    arc_min = _number(values, "kstat.zfs.misc.arcstats.c_min")
    if arc_size is not None and arc_min is not None:
        available += max(0, arc_size - arc_min)
    ballooned = ((_number(values, "dev.xen.balloon.low_mem") or 0)
                 + (_number(values, "dev.xen.balloon.high_mem") or 0)) * pagesize
    total_kib = max(0, physmem - ballooned) // 1024
    return Memory(total_kib=total_kib, free_kib=min(available // 1024, total_kib))


def vif_ids(values: Mapping[str, str]) -> Dict[int, int]:
    """netfront unit -> VIF id, from ``dev.xn.<unit>.xenstore_path = device/vif/<id>``."""
    found: Dict[int, int] = {}
    for name, value in values.items():
        match = _XENSTORE_PATH.match(name)
        node = _VIF_NODE.match(value.strip()) if match else None
        if match and node:
            found[int(match.group(1))] = int(node.group(1))
    return found


def capabilities_from_sysctl(values: Mapping[str, str]) -> Capabilities:
    """Front-end drivers with an attached device: ``dev.xenballoon.*``, ``dev.xn.*``,
    ``dev.xbd.*`` exist once newbus attached one (subr_bus.c ``device_sysctl_init``).
    netfront and blkfront are built together (both need the XENHVM kernel option), so
    one attached NIC or disk also shows that the other kind can be hot-plugged; a
    driver with no device at all is invisible to sysctl and reported absent."""
    def attached(driver: str) -> bool:
        prefix = f"dev.{driver}."
        return any(name.startswith(prefix) and name.endswith(".%driver") for name in values)
    return Capabilities(balloon=attached("xenballoon"), hotplug_vif=attached("xn"),
                        hotplug_vbd=attached("xbd"))


def parse_freebsd_version(version: str, kernel: str) -> Optional[OsInfo]:
    """``freebsd-version -u`` output (``14.1-RELEASE-p5``) -> OsInfo, or None."""
    line = version.strip().splitlines()[0] if version.strip() else ""
    major, minor = split_version(line)
    if major is None:
        return None
    return OsInfo(name=f"FreeBSD {line}", distro="freebsd", major=major, minor=minor, kernel=kernel)


# --- the backend ---------------------------------------------------------------------------

class FreeBSDBackend:
    """Facts of a FreeBSD guest, from sysctl and ifconfig through ``host.run``."""

    name = "freebsd"
    default_xenstore = DEFAULT_XENSTORE
    #: sys/dev/xen/control/control.c performs poweroff, reboot, suspend and crash
    #: ("halt" is poweroff there) but writes no control/feature-* key: the agent
    #: advertises them (control.py).
    kernel_features: Tuple[str, ...] = ()
    unadvertised_features: Tuple[str, ...] = ("poweroff", "reboot", "suspend")

    def __init__(self, host: Host, addresses: Optional[AddressSource] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sysctlbyname: Optional[SysctlRead] = None) -> None:
        """``addresses``: where IP addresses come from.  Default: psutil
        (getifaddrs) on the live system; under a fixture root, the captured
        ``ifconfig -a`` output itself.  ``sysctlbyname``: how :meth:`memory` reads
        :data:`MEMORY_SYSCTLS` without a fork; default: libc's sysctlbyname(3) on a
        live FreeBSD, else None (the ``sysctl`` snapshot, as under a fixture root)."""
        self.host = host
        if addresses is None and host.is_live:
            addresses = PsutilAddresses()
        self.addresses: Optional[AddressSource] = addresses
        if sysctlbyname is None and host.is_live:
            sysctlbyname = libc_sysctlbyname()
        self.sysctlbyname: Optional[SysctlRead] = sysctlbyname
        self.clock = clock
        self._snapshot: Optional[Tuple[float, Dict[str, str]]] = None

    # --- sources ---------------------------------------------------------------------------

    def _run(self, argv: Tuple[str, ...]) -> CommandResult:
        result = self.host.run(argv)
        if result.returncode != 0:
            raise FreeBSDError(f"{' '.join(argv[:2])} exited {result.returncode}: "
                               f"{(result.stderr or result.stdout).strip()[:200]}")
        return result

    def sysctl(self) -> Dict[str, str]:
        """Every name in :data:`SYSCTL_NAMES`, from one ``sysctl -i`` run shared by the
        collectors of a round (re-run when older than :data:`SNAPSHOT_TTL`)."""
        now = self.clock()
        if self._snapshot is not None and now - self._snapshot[0] < SNAPSHOT_TTL:
            return self._snapshot[1]
        values = parse_sysctl(self._run((SYSCTL, "-i") + SYSCTL_NAMES).stdout)
        self._snapshot = (now, values)
        return values

    def kernel_release(self) -> str:
        """``kern.osrelease``: what ``uname -r`` prints (``14.1-RELEASE-p4``)."""
        release = self.sysctl().get("kern.osrelease")
        if not release:
            raise FreeBSDError("sysctl did not report kern.osrelease")
        return release

    # --- collectors ------------------------------------------------------------------------

    def os_info(self) -> OsInfo:
        """os-release(5) where present: FreeBSD 13+ writes ``/var/run/os-release`` at
        boot and links ``/etc/os-release`` to it (libexec/rc/rc.d/os-release, from
        ``freebsd-version -u``); else ``freebsd-version -u`` itself; else the kernel
        release.  The kernel release is ``data/os_uname``."""
        kernel = self.kernel_release()
        for path in ("/etc/os-release", "/var/run/os-release"):
            text = self.host.read_text(path)
            if text:
                info = os_info_from_release(parse_os_release(text), kernel)
                if info is not None:
                    return info
        try:
            info = parse_freebsd_version(self._run((FREEBSD_VERSION, "-u")).stdout, kernel)
        except FreeBSDError as exc:
            log.info("no os-release and freebsd-version failed (%s): using the kernel release", exc)
            info = None
        return info or parse_freebsd_version(kernel, kernel) or OsInfo(
            name="FreeBSD", distro="freebsd", major=None, minor=None, kernel=kernel)

    def memory(self) -> Memory:
        """Read every memory tick (seconds apart): in-process through sysctlbyname(3)
        where there is one, so the tick forks no ``sysctl``."""
        if self.sysctlbyname is not None:
            return memory_from_sysctl(read_numbers(MEMORY_SYSCTLS, self.sysctlbyname))
        return memory_from_sysctl(self.sysctl())

    def interfaces(self) -> Tuple[Interface, ...]:
        """``ifconfig -a`` for names, MACs and stacking; VIF ids from sysctl;
        addresses from :attr:`addresses` (or from ifconfig under a fixture root)."""
        vifs = vif_ids(self.sysctl())
        entries = parse_ifconfig(self._run((IFCONFIG, "-a")).stdout)
        table = self.addresses.addresses() if self.addresses is not None else None
        return build_interfaces(entries, vifs, table)

    def capabilities(self) -> Capabilities:
        return capabilities_from_sysctl(self.sysctl())

    def host_names(self) -> HostNames:
        """``kern.hostname`` (rc.conf's ``hostname`` is usually fully qualified), split
        as xapi joins it (``host_names_from``)."""
        return host_names_from(self.sysctl().get("kern.hostname"),
                               self.host.read_text("/etc/resolv.conf"))

    def power_commands(self) -> Dict[str, Tuple[str, ...]]:
        """shutdown(8): ``-p`` powers off, ``-r`` reboots.  "halt" powers off too, as
        FreeBSD's own kernel does with it (control.c maps "halt" to ``xctrl_poweroff``):
        ``-h`` would halt the CPU and leave the domain running."""
        return {"poweroff": (SHUTDOWN, "-p", "now"), "reboot": (SHUTDOWN, "-r", "now"),
                "halt": (SHUTDOWN, "-p", "now")}

    def tune_suspend(self, freeze_timeout: int) -> None:
        """Nothing to tune: FreeBSD suspends for Xen in the kernel (control.c
        ``xctrl_suspend``), stopping every user process with ``stop_all_proc`` and
        resuming them after, with no freeze timeout."""
        log.debug("FreeBSD has no suspend freeze timeout; %d s not applied", freeze_timeout)
