"""``ifconfig -a`` on FreeBSD: names, MACs and how interfaces are stacked.

No sysctl says which interfaces sit on which (lagg ports, vlan parents, bridge members), so the
FreeBSD backend reads it from ``ifconfig -a`` (sbin/ifconfig), with pure functions tested on
inline text and on the fixture trees.
"""

from __future__ import annotations

import re

from xenguest_agent.backends.addresses import Table
from xenguest_agent.backends.base import make_address
from xenguest_agent.facts import Address, Interface
from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

_XN_NAME = re.compile(r"^xn(\d+)$")
_IFCONFIG_HEADER = re.compile(r"^([^\s:]+): flags=")
_PARENT = re.compile(r"\bparent interface: (\S+)")


@dataclass(frozen=True)
class IfconfigEntry:
    """What ``ifconfig -a`` says about one interface."""

    name: str
    mac: Optional[str]
    lower: Tuple[str, ...]
    addresses: Tuple[Address, ...]


def parse_ifconfig(text: str) -> Tuple[IfconfigEntry, ...]:
    """``ifconfig -a`` output (sbin/ifconfig) -> one entry per interface, in order.

    Read: ``ether`` and ``hwaddr`` (af_link.c; ``hwaddr`` is the permanent
    address, printed when a lagg or an administrator changed the MAC, and it is
    the one the toolstack knows), ``inet``/``inet6`` (af_inet.c, af_inet6.c; the
    ``%scope`` of a link-local is stripped), ``laggport:`` (iflagg.c), ``member:``
    (ifbridge.c) and the vlan line's ``parent interface:`` (ifvlan.c).  Only these
    line prefixes matter, not their order or the other lines.  A lagg *port* may
    list its lagg's protocol and sibling ports with ``laggdev <lagg>`` (older
    iflagg.c): those ports are not below it, so they are ignored there."""
    entries: List[IfconfigEntry] = []
    name: Optional[str] = None
    fields: Dict[str, Optional[str]] = {}
    lower: List[str] = []
    ports: List[str] = []
    addresses: List[Address] = []

    def finish() -> None:
        if name is None:
            return
        below = lower + ([] if fields.get("laggdev") else ports)
        seen: Dict[Tuple[int, str], Address] = {}
        for address in addresses:
            seen.setdefault((address.family, address.address), address)
        entries.append(IfconfigEntry(
            name, fields.get("hwaddr") or fields.get("ether"),
            tuple(dict.fromkeys(n for n in below if n != name)), tuple(seen.values())))

    for line in text.splitlines():
        header = _IFCONFIG_HEADER.match(line)
        if header:
            finish()
            name, fields, lower, ports, addresses = header.group(1), {}, [], [], []
            continue
        if name is None or not line[:1].isspace():
            continue
        words = line.split()
        if not words:
            continue
        key = words[0]
        if key in ("ether", "hwaddr") and len(words) > 1:
            fields[key] = words[1].lower()
        elif key in ("inet", "inet6") and len(words) > 1:
            address = make_address(4 if key == "inet" else 6, words[1])
            if address is not None:
                addresses.append(address)
        elif key == "laggport:" and len(words) > 1:
            ports.append(words[1])
        elif key == "member:" and len(words) > 1:
            lower.append(words[1])
        elif key == "vlan:":
            parent = _PARENT.search(line)
            if parent and parent.group(1) != "<none>":
                lower.append(parent.group(1))
        elif key == "laggdev:" or (key == "laggproto" and "laggdev" in words):
            fields["laggdev"] = words[-1]
    finish()
    return tuple(entries)


def build_interfaces(entries: Tuple[IfconfigEntry, ...], vifs: Mapping[int, int],
                     table: Optional[Table]) -> Tuple[Interface, ...]:
    """Interfaces with VIF ids and stacking.  ``table``: addresses from another
    source (psutil on a live guest); None means the ones ``ifconfig`` printed.

    An ``xn<unit>`` whose unit has a ``xenstore_path`` gets that VIF id; otherwise
    the id stays unknown and the agent matches the MAC against the toolstack's
    ``device/vif/*/mac`` (network.py ``resolve_vifs``), which is right even when
    units and VIF ids differ, unlike guessing "xnN is VIF N"."""
    by_name = {entry.name: entry for entry in entries}
    names = list(by_name) + sorted(set(table or ()) - set(by_name))
    found: List[Interface] = []
    for name in names:
        entry = by_name.get(name)
        unit = _XN_NAME.match(name)
        vif = vifs.get(int(unit.group(1))) if unit else None
        if table is not None:
            addresses = table.get(name, ())
        else:
            addresses = entry.addresses if entry else ()
        found.append(Interface(name=name, mac=entry.mac if entry else None, vif=vif,
                               addresses=addresses, lower=entry.lower if entry else ()))
    return tuple(found)
