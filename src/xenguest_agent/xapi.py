"""An executable model of how a XenServer/XCP-ng host reads a guest's XenStore tree.

Written from xapi-project/xen-api's source, not from this agent, so that tests (and a
``status`` command) can say what XenCenter and Xen Orchestra will show for a tree:

1. xenopsd snapshots part of the guest's home into ``state.guest_agent``
   (``ocaml/xenopsd/xc/xenops_server_xen.ml``, ``VM.get_state``: ``ls_lR`` over a fixed
   list of roots, each with a depth limit) -> :func:`xenopsd_snapshot`.
2. xapi looks keys up and lists directories in that snapshot (``ocaml/xapi/xapi_xenops.ml``,
   ``update_vm_internal``: ``lookup`` is the first match, ``list`` the distinct next path
   components of every snapshot path that *starts with* the directory as a string) and builds
   VM_guest_metrics (``ocaml/xapi/xapi_guest_agent.ml``, ``get_initial_guest_metrics``)
   -> :func:`guest_metrics`.
3. PV_drivers_version decides "tools installed" (``ocaml/xapi/xapi_pv_driver_version.ml``,
   ``get_drivers_version``) -> :func:`drivers_version`.
4. squeezed and the rrdd plugin read the live tree directly (``ocaml/squeezed/src/squeeze_xen.ml``
   ``get_feature_balloon``/``get_guest_agent``; ``ocaml/xcp-rrdd/bin/rrdp-squeezed/rrdp_squeezed.ml``
   ``MemoryActions.watch_fired``) -> :func:`squeezed_view`.

:func:`read_guest` runs all four and returns an :class:`XapiView` (``metrics``: VM_guest_metrics
as xapi would store it; ``drivers``: PV_drivers_version's verdict and why; ``squeezed``: balloon,
guest-agent and memory-RRD figures).  :func:`xenopsd_notices` says whether a write reaches xapi at
once.  Input: ``{path: value}`` relative to the domain's home
(``attr/vif/0/ipv4/0``), every node the guest has (directories are implied by their
children).  Directory listings come in the order the mapping first names a child, which
stands for xenstored's listing order; only failure cases depend on it (see ``_networks``).

Not modelled: xenopsd's byte quota on the snapshot (by default far above what a
guest agent writes), its UTF-8 recoding (values are taken as given), Windows ``drivers/N``
version strings; allowed operations are in :mod:`xenguest_agent.xapi_ops`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from xenguest_agent.records import dataclass, field

Tree = Mapping[str, str]
#: What xenopsd hands xapi: (path, value) pairs in xenopsd's order.
Snapshot = tuple[tuple[str, str], ...]

#: xenops_server_xen.ml ``VM.get_state``: the roots xenopsd reads, the subtree it skips and
#: the depth it descends to ("keys at depth+1 are still read").
XENOPSD_ROOTS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("control", (), 0),
    ("feature/hotplug", (), 0),
    ("xenserver/attr", (), 3),
    ("attr", ("attr/os/hotfixes",), 3),
    ("drivers", (), 0),
    ("data", (), 0),
    ("data/service", (), 1),
    ("data/pvs_target", (), 0),
)

#: xenops_server_xen.ml ``Actions.interesting_paths_for_domain``: the guest-home paths xenopsd
#: watches (a watch covers the subtree); a change elsewhere reaches xapi only with the next one.
#: ``data/updated`` left the list in June 2025 (xen-api commit ad5cbe5e).
XENOPSD_WATCHED = ("attr", "data/ts", "data/service", "data/pvs_target", "memory/target",
                   "memory/uncooperative", "console/vnc-port", "console/tc-port", "control",
                   "device", "rrd", "vm-data", "feature", "xenserver/attr")

#: xapi_globs.ml ``guest_service_keys`` (default): data/<key> copied into ``services``.
GUEST_SERVICE_KEYS = ("pvs_target/target_software_version",)

#: xapi_guest_agent.ml: XenStore key -> map key, per VM_guest_metrics field.
PV_DRIVERS_KEYS = (("attr/PVAddons/MajorVersion", "major"), ("attr/PVAddons/MinorVersion", "minor"),
                   ("attr/PVAddons/MicroVersion", "micro"), ("attr/PVAddons/BuildVersion", "build"),
                   ("attr/PVAddons/Application", "application"))
OS_VERSION_KEYS = (("data/os_name", "name"), ("data/os_uname", "uname"), ("data/os_distro", "distro"),
                   ("data/os_majorver", "major"), ("data/os_minorver", "minor"),
                   ("attr/os/spmajor", "spmajor"), ("attr/os/spminor", "spminor"))
MEMORY_KEYS = (("data/meminfo_free", "free"), ("data/meminfo_total", "total"))

#: xapi_guest_agent.ml ``networks``, ``find_eths``: legacy interface name prefixes (sic: "emp").
LEGACY_PREFIXES = ("eth", "xenbr", "eno", "ens", "emp", "enx")

_INT_BODY = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def ocaml_int(text: str, bits: int = 63) -> int | None:
    """OCaml's ``int_of_string`` (``bits=63``) / ``Int64.of_string`` (``bits=64``), or None
    where it raises ``Failure``: optional sign, ``0x``/``0o``/``0b``/``0u`` prefixes, ``_``
    anywhere after the first digit, no blanks; decimal must fit the signed range, other bases
    the unsigned one and wrap (OCaml runtime ``ints.c``, ``parse_intnat``)."""
    s, sign = text, 1
    if s and s[0] in "-+":
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    base, signed = 10, True
    if len(s) >= 2 and s[0] == "0" and s[1] in "xXoObBuU":
        base, signed = {"x": 16, "o": 8, "b": 2, "u": 10}[s[1].lower()], False
        s = s[2:]
    if not s or s[0] not in _INT_BODY[base] or any(c not in _INT_BODY[base] + "_" for c in s):
        return None
    value = int(s.replace("_", ""), base)
    if signed:
        limit = 1 << (bits - 1)
        if value > limit or (sign > 0 and value == limit):
            return None
        return sign * value
    if value >= 1 << bits:
        return None
    value = sign * value % (1 << bits)
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _frozen(pairs: Iterable[tuple[str, str]]) -> Mapping[str, str]:
    """A VM_guest_metrics map from xapi's association list: the first binding of a key
    wins, as ``List.assoc`` and the database's map conversion see it."""
    result: dict[str, str] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return MappingProxyType(result)


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


# --- 1. xenopsd ------------------------------------------------------------------------------

def _nodes(tree: Tree) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Every node (values, implied directories as "") and each node's children in order."""
    values: dict[str, str] = {}
    children: dict[str, list[str]] = {}
    for path, value in tree.items():
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            node = "/".join(parts[:i])
            parent = "/".join(parts[:i - 1])
            kids = children.setdefault(parent, [])
            if parts[i - 1] not in kids:
                kids.append(parts[i - 1])
            values.setdefault(node, "")
        values["/".join(parts)] = value
    return values, children


def xenopsd_snapshot(tree: Tree) -> Snapshot:
    """``state.guest_agent`` as xenopsd builds it: for each root, the node's value, then its
    children recursively while the depth allows (the children of a depth-0 node are still
    read), skipping excluded subtrees; entries are accumulated by prepending."""
    values, children = _nodes(tree)
    acc: list[tuple[str, str]] = []

    def walk(path: str, excludes: tuple[str, ...], depth: int) -> None:
        if path in excludes:
            return
        if path in values:
            acc.insert(0, (path, values[path]))
        if depth < 0:
            return
        for child in children.get(path, []) if path in values else []:
            walk(f"{path}/{child}", excludes, depth - 1)

    for root, excludes, depth in XENOPSD_ROOTS:
        walk(root, excludes, depth)
    return tuple(acc)


def xenopsd_notices(path: str) -> bool:
    """Whether writing ``path`` (relative to the home) fires one of xenopsd's watches, which
    makes xapi re-read the whole snapshot; ``data/os_name`` alone does not."""
    return any(path == w or path.startswith(w + "/") for w in XENOPSD_WATCHED)


# --- 2. xapi ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestMetrics:
    """What xapi computes for VM_guest_metrics from one snapshot.

    ``memory`` is computed but not stored by current xapi (``all`` ignores it: the figures
    reach users as RRDs through rrdp-squeezed); the other maps are stored as they are here.
    Hot-plug fields are xapi's tristate: ``"yes"``, ``"no"`` or ``"unspecified"``."""

    pv_drivers_version: Mapping[str, str] = field(default_factory=_empty)
    os_version: Mapping[str, str] = field(default_factory=_empty)
    netbios_name: Mapping[str, str] = field(default_factory=_empty)
    networks: Mapping[str, str] = field(default_factory=_empty)
    other: Mapping[str, str] = field(default_factory=_empty)
    memory: Mapping[str, str] = field(default_factory=_empty)
    device_id: Mapping[str, str] = field(default_factory=_empty)
    services: Mapping[str, str] = field(default_factory=_empty)
    can_use_hotplug_vbd: str = "unspecified"
    can_use_hotplug_vif: str = "unspecified"


class _Reader:
    """xapi_xenops.ml ``update_vm_internal``'s ``lookup`` and ``list`` (here ``ls``) over a snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def lookup(self, key: str) -> str | None:
        return next((v for k, v in self.snapshot if k == key), None)

    def ls(self, directory: str) -> list[str]:
        directory = directory.removeprefix("/")
        found = []
        for path, _ in self.snapshot:
            if path.startswith(directory):  # a string prefix: "attr/vif/1" matches "attr/vif/10"
                rest = [p for p in path[len(directory):].split("/") if p]
                if rest:
                    found.append(rest[0])
        # Listext.setify: drop duplicates, keeping each one's last occurrence
        return [x for i, x in enumerate(found) if x not in found[i + 1:]]

    def to_map(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(mapkey, value) for key, mapkey in pairs
                if (value := self.lookup(key)) is not None]


def _networks(read: _Reader, path: str, vif_type: str) -> list[tuple[str, str]]:
    """xapi_guest_agent.ml ``networks``: (XenStore key, networks key) pairs."""
    base = f"{path}/{vif_type}"
    vifs: list[tuple[str, str]] = []
    for vif in read.ls(base):  # find_vifs: fold, prepending
        vifs.insert(0, (f"{base}/{vif}", vif))
    if not vifs:
        return _legacy_networks(read, path)
    pairs: list[tuple[str, str]] = []
    for vif_path, vif in vifs:
        acc: list[tuple[str, str]] = []
        for ip_ver in [v for v in read.ls(vif_path) if v in ("ipv4", "ipv6")]:
            indexes = read.ls(f"{vif_path}/{ip_ver}")
            numbers = [ocaml_int(i) for i in indexes]
            if len(indexes) > 1 and None in numbers:
                # List.stable_sort's comparison raises on a non-integer index; the handler
                # returns [] and so drops what earlier ip_vers of this VIF had found too
                acc = []
                continue
            ordered = [i for _, i in sorted(zip(numbers, indexes), key=lambda p: p[0] or 0)]
            found: list[tuple[str, str]] = []
            for index in ordered:
                left, right = f"{vif_path}/{ip_ver}/{index}", f"{vif}/{ip_ver}/{index}"
                if not found and ip_ver == "ipv4":
                    found = [(left, f"{vif}/ip"), (left, right)]
                else:
                    found.insert(0, (left, right))
            acc = found + acc
        pairs += acc
    return pairs


def _legacy_networks(read: _Reader, path: str) -> list[tuple[str, str]]:
    """``find_eths``/``find_all_ips``: attr/eth0/ip and attr/eth0/ipv6/N/addr."""
    eths: list[tuple[str, str]] = []
    for name in read.ls(path):
        prefix = next((p for p in LEGACY_PREFIXES if name.startswith(p)), None)
        if prefix is not None:
            eths.insert(0, (f"{path}/{name}", name[len(prefix):]))
    pairs: list[tuple[str, str]] = []
    for eth_path, n in eths:
        pairs += [(f"{eth_path}/ip", f"{n}/ip"), (f"{eth_path}/ip", f"{n}/ipv4/0")]
        if "ipv6" in read.ls(eth_path):
            pairs += [(f"{eth_path}/ipv6/{i}/addr", f"{n}/ipv6/{i}")
                      for i in read.ls(f"{eth_path}/ipv6")]
    return pairs


def _tristate(value: str | None) -> str:
    """xapi_guest_agent.ml ``get_tristate``: exactly "0" or "1", anything else unspecified."""
    return {"0": "no", "1": "yes"}.get(value or "", "unspecified")


def guest_metrics(snapshot: Snapshot, service_keys: Sequence[str] = GUEST_SERVICE_KEYS) -> GuestMetrics:
    """xapi_guest_agent.ml ``get_initial_guest_metrics`` on xenopsd's snapshot."""
    read = _Reader(snapshot)
    pv = read.to_map(PV_DRIVERS_KEYS)
    if pv and not any(k == "micro" for k, _ in pv):
        pv.insert(0, ("micro", "-1"))  # "default this field to -1 if it's not present"
    domain = read.to_map([("data/domain", "dns_domain")])
    names = read.to_map([("data/host_name_dns", "host_name")])
    if domain:
        names = [(k, f"{v}.{domain[0][1]}") for k, v in names]
    cant_suspend = read.lookup("data/cant_suspend_reason")
    other: list[tuple[str, str]] = []
    for name in read.ls("control"):
        value = read.lookup(f"control/{name}")
        if value is None:
            continue
        if name == "feature-suspend" and cant_suspend is not None:
            other.append(("data-cant-suspend-reason", cant_suspend))
        else:
            other.append((name, value))
    ts = read.lookup("data/ts")
    if ts is not None:
        other.append(("data-ts", ts))
    services = [(f"{s}/{k}", read.lookup(f"data/service/{s}/{k}") or "")
                for s in read.ls("data/service") for k in read.ls(f"data/service/{s}")]
    globs = [(k, v) for k in service_keys if (v := read.lookup(f"data/{k}")) is not None]
    services = services[::-1] + globs[::-1]  # List.rev_append services res
    networks = read.to_map(_networks(read, "attr", "vif")
                           + _networks(read, "xenserver/attr", "net-sriov-vf"))
    return GuestMetrics(
        pv_drivers_version=_frozen(pv), os_version=_frozen(read.to_map(OS_VERSION_KEYS)),
        netbios_name=_frozen(names), networks=_frozen(networks), other=_frozen(other),
        memory=_frozen(read.to_map(MEMORY_KEYS)),
        device_id=_frozen(read.to_map([("data/device_id", "device_id")])),
        services=_frozen(services),
        can_use_hotplug_vbd=_tristate(read.lookup("feature/hotplug/vbd")),
        can_use_hotplug_vif=_tristate(read.lookup("feature/hotplug/vif")))


# --- 3. PV drivers version -------------------------------------------------------------------

@dataclass(frozen=True)
class DriversVersion:
    """xapi_pv_driver_version.ml ``t``: ``kind`` is "Linux", "Windows" or "Unknown" (XenCenter:
    tools not installed).  ``reason`` names the map key that made it Unknown."""

    kind: str
    major: int = -1
    minor: int = -1
    micro: int = -1
    build: int = -1
    reason: str | None = None

    @property
    def detected(self) -> bool:
        """``has_pv_drivers``."""
        return self.kind != "Unknown"


def drivers_version(metrics: GuestMetrics) -> DriversVersion:
    """``get_drivers_version``: major and minor must be present and OCaml integers; micro and
    build default to -1 when absent but must be integers when present."""
    pv = metrics.pv_drivers_version
    numbers: dict[str, int] = {}
    for key in ("major", "minor", "micro", "build"):
        if key not in pv:
            if key in ("major", "minor"):
                return DriversVersion("Unknown", reason=f"{key} missing")
            numbers[key] = -1
            continue
        number = ocaml_int(pv[key])
        if number is None:
            return DriversVersion("Unknown", reason=f"{key} not an integer: {pv[key]!r}")
        numbers[key] = number
    kind = "Windows" if metrics.os_version.get("distro") == "windows" else "Linux"
    return DriversVersion(kind, numbers["major"], numbers["minor"], numbers["micro"], numbers["build"])


# --- 4. squeezed and rrdp-squeezed -----------------------------------------------------------

@dataclass(frozen=True)
class Squeezed:
    """``can_balloon``/``has_guest_agent``: squeeze_xen.ml reads the keys and only asks whether
    they exist.  ``memory_internal_free``: the VM RRD's KiB figure rrdp-squeezed takes from
    ``data/meminfo_free`` (``Int64.of_string``; None if absent or unparsable)."""

    can_balloon: bool
    has_guest_agent: bool
    memory_internal_free: int | None


def squeezed_view(tree: Tree) -> Squeezed:
    values, _ = _nodes(tree)
    free = values.get("data/meminfo_free")
    return Squeezed(can_balloon="control/feature-balloon" in values,
                    has_guest_agent="data/updated" in values,
                    memory_internal_free=None if free is None else ocaml_int(free, bits=64))


# --- all of it -------------------------------------------------------------------------------

@dataclass(frozen=True)
class XapiView:
    """What the host makes of a guest's tree."""

    metrics: GuestMetrics
    drivers: DriversVersion
    squeezed: Squeezed


def read_guest(tree: Tree, service_keys: Sequence[str] = GUEST_SERVICE_KEYS) -> XapiView:
    """Run the whole chain on a guest's tree (relative paths, as in the module docstring)."""
    metrics = guest_metrics(xenopsd_snapshot(tree), service_keys)
    return XapiView(metrics=metrics, drivers=drivers_version(metrics), squeezed=squeezed_view(tree))

