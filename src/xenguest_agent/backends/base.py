"""The one small interface every OS backend implements, plus pure helpers they share.

Backends are chosen in one place (:func:`xenguest_agent.backends.select_backend`)
and meet the rest of the agent only through :class:`Backend` and the records in
:mod:`xenguest_agent.facts` (psutil's ``_pslinux``/``_psbsd`` split is the model).
"""

from __future__ import annotations

import re
import socket

from xenguest_agent.facts import Address, Capabilities, HostNames, Interface, Memory, OsInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional, Protocol, Tuple
else:  # a Protocol is for the type checker; at run time a plain base class
    Protocol = object


class Backend(Protocol):
    """What an OS backend can tell.  Each method may raise; the agent logs the
    failure with the collector's name and keeps the others (node_exporter)."""

    #: short OS name, used in logs and to pick defaults ("linux", "freebsd")
    name: str
    #: where this OS exposes XenStore to a guest
    default_xenstore: str

    def os_info(self) -> OsInfo: ...

    def memory(self) -> Memory: ...

    def interfaces(self) -> Tuple[Interface, ...]: ...

    def capabilities(self) -> Capabilities: ...

    def host_names(self) -> HostNames: ...

    #: control/feature-* flags the kernel writes itself (re-written after migration)
    kernel_features: Tuple[str, ...]
    #: requests the kernel performs but never advertises (the agent advertises them)
    unadvertised_features: Tuple[str, ...]

    def power_commands(self) -> Dict[str, Tuple[str, ...]]:
        """argv per request (poweroff/reboot/halt) for when the agent must act."""
        ...

    def tune_suspend(self, freeze_timeout: int) -> None:
        """Prepare the OS for Xen suspends (may log; never raises)."""
        ...


# --- os-release (freedesktop.org os-release(5)); shared by Linux and FreeBSD ---------------

_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_ESCAPE = re.compile(r"\\([\\$\"'`])")


def parse_os_release(text: str) -> Dict[str, str]:
    """Parse os-release(5) text: ``KEY=value`` lines, the value optionally in
    single or double quotes, with ``\\$ \\" \\\\ \\``` escapes undone (as
    CPython's ``platform.freedesktop_os_release`` does).  No shell is involved."""
    fields: Dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if not match:
            continue
        key, value = match.groups()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif value[:1] in ("'", '"'):  # unbalanced: keep the text, drop the stray quote
            value = value[1:]
        fields[key] = _ESCAPE.sub(r"\1", value)
    return fields


def split_version(version: str) -> Tuple[Optional[str], Optional[str]]:
    """``"9.3"`` -> ("9", "3"), ``"12"`` -> ("12", None), ``"24.04"`` -> ("24", "04"),
    ``"14.1-RELEASE-p5"`` -> ("14", "1"), ``"rolling"`` -> (None, None).

    The components stay strings, as written, because xapi copies them into
    ``os_version`` as strings (xapi_guest_agent.ml)."""
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?", version or "")
    if not match:
        return None, None
    return match.group(1), match.group(2)


#: os-release IDs whose XenServer name differs.  XenServer's own agent
#: (xe-guest-utilities mk/xe-linux-distribution) reports Oracle Linux as
#: ``oracle`` and SUSE as ``sles``; XenCenter's list of Linux distros
#: (xenadmin VM.cs, linuxDistros) uses those names.
DISTRO_ALIASES = {"ol": "oracle", "sled": "sles", "sles_sap": "sles"}


def os_info_from_release(fields: Dict[str, str], kernel: str) -> Optional[OsInfo]:
    """OsInfo from os-release fields, or None if they do not even name the OS."""
    distro = fields.get("ID", "").strip().lower()
    distro = DISTRO_ALIASES.get(distro, distro)
    name = fields.get("PRETTY_NAME") or " ".join(
        part for part in (fields.get("NAME"), fields.get("VERSION")) if part)
    if not distro and not name:
        return None
    major, minor = split_version(fields.get("VERSION_ID", ""))
    return OsInfo(name=name or distro, distro=distro or name.split()[0].lower(),
                  major=major, minor=minor, kernel=kernel)


# --- resolv.conf(5); shared by Linux and FreeBSD ------------------------------------------------

def host_names_from(host_name: Optional[str], resolv_conf: Optional[str]) -> HostNames:
    """The kernel's host name split the way xapi joins it back.

    xapi shows ``data/host_name_dns + "." + data/domain`` as the VM's host name
    (xen-api ``ocaml/xapi/xapi_guest_agent.ml``, ``get_initial_guest_metrics``,
    ``netbios_name``), so a fully qualified kernel host name gives its first label
    as the host name and the rest as the domain.  A short name takes the domain
    from resolv.conf: the host's own FQDN is the better witness of its domain than
    the resolver's list for completing other names (resolv.conf(5))."""
    name = (host_name or "").strip().rstrip(".")
    if "." in name:
        label, suffix = name.split(".", 1)
        if label and suffix:
            return HostNames(host_name=label, domain=suffix)
    domain = parse_resolv_domain(resolv_conf) if resolv_conf else None
    return HostNames(host_name=name or None, domain=domain)


def parse_resolv_domain(text: str) -> Optional[str]:
    """The DNS domain from resolv.conf(5): ``domain`` and ``search`` are mutually
    exclusive and the last of them wins; of a search list, the first entry."""
    chosen = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("domain", "search"):
            chosen = parts[1]
    return chosen.rstrip(".") if chosen and chosen != "." else None


def make_address(family: int, address: str) -> Optional[Address]:
    """A validated, normalised Address, or None for loopback, unspecified or garbage.

    IPv6 zone suffixes (``fe80::1%eth0``) are stripped: xapi shows the bare
    address.  inet_pton/inet_ntop (C) rather than the ipaddress module: a guest
    with thousands of addresses parses them every round (benchmarks/bench.py,
    the 256x16 case), and ipaddress costs ~40 us per address."""
    bare = address.split("%", 1)[0]
    kind = socket.AF_INET if family == 4 else socket.AF_INET6 if family == 6 else None
    if kind is None:
        return None
    try:
        packed = socket.inet_pton(kind, bare)
    except (OSError, ValueError):
        return None
    if family == 4:
        if packed[0] == 127 or packed == b"\0\0\0\0":
            return None
        link_local = packed[:2] == b"\xa9\xfe"  # 169.254.0.0/16 (RFC 3927)
    else:
        if packed in (_V6_LOOPBACK, _V6_UNSPECIFIED):
            return None
        link_local = packed[0] == 0xFE and packed[1] & 0xC0 == 0x80  # fe80::/10 (RFC 4291)
    return Address(family=family, address=socket.inet_ntop(kind, packed), link_local=link_local)


_V6_LOOPBACK = b"\0" * 15 + b"\1"
_V6_UNSPECIFIED = b"\0" * 16
