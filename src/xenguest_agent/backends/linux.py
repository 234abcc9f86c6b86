"""Linux backend: /proc, /sys and /etc under the host root; no external commands.

Sources of truth cited per method.  Everything read is parsed by a pure function
that takes text, so each quirk is tested with inline input and each distro with
a captured fixture tree (tests/fixtures/linux/...).
"""

from __future__ import annotations

import re

from xenguest_agent.backends.addresses import AddressSource, NetlinkAddresses
from xenguest_agent.backends.base import (
    host_names_from,
    os_info_from_release,
    parse_os_release,
    split_version,
)
from xenguest_agent.facts import Capabilities, HostNames, Interface, Memory, OsInfo
from xenguest_agent.host import Host
from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

log = get_logger(__name__)

#: drivers/xen/xenbus/xenbus_dev_frontend.c registers the "xen/xenbus" misc device
#: (udev: /dev/xen/xenbus); /proc/xen/xenbus is the pre-3.x location.
DEFAULT_XENSTORE = "/dev/xen/xenbus"

#: Linux registers a front-end only when "<type>/<id>" fits XEN_BUS_ID_SIZE (20
#: with the NUL; drivers/xen/xenbus/xenbus_probe_frontend.c, frontend_bus_id):
#: at most 15 ASCII digits for a vif.
_VIF_NODENAME = re.compile(r"^device/vif/([0-9]{1,15})$")


class LinuxError(Exception):
    """A Linux source exists but could not be understood."""


# --- pure parsers -------------------------------------------------------------------------

def parse_meminfo(text: str) -> Memory:
    """Memory from /proc/meminfo (fs/proc/meminfo.c; values are in kB = KiB).

    Free is ``MemAvailable`` (kernel 3.14+, the estimate of memory available to
    start new applications without swapping); older kernels lack it, and then
    ``MemFree`` is the best the kernel says (it undercounts the page cache)."""
    values: Dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name.strip()] = int(parts[0])
    if "MemTotal" not in values:
        raise LinuxError("/proc/meminfo has no MemTotal")
    free = values.get("MemAvailable", values.get("MemFree"))
    if free is None:
        raise LinuxError("/proc/meminfo has neither MemAvailable nor MemFree")
    return Memory(total_kib=values["MemTotal"], free_kib=free)


_LEGACY_RELEASE = re.compile(
    r"^(?P<name>.*?)\s+(?:release\s+)?(?P<version>\d+(?:\.\d+)*)(?:\s*\((?P<code>[^)]*)\))?\s*$")

_LEGACY_IDS = (
    ("red hat enterprise linux", "rhel"), ("centos", "centos"), ("fedora", "fedora"),
    ("rocky", "rocky"), ("almalinux", "almalinux"), ("oracle", "oracle"),
    ("scientific", "scientific"), ("suse linux enterprise", "sles"), ("opensuse", "opensuse"),
    ("enterprise linux enterprise linux", "oracle"),  # Oracle Linux 5's redhat-release
)


def parse_legacy_release(text: str, kernel: str) -> Optional[OsInfo]:
    """/etc/redhat-release style text: ``CentOS release 6.10 (Final)``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    match = _LEGACY_RELEASE.match(line)
    if not match:
        return None
    lowered = match.group("name").lower()
    distro = next((ident for key, ident in _LEGACY_IDS if key in lowered), lowered.split()[0])
    major, minor = split_version(match.group("version"))
    # SuSE-release: "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4"
    patch = re.search(r"^PATCHLEVEL\s*=\s*(\d+)", text, re.MULTILINE)
    if minor is None and patch:
        minor = patch.group(1)
    return OsInfo(name=line, distro=distro, major=major, minor=minor, kernel=kernel)


def parse_lsb_release(text: str, kernel: str) -> Optional[OsInfo]:
    """/etc/lsb-release (``DISTRIB_ID``/``DISTRIB_RELEASE``), used by old Ubuntu."""
    fields = parse_os_release(text)
    ident = fields.get("DISTRIB_ID", "").lower()
    if not ident:
        return None
    major, minor = split_version(fields.get("DISTRIB_RELEASE", ""))
    name = (fields.get("DISTRIB_DESCRIPTION")
            or f"{fields['DISTRIB_ID']} {fields.get('DISTRIB_RELEASE', '')}".strip())
    return OsInfo(name=name, distro=ident, major=major, minor=minor, kernel=kernel)


def vif_from_nodename(nodename: Optional[str]) -> Optional[int]:
    """``device/vif/3`` -> 3: the toolstack's VIF id (xen-netfront's xenbus nodename)."""
    match = _VIF_NODENAME.match(nodename or "")
    return int(match.group(1)) if match else None


# --- the backend ---------------------------------------------------------------------------

class LinuxBackend:
    """Facts of a Linux guest, read through a :class:`Host` (root-relative)."""

    name = "linux"
    default_xenstore = DEFAULT_XENSTORE
    #: drivers/xen/manage.c setup_shutdown_watcher writes feature-poweroff and
    #: feature-reboot, and feature-suspend with CONFIG_HIBERNATE_CALLBACKS.
    kernel_features: Tuple[str, ...] = ("poweroff", "reboot", "suspend")
    unadvertised_features: Tuple[str, ...] = ()

    def __init__(self, host: Host, addresses: Optional[AddressSource] = None) -> None:
        self.host = host
        self.addresses: AddressSource = addresses if addresses is not None else NetlinkAddresses()

    def kernel_release(self) -> str:
        """The running kernel's release (``uname -r``): kernel/sysctl ``osrelease``."""
        release = self.host.read_line("/proc/sys/kernel/osrelease")
        if not release:
            raise LinuxError("cannot read /proc/sys/kernel/osrelease")
        return release

    def os_info(self) -> OsInfo:
        """os-release(5) (/etc first, then /usr/lib), then the pre-systemd release files."""
        kernel = self.kernel_release()
        for path in ("/etc/os-release", "/usr/lib/os-release"):
            text = self.host.read_text(path)
            if text:
                info = os_info_from_release(parse_os_release(text), kernel)
                if info is not None:
                    return self._refine_debian(info)
        # oracle-release first: Oracle Linux 5/6 also ship a redhat-release naming RHEL
        for path in ("/etc/oracle-release", "/etc/centos-release", "/etc/redhat-release",
                     "/etc/SuSE-release"):
            text = self.host.read_text(path)
            if text:
                info = parse_legacy_release(text, kernel)
                if info is not None:
                    return info
        text = self.host.read_text("/etc/lsb-release")
        if text:
            info = parse_lsb_release(text, kernel)
            if info is not None:
                return info
        for path, distro, label in (("/etc/debian_version", "debian", "Debian GNU/Linux"),
                                    ("/etc/alpine-release", "alpine", "Alpine Linux")):
            version = self.host.read_line(path)
            if version:
                major, minor = split_version(version)
                return OsInfo(name=f"{label} {version}", distro=distro, major=major, minor=minor,
                              kernel=kernel)
        return OsInfo(name="Linux", distro="linux", major=None, minor=None, kernel=kernel)

    def _refine_debian(self, info: OsInfo) -> OsInfo:
        """Debian's os-release says only ``VERSION_ID="12"``; /etc/debian_version has
        the point release (``12.5``), which XenServer's own agent reports as minor."""
        if info.distro != "debian" or info.minor is not None:
            return info
        major, minor = split_version(self.host.read_line("/etc/debian_version") or "")
        if major == info.major and minor is not None:
            return OsInfo(info.name, info.distro, info.major, minor, info.kernel)
        return info

    def memory(self) -> Memory:
        text = self.host.read_text("/proc/meminfo")
        if text is None:
            raise LinuxError("cannot read /proc/meminfo")
        return parse_meminfo(text)

    def interfaces(self) -> Tuple[Interface, ...]:
        """Every interface in /sys/class/net with its VIF id, stacking and addresses.

        A Xen PV NIC's ``device`` is its xenbus device: ``device/devtype`` is
        ``vif`` and ``device/nodename`` is ``device/vif/<devid>``
        (drivers/xen/xenbus/xenbus_probe.c, xen-netfront); the name itself
        (eth0, ens3, enX0, anything udev chose) means nothing."""
        table = self.addresses.addresses()
        names = set(self.host.listdir("/sys/class/net")) | set(table)
        found: List[Interface] = []
        for name in sorted(names):
            base = f"/sys/class/net/{name}"
            # one directory listing says which of the other files exist: a guest
            # with hundreds of virtual interfaces (containers) pays two syscalls each
            entries = set(self.host.listdir(base))
            vif = None
            if "device" in entries:
                devtype = self.host.read_line(f"{base}/device/devtype")
                if devtype in (None, "vif"):
                    vif = vif_from_nodename(self.host.read_line(f"{base}/device/nodename"))
            mac = self.host.read_line(f"{base}/address") if "address" in entries else None
            found.append(Interface(name=name, mac=mac.lower() if mac else None, vif=vif,
                                   addresses=table.get(name, ()), lower=self._lower(base, entries)))
        return tuple(found)

    def _lower(self, base: str, entries: "set[str]") -> Tuple[str, ...]:
        """Interfaces this one sits on: ``lower_<dev>`` adjacency links (bridge ports,
        bond slaves, VLAN parents; net/core/dev.c netdev_adjacent_sysfs_add),
        plus ``brif/`` and ``bonding/slaves`` for kernels older than those links."""
        lower = {entry[len("lower_"):] for entry in entries if entry.startswith("lower_")}
        if "brif" in entries:
            lower.update(self.host.listdir(f"{base}/brif"))
        if "bonding" in entries:
            slaves = self.host.read_line(f"{base}/bonding/slaves")
            if slaves:
                lower.update(slaves.split())
        return tuple(sorted(lower))

    def capabilities(self) -> Capabilities:
        """Front-end drivers, from the xen bus and the balloon driver's sysfs device.

        xen-netfront and xen-blkfront register xenbus drivers named ``vif`` and
        ``vbd`` (/sys/bus/xen/drivers/{vif,vbd}); xen-balloon registers the
        ``xen_memory`` subsystem (/sys/devices/system/xen_memory/xen_memory0)."""
        return Capabilities(
            balloon=self.host.exists("/sys/devices/system/xen_memory/xen_memory0"),
            hotplug_vif=self.host.exists("/sys/bus/xen/drivers/vif"),
            hotplug_vbd=self.host.exists("/sys/bus/xen/drivers/vbd"),
        )

    def power_commands(self) -> Dict[str, Tuple[str, ...]]:
        """systemctl where systemd is PID 1 (sd_booted: /run/systemd/system exists),
        else the sysvinit/busybox commands."""
        if self.host.exists("/run/systemd/system"):
            return {name: ("systemctl", name) for name in ("poweroff", "reboot", "halt")}
        return {name: (f"/sbin/{name}",) for name in ("poweroff", "reboot", "halt")}

    def tune_suspend(self, freeze_timeout: int) -> None:
        """Raise ``/sys/power/pm_freeze_timeout`` (milliseconds; kernel default
        20,000) so a Xen suspend under heavy I/O does not fail while freezing
        tasks; XenServer's agent sets 300 s.  Never lowers it."""
        path = "/sys/power/pm_freeze_timeout"
        current = self.host.read_line(path)
        wanted = freeze_timeout * 1000
        if current is None or not current.isdigit():
            log.info("%s not available: suspend freeze timeout left to the kernel", path)
            return
        if int(current) >= wanted:
            log.debug("%s is %s ms already (wanted %d)", path, current, wanted)
            return
        try:
            self.host.write_text(path, f"{wanted}\n")
        except OSError as exc:
            log.warning("cannot raise %s from %s to %d ms: %s", path, current, wanted, exc)
            return
        log.info("raised %s from %s to %d ms so suspends under I/O load do not fail "
                 "(not restored at exit)", path, current, wanted)

    def host_names(self) -> HostNames:
        """Kernel/sysctl ``hostname``, split as xapi joins it (``host_names_from``)."""
        return host_names_from(self.host.read_line("/proc/sys/kernel/hostname"),
                               self.host.read_text("/etc/resolv.conf"))
