"""From interfaces to "addresses per VIF": VIF resolution, filtering, stacking, slots.

Pure functions, so every rule (which interfaces count, where a bridge's address
goes, which index an address keeps) is tested without a network.
"""

from __future__ import annotations

import fnmatch

from xenguest_agent.facts import Address, Interface
from xenguest_agent.records import dataclass, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
    Slots = Dict[str, int]  # address -> its index under one (device, family)



@dataclass(frozen=True)
class NetworkView:
    """Addresses grouped the way the toolstack sees NICs: by VIF id and by SR-IOV VF id."""

    vifs: Mapping[int, Tuple[Address, ...]]
    sriov: Mapping[int, Tuple[Address, ...]]


def selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """fnmatch include patterns (empty = all), then exclude patterns."""
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def resolve_vifs(interfaces: Iterable[Interface], static: Mapping[str, int],
                 by_mac: Mapping[str, int]) -> Tuple[Interface, ...]:
    """Fill in VIF ids: configuration first, then what the guest knows, then a MAC
    match against ``device/vif/<id>/mac`` (a fallback for guests whose kernel does
    not expose the xenbus nodename)."""
    out = []
    for iface in interfaces:
        vif = static.get(iface.name, iface.vif)
        if vif is None and iface.mac and not iface.lower:
            vif = by_mac.get(iface.mac.lower())
        out.append(replace(iface, vif=vif) if vif != iface.vif else iface)
    return tuple(out)


def _roots(name: str, by_name: Mapping[str, Interface], leaf_ids: Mapping[str, int],
           seen: Tuple[str, ...] = ()) -> List[int]:
    """The device ids an interface ultimately sits on, following ``lower`` links."""
    if name in leaf_ids:
        return [leaf_ids[name]]
    iface = by_name.get(name)
    if iface is None or name in seen:
        return []
    found: List[int] = []
    for lower in iface.lower:
        found.extend(_roots(lower, by_name, leaf_ids, seen + (name,)))
    return sorted(set(found))


def group_addresses(interfaces: Sequence[Interface], sriov_by_mac: Mapping[str, int],
                    include: Sequence[str] = (), exclude: Sequence[str] = ()) -> NetworkView:
    """Addresses per VIF and per SR-IOV VF.

    An interface stacked on a VIF (a bridge, bond or VLAN over it) reports its
    addresses under that VIF; one stacked on several VIFs (a bond of two)
    reports under the lowest id, so an address is never published twice.
    Include/exclude patterns apply to the interface that carries the address."""
    by_name = {iface.name: iface for iface in interfaces}
    vif_ids = {i.name: i.vif for i in interfaces if i.vif is not None}
    sriov_ids = {i.name: sriov_by_mac[i.mac] for i in interfaces
                 if i.vif is None and i.mac and i.mac in sriov_by_mac}
    vifs: Dict[int, List[Address]] = {vif: [] for vif in vif_ids.values()}
    sriov: Dict[int, List[Address]] = {vf: [] for vf in sriov_ids.values()}
    for iface in interfaces:
        if not selected(iface.name, include, exclude):
            continue
        target: Optional[List[Address]] = None
        vif_roots = _roots(iface.name, by_name, vif_ids)
        if vif_roots:
            target = vifs[vif_roots[0]]
        else:
            vf_roots = _roots(iface.name, by_name, sriov_ids)
            if vf_roots:
                target = sriov[vf_roots[0]]
        if target is not None:
            target.extend(a for a in iface.addresses if a not in target)
    return NetworkView(vifs={k: tuple(v) for k, v in vifs.items()},
                       sriov={k: tuple(v) for k, v in sriov.items()})


def assign_slots(previous: Mapping[str, int], addresses: Sequence[Address], limit: int) -> Slots:
    """Stable small-integer indexes for one device's addresses of one family.

    An address keeps its index for as long as it exists, so adding or removing
    another address rewrites one key, not the whole list (no churn in XenCenter).
    New addresses take the lowest free index, globally scoped ones before
    link-local ones; at most ``limit`` are kept, the rest wait for a free slot."""
    present = {a.address for a in addresses}
    slots = {addr: slot for addr, slot in previous.items() if addr in present and slot < limit}
    ordered = sorted((a for a in addresses if a.address not in slots),
                     key=lambda a: a.link_local)  # stable: kernel order within a scope
    free = (slot for slot in range(limit) if slot not in slots.values())
    for address in ordered:
        slot = next(free, None)
        if slot is None:
            break
        slots[address.address] = slot
    return slots
