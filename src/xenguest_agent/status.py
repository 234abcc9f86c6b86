"""``xenguest-agent status``: what XenCenter and Xen Orchestra will show for this guest, and why.

Reads the guest's own XenStore home (:func:`read_home`, bounded, per-key errors tolerated),
runs it through the model of xapi (:mod:`xenguest_agent.xapi`, :mod:`xenguest_agent.xapi_ops`)
and adds what only the guest knows (:mod:`xenguest_agent.guestprobe`) and the daemon's state
file (:mod:`xenguest_agent.statefile`).  :func:`diagnose` is pure: the golden tests feed it
trees written by hand from xapi's rules.  Exit status: 0 when nothing xapi needs is missing,
1 with one line per missing thing (:attr:`Report.problems`), 69 without XenStore (the CLI).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from xenguest_agent.guestprobe import DomainType, OtherAgent
from xenguest_agent.records import dataclass, field
from xenguest_agent.xapi import XapiView, read_guest
from xenguest_agent.xapi_ops import Verdict, allowed_operations, drivers_key
from xenguest_agent.xenstore import (
    XenStore,
    XenStoreError,
    XenStoreUnavailable,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the parts of the home xenopsd and squeezed read (xapi.XENOPSD_ROOTS, squeezed_view), and
#: device/ for the PV-driver evidence xenopsd takes from backend states
HOME_ROOTS = ("attr", "control", "data", "drivers", "feature", "memory", "xenserver/attr", "device")
MAX_NODES = 4096
MAX_DEPTH = 8
TOOLS_MISSING = "XenCenter shows 'tools not installed' (PV_drivers_version Unknown)"
#: xenbus.h XenbusStateConnected: xenopsd's evidence of PV drivers
XENBUS_CONNECTED = "4"


@dataclass
class HomeRead:
    """``tree``: {relative path: value} in xenstored's listing order; ``unreadable``: (path,
    errno name) refused for one node; ``truncated``: the node bound was reached."""

    tree: dict[str, str] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def _try(read: HomeRead, path: str, request: Any) -> tuple[bool, Any]:
    try:
        return True, request(path)
    except XenStoreUnavailable:
        raise
    except XenStoreError as exc:  # about this node only (KEY_ERRORS and any other refusal)
        read.unreadable.append((path, _errname(exc.errno)))
        return False, None


def read_home(store: XenStore, roots: tuple[str, ...] = HOME_ROOTS, max_nodes: int = MAX_NODES,
              max_depth: int = MAX_DEPTH) -> HomeRead:
    """Every node below ``roots`` (depth-first, children in listing order), at most
    ``max_nodes`` nodes and ``max_depth`` levels; XenStoreUnavailable propagates."""
    read = HomeRead()
    stack: list[tuple[str, int]] = [(root, 0) for root in reversed(roots)]
    while stack:
        if len(read.tree) >= max_nodes:
            read.truncated = True
            break
        path, depth = stack.pop()
        ok, value = _try(read, path, store.read)
        if ok and value is not None:
            read.tree[path] = value
        if not ok or value is None or depth >= max_depth:
            continue
        ok, children = _try(read, path, store.ls)
        if ok and children:
            stack.extend((f"{path}/{child}", depth + 1) for child in reversed(children))
    return read


def pv_drivers_detected(store: XenStore, tree: Mapping[str, str]) -> bool | None:
    """xenopsd's evidence (``maybe_update_pv_drivers_detected``): some vif or vbd whose
    backend is in state Connected.  None when no backend state could be read."""
    unread = False
    for path, backend in tree.items():
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "device" or parts[3] != "backend" or not backend:
            continue
        try:
            state = store.read(f"{backend}/state")
        except XenStoreUnavailable:
            raise
        except XenStoreError:
            unread = True
            continue
        if state == XENBUS_CONNECTED:
            return True
    return None if unread else False


@dataclass(frozen=True)
class Daemon:
    """The daemon as its state file tells (``state`` None: no readable file)."""

    path: str
    state: dict[str, Any] | None
    running: bool


@dataclass(frozen=True)
class Report:
    view: XapiView
    domain: DomainType
    operations: tuple[Verdict, ...]
    pv_drivers_detected: bool | None
    others: tuple[OtherAgent, ...]
    daemon: Daemon
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def exit_status(self) -> int:
        return 1 if self.problems else 0


def _drivers_problem(view: XapiView) -> list[str]:
    if view.drivers.detected:
        return []
    key = drivers_key(view)
    reason = view.drivers.reason or ""
    if "not an integer" in reason:
        value = view.metrics.pv_drivers_version.get(reason.split(" ", 1)[0], "")
        return [f"{key} is not an integer ({value!r}): {TOOLS_MISSING}"]
    return [f"{key} missing: {TOOLS_MISSING}"]


def _key_problems(tree: Mapping[str, str], view: XapiView) -> list[str]:
    problems = _drivers_problem(view)
    if "data/os_name" not in tree:
        problems.append("data/os_name missing: XenCenter and Xen Orchestra show no operating system")
    if not view.squeezed.has_guest_agent:
        problems.append("data/updated missing: squeezed sees no guest agent")
    free = tree.get("data/meminfo_free")
    if free is None:
        problems.append("data/meminfo_free missing: the VM's memory_internal_free RRD stays empty")
    elif view.squeezed.memory_internal_free is None:
        problems.append(f"data/meminfo_free is not an integer ({free!r}): "
                        "the VM's memory_internal_free RRD stays empty")
    return problems


def _daemon_problems(daemon: Daemon) -> list[str]:
    state = daemon.state
    if state is None:
        return [(f"{daemon.path} missing or unreadable: the xenguest-agent daemon is not running, "
                "so nothing republishes after a migration or a change")]
    problems = []
    if not daemon.running:
        problems.append(f"{daemon.path}: the daemon (pid {state.get('pid', '?')}) is not running; "
                        f"it last published {state.get('last_publish', 'never')}")
    elif state.get("connected") is False:
        problems.append(f"{daemon.path}: the daemon is not connected to XenStore "
                        f"({state.get('xenstore', '?')})")
    problems += [f"{path}: xenstored refused the daemon's write ({code})"
                 for path, code in state.get("refused", [])]
    return problems


def diagnose(tree: Mapping[str, str], domain: DomainType, detected: bool | None,
             others: tuple[OtherAgent, ...], daemon: Daemon,
             unreadable: tuple[tuple[str, str], ...] = (), truncated: bool = False) -> Report:
    """The report for a home ``tree`` (relative paths, xenstored's order) and the guest facts."""
    view = read_guest(tree)
    operations = allowed_operations(view, domain.kind, detected)
    problems = _key_problems(tree, view)
    notes: list[str] = []
    for verdict in operations:
        if verdict.allowed:
            continue
        line = f"{verdict.key}: xapi refuses {verdict.op} ({verdict.error}): {verdict.why}"
        (notes if verdict.error == "VM_NON_SUSPENDABLE" else problems).append(line)
    for agent in others:
        if agent.running:
            problems.append(f"{agent.name} is also publishing ({agent.evidence}): it writes the "
                            "same keys; stop one of the two agents")
        else:
            notes.append(f"{agent.name} is installed ({agent.evidence})")
    problems += _daemon_problems(daemon)
    if domain.kind == "unknown":
        notes.append(f"domain type unknown ({domain.source}): judged as HVM, the strictest case")
    if detected is None:
        notes.append("no backend state could be read: PV_drivers_detected taken as false")
    notes += [f"{path}: could not read it ({code})" for path, code in unreadable]
    if truncated:
        notes.append(f"the home has more than {MAX_NODES} nodes: the rest was not read")
    return Report(view, domain, operations, detected, others, daemon, tuple(problems), tuple(notes))


def _json_verdict(v: Verdict) -> dict[str, Any]:
    return {"op": v.op, "allowed": v.allowed, "key": v.key, "why": v.why, "error": v.error}


def to_json(report: Report) -> dict[str, Any]:
    """The report as data for scripts (``--format json``)."""
    view, drivers = report.view, report.view.drivers
    metrics = view.metrics
    return {
        "domain_type": {"kind": report.domain.kind, "source": report.domain.source},
        "PV_drivers_version": {
            "kind": drivers.kind, "major": drivers.major, "minor": drivers.minor,
            "micro": drivers.micro, "build": drivers.build,
            "key": None if drivers.detected else drivers_key(view), "reason": drivers.reason,
            "map": dict(metrics.pv_drivers_version)},
        "PV_drivers_detected": report.pv_drivers_detected,
        "os_version": dict(metrics.os_version), "netbios_name": dict(metrics.netbios_name),
        "networks": dict(metrics.networks), "memory": dict(metrics.memory),
        "other": dict(metrics.other),
        "can_use_hotplug_vif": metrics.can_use_hotplug_vif,
        "can_use_hotplug_vbd": metrics.can_use_hotplug_vbd,
        "squeezed": {"can_balloon": view.squeezed.can_balloon,
                     "has_guest_agent": view.squeezed.has_guest_agent,
                     "memory_internal_free": view.squeezed.memory_internal_free},
        "operations": [_json_verdict(v) for v in report.operations],
        "other_agents": [{"name": a.name, "pid": a.pid, "running": a.running,
                          "evidence": a.evidence} for a in report.others],
        "daemon": {"state_file": report.daemon.path, "running": report.daemon.running,
                   "state": report.daemon.state},
        "problems": list(report.problems), "notes": list(report.notes),
        "exit_status": report.exit_status,
    }


def _map_lines(title: str, values: Mapping[str, str]) -> list[str]:
    if not values:
        return [f"{title}: (none)"]
    return [f"{title}:"] + [f"  {k} = {v}" for k, v in values.items()]


def to_text(report: Report) -> str:
    """The report for a person: what xapi derives, then why, then what is missing."""
    view, drivers, metrics = report.view, report.view.drivers, report.view.metrics
    if drivers.detected:
        pv = f"{drivers.kind} {drivers.major}.{drivers.minor}.{drivers.micro} build {drivers.build}"
    else:
        pv = f"Unknown ({drivers_key(view)}: {drivers.reason}): tools not installed"
    lines = [f"domain type: {report.domain.kind} ({report.domain.source})",
             f"PV_drivers_version: {pv}",
             f"PV_drivers_detected: {report.pv_drivers_detected}"]
    lines += _map_lines("os_version", metrics.os_version)
    lines += _map_lines("netbios_name", metrics.netbios_name)
    lines += _map_lines("networks", metrics.networks)
    lines += _map_lines("memory", metrics.memory)
    lines += _map_lines("other", metrics.other)
    free = view.squeezed.memory_internal_free
    lines += [f"hot-plug claims: vif {metrics.can_use_hotplug_vif}, vbd {metrics.can_use_hotplug_vbd}",
              (f"squeezed: can balloon {view.squeezed.can_balloon}, guest agent "
              f"{view.squeezed.has_guest_agent}, memory_internal_free "
              f"{'-' if free is None else f'{free} KiB'}"),
              "operations (allowed_operations of the running VM):"]
    lines += [f"  {v.op:<20} {'allowed' if v.allowed else 'REFUSED':<8} {v.key}: {v.why}"
              for v in report.operations]
    others = ", ".join(f"{a.name} ({a.evidence})" for a in report.others) or "none"
    lines.append(f"other agents: {others}")
    state = report.daemon.state or {}
    lines.append(f"daemon: {'running' if report.daemon.running else 'not running'}"
                 f" (state file {report.daemon.path}"
                 + "".join(f", {k} {state[k]}" for k in
                           ("pid", "version", "started", "last_publish", "connected", "xenstore")
                           if k in state) + ")")
    lines += ["notes:"] + [f"  {n}" for n in report.notes] if report.notes else ["notes: (none)"]
    if report.problems:
        lines += ["missing:"] + [f"  {p}" for p in report.problems]
    else:
        lines.append("missing: nothing: xapi has everything it needs")
    return "\n".join(lines) + "\n"
