"""Typed facts about the guest, shared by every backend.

Backends return these records; :mod:`xenguest_agent.schema` alone decides which
XenStore keys they become.  All records are frozen so a round's facts can be
compared with the previous round's by ``==``.
"""

from __future__ import annotations

from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Tuple


@dataclass(frozen=True)
class OsInfo:
    """What the guest runs.  ``distro`` is the lower-case id (``debian``, ``rhel``)."""

    name: str
    distro: str
    major: Optional[str]
    minor: Optional[str]
    kernel: str


@dataclass(frozen=True)
class Memory:
    """Memory in KiB.  ``free`` means "available to applications without
    swapping" (Linux ``MemAvailable``), not merely unused pages."""

    total_kib: int
    free_kib: int


@dataclass(frozen=True)
class Address:
    """One IP address on an interface.  ``family`` is 4 or 6."""

    family: int
    address: str
    link_local: bool = False


@dataclass(frozen=True)
class Interface:
    """A network interface and where it sits relative to a Xen VIF.

    ``vif`` is the toolstack's device id (the ``N`` of ``device/vif/N``) when
    the guest itself knows it (Linux sysfs ``nodename``, FreeBSD
    ``dev.xn.N.xenstore_path``); otherwise None and the agent may match ``mac``
    against ``device/vif/*/mac``.  ``lower`` names the interfaces this one is
    stacked on (bridge ports, bond slaves, a VLAN's parent), so addresses on a
    bridge over a VIF are reported under that VIF.
    """

    name: str
    mac: Optional[str]
    vif: Optional[int] = None
    addresses: Tuple[Address, ...] = ()
    lower: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """Front-end drivers present in the guest."""

    balloon: bool = False
    hotplug_vif: bool = False
    hotplug_vbd: bool = False


@dataclass(frozen=True)
class HostNames:
    """The guest's host name and DNS domain, when known."""

    host_name: Optional[str] = None
    domain: Optional[str] = None


@dataclass(frozen=True)
class ToolsVersion:
    """The agent's own version as four decimal integers (xapi's PVAddons)."""

    major: int
    minor: int
    micro: int
    build: int


@dataclass(frozen=True)
class Facts:
    """Everything one collection round learned.  A field is None when its
    collector failed this round (the agent then keeps the last good value)."""

    tools: ToolsVersion
    os: Optional[OsInfo] = None
    memory: Optional[Memory] = None
    interfaces: Optional[Tuple[Interface, ...]] = None
    capabilities: Optional[Capabilities] = None
    names: Optional[HostNames] = None
