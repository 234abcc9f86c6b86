"""Facts -> the XenStore keys the toolstack reads: every key and its source of truth.

This module alone knows the key layout; the publisher only moves ``{path: value}``
dicts.  Paths are relative to the domain's home (``/local/domain/<domid>``),
where xenstored resolves relative paths for the guest.

Readers, in xapi-project/xen-api:
- ``ocaml/xapi/xapi_guest_agent.ml``: copies ``attr/PVAddons/*``, ``data/os_*``,
  ``data/meminfo_*``, ``attr/vif/*`` and ``xenserver/attr/net-sriov-vf/*`` into
  VM_guest_metrics (PV_drivers_version, os_version, memory, networks).
- ``ocaml/xapi/xapi_pv_driver_version.ml``: Major and Minor must be present and
  integers, or the tools count as not installed; Micro and Build must be integers
  when present.
- ``ocaml/squeezed``: ``control/feature-balloon`` existing = "can balloon";
  ``data/updated`` existing = "guest agent running".
- ``ocaml/xcp-rrdd/bin/rrdp-squeezed/rrdp_squeezed.ml``: ``data/meminfo_free``.
- ``xapi_guest_agent.ml`` ``get_tristate``: ``feature/hotplug/{vif,vbd}`` for
  can_use_hotplug_vif/vbd (hot-plugging NICs and disks into a running VM).
``src/xenguest_agent/xapi.py`` models these readers.
See docs/keys.md for the table of keys, formats and readers.
"""

from __future__ import annotations

import re

from xenguest_agent.facts import Address, Facts, ToolsVersion
from xenguest_agent.network import NetworkView, assign_slots
from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional, Tuple

    from xenguest_agent.network import Slots

#: Longest value the agent writes.  xenstored refuses a node whose record
#: (value plus child names) passes 2,048 bytes for an unprivileged domain
#: (quota-max-entry-size); no fact needs more than this.
MAX_VALUE_BYTES = 512

#: Subtrees the agent owns entirely: anything found below them that the agent
#: did not just render is stale and is removed.
OWNED_TREES = (
    "attr/PVAddons",
    "attr/vif",
    "xenserver/attr/net-sriov-vf",
)

#: Single keys the agent owns (their parents are shared with other writers:
#: the kernel writes control/feature-*, the toolstack writes data/...).
OWNED_KEYS = (
    "data/os_name",
    "data/os_distro",
    "data/os_majorver",
    "data/os_minorver",
    "data/os_uname",
    "data/meminfo_total",
    "data/meminfo_free",
    "data/host_name_dns",
    "data/domain",
    "data/updated",
    "control/feature-balloon",
    # written by the Linux kernel at boot and re-written by the agent when a
    # migration left a fresh tree without them; written by the agent on FreeBSD,
    # whose kernel handles the requests but advertises nothing (control.py)
    "control/feature-poweroff",
    "control/feature-reboot",
    "control/feature-suspend",
    # written again only when it was there at start (control.py REMEMBERED): whoever
    # advertised it, a migration's fresh tree loses it like the others
    "control/feature-vcpu-hotplug",
    # xapi_vif.ml assert_has_feature_static_ip_setting: VIF.configure_ipv4/ipv6 need it
    "control/feature-static-ip-setting",
    "feature/hotplug/vif",
    "feature/hotplug/vbd",
)

#: Keys whose change alone is "only memory moved": it does not bump data/updated.
MEMORY_KEYS = frozenset({"data/meminfo_total", "data/meminfo_free"})

#: Marks the end of a batch: squeezed takes its existence as "a guest agent
#: runs" (squeeze_xen.ml, get_guest_agent); xenopsd before 2025 watched it to
#: re-read the guest's data/ (xenops_server_xen.ml, interesting_paths_for_domain).
UPDATED_KEY = "data/updated"

#: xenopsd since 2025 no longer watches data/updated but still watches attr/,
#: and re-reads data/ whenever a watched path fires.  Rewriting this key
#: (same value) with a batch that changed data/ makes the change reach xapi
#: on those hosts too; xenstored fires watches on every write, changed or not.
NUDGE_KEY = "attr/PVAddons/Installed"

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def sanitise(value: str, limit: int = MAX_VALUE_BYTES) -> str:
    """Printable 7-bit ASCII, no leading/trailing blanks, at most ``limit`` bytes.

    Guest data goes to dom0 tools (XenCenter, xapi's database): control bytes,
    non-ASCII and oversized values are never passed through."""
    cleaned = _UNPRINTABLE.sub(" ", value).strip()
    return cleaned[:limit]


def owns(path: str) -> bool:
    """True if ``path`` is a key or below a subtree this agent owns."""
    return path in OWNED_KEYS or any(path == t or path.startswith(t + "/") for t in OWNED_TREES)


def tools_version(version: str) -> ToolsVersion:
    """The package version as xapi's four decimal integers.

    ``0.1.0`` -> 0/1/0/0; ``1.2.3.4`` -> 1/2/3/4; a pre/post/dev release number
    (``1.2.0.dev5``, ``1.2.0rc1``) becomes the build number; anything that is not a
    number becomes 0, because a non-integer makes xapi report "Unknown"."""
    numbers = [int(n) for n in re.findall(r"\d+", version)]
    parts = (numbers + [0, 0, 0, 0])[:4]
    return ToolsVersion(*parts)


@dataclass(frozen=True)
class Rendered:
    """The desired keys plus the address index assignment they used."""

    values: Dict[str, str]
    slots: Dict[str, Slots]


def _addresses(values: Dict[str, str], slots_out: Dict[str, Slots], previous: Mapping[str, Slots],
               base: str, addresses: Tuple[Address, ...], limit: int) -> None:
    for family in (4, 6):
        group = f"{base}/ipv{family}"
        chosen = assign_slots(previous.get(group, {}), [a for a in addresses if a.family == family], limit)
        slots_out[group] = chosen
        for address, slot in chosen.items():
            values[f"{group}/{slot}"] = address


def render(facts: Facts, network: Optional[NetworkView], previous_slots: Mapping[str, Slots],
           max_addresses: int = 16, advertise_balloon: bool = True,
           advertise_hotplug: bool = True) -> Rendered:
    """The complete desired state for this round (without ``data/updated``)."""
    values: Dict[str, str] = {}
    slots: Dict[str, Slots] = {}
    tools = facts.tools
    # xapi_pv_driver_version.ml: four decimal integers, else "Unknown" / not installed.
    values["attr/PVAddons/MajorVersion"] = str(tools.major)
    values["attr/PVAddons/MinorVersion"] = str(tools.minor)
    values["attr/PVAddons/MicroVersion"] = str(tools.micro)
    values["attr/PVAddons/BuildVersion"] = str(tools.build)
    values["attr/PVAddons/Installed"] = "1"
    if facts.os is not None:
        os = facts.os
        values["data/os_name"] = os.name
        values["data/os_distro"] = os.distro
        if os.major is not None:
            values["data/os_majorver"] = os.major
        if os.minor is not None or os.major is not None:
            # "12" has no minor: XenServer's agent reports 0 for RH-style releases
            values["data/os_minorver"] = os.minor if os.minor is not None else "0"
        values["data/os_uname"] = os.kernel
    if facts.memory is not None:
        values["data/meminfo_total"] = str(facts.memory.total_kib)
        values["data/meminfo_free"] = str(facts.memory.free_kib)
    if facts.names is not None:
        if facts.names.host_name:
            values["data/host_name_dns"] = facts.names.host_name
        if facts.names.domain:
            values["data/domain"] = facts.names.domain
    if facts.capabilities is not None:
        caps = facts.capabilities
        if advertise_balloon and caps.balloon:
            values["control/feature-balloon"] = "1"
        if advertise_hotplug and caps.hotplug_vif:
            values["feature/hotplug/vif"] = "1"
        if advertise_hotplug and caps.hotplug_vbd:
            values["feature/hotplug/vbd"] = "1"
    if network is not None:
        for vif, addresses in sorted(network.vifs.items()):
            _addresses(values, slots, previous_slots, f"attr/vif/{vif}", addresses, max_addresses)
        for vf, addresses in sorted(network.sriov.items()):
            _addresses(values, slots, previous_slots, f"xenserver/attr/net-sriov-vf/{vf}",
                       addresses, max_addresses)
    return Rendered(values={path: sanitise(value) for path, value in values.items()}, slots=slots)
