"""Whether the agent should online hot-added CPUs and memory blocks: the setting and the distro's udev rules.

A hot-added CPU or memory block arrives offline (see :mod:`xenguest_agent.hotplug`),
and many distributions already ship a udev rule that onlines it: RHEL's
``40-redhat.rules`` ("CPU hotadd request" / "Memory hotadd request"), Ubuntu's
``40-vm-hotadd.rules``, XenServer's own ``xen-vcpu-hotplug.rules``
(xenserver/xe-guest-utilities ``mk/xen-vcpu-hotplug.rules``: on ``add`` in
subsystem ``cpu``, echo 1 into ``/sys$devpath/online``).  Debian ships none
(its ``70-memory.rules`` is about DMI memory descriptions).  systemd's own rule set
has none either.

Settings ``hotplug.online_cpus`` / ``hotplug.online_memory``: ``true`` (always),
``false`` (never), ``auto`` (only when no udev rule does it, or udevd is not
running to apply one).

The rules reader is deliberately conservative in one direction: it says "the
distro does it" only for a rule it clearly recognises.  Onlining twice is
harmless (the kernel's ``online`` store accepts "1" for an online CPU; a memory
block that is already online refuses and the agent re-reads and sees it online),
while wrongly standing aside would leave the vCPU offline.

Rule syntax and precedence from udev(7) (systemd/systemd ``man/udev.xml``):
files ``*.rules`` in /etc/udev/rules.d, /run/udev/rules.d, /usr/local/lib/udev/rules.d,
/usr/lib/udev/rules.d and /lib/udev/rules.d; a file in an earlier directory
hides a same-named one in a later directory, and one that is empty or a symlink
to /dev/null disables it; ``#`` starts a comment; a trailing backslash continues
a line; a rule is comma-separated ``KEY[{attr}]OP"value"`` pairs; ``GOTO``
jumps forward to a ``LABEL``.  udevd's control socket is /run/udev/control
(``src/udev/udev-ctrl.c``).
"""

from __future__ import annotations

import fnmatch
import re

from xenguest_agent.host import Host
from xenguest_agent.hotplug import setting_value
from xenguest_agent.records import dataclass

RULES_DIRS = (
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/local/lib/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
)
UDEV_CONTROL = "/run/udev/control"

_PAIR = re.compile(r'\s*([A-Za-z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_LIMIT = 1 << 20


@dataclass(frozen=True)
class DistroRules:
    """The rules files (guest paths) found to online CPUs and memory blocks."""

    cpus: tuple[str, ...] = ()
    memory: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    act: bool
    reason: str


@dataclass(frozen=True)
class HotplugPolicy:
    """Whether to online hot-added CPUs and memory blocks, and why (for the log)."""

    cpus: Decision
    memory: Decision

    @property
    def online_cpus(self) -> bool:
        return self.cpus.act

    @property
    def online_memory(self) -> bool:
        return self.memory.act

    @classmethod
    def decide(cls, cpus_setting: str | bool, memory_setting: str | bool,
               rules: DistroRules, udev_running: bool) -> HotplugPolicy:
        """Pure: the policy for both settings given what the distro's rules do."""
        return cls(decide_one(cpus_setting, rules.cpus, udev_running),
                   decide_one(memory_setting, rules.memory, udev_running))


def decide_one(setting: str | bool, rule_files: tuple[str, ...], udev_running: bool) -> Decision:
    """Pure: act or not for one setting (``auto``/``true``/``false`` or a bool)."""
    value = setting_value(setting)
    if value == "true":
        return Decision(True, "setting is true")
    if value == "false":
        return Decision(False, "setting is false")
    if not rule_files:
        return Decision(True, "auto: no udev rule onlines them")
    if not udev_running:
        return Decision(True, f"auto: {rule_files[0]} would, but udevd is not running")
    return Decision(False, f"auto: {rule_files[0]} onlines them")


def detect_distro_rules(host: Host) -> DistroRules:
    """Read the active udev rules files under the host root."""
    cpus: list[str] = []
    memory: list[str] = []
    for path in active_rules_files(host):
        text = host.read_text(path, limit=_LIMIT)
        if not text:
            continue
        does_cpu, does_memory = rules_online(text)
        if does_cpu:
            cpus.append(path)
        if does_memory:
            memory.append(path)
    return DistroRules(tuple(cpus), tuple(memory))


def udev_running(host: Host) -> bool:
    return host.exists(UDEV_CONTROL)


def active_rules_files(host: Host) -> list[str]:
    """The rules files udevd would read, one per name, the earliest directory winning."""
    chosen: dict[str, str] = {}
    for directory in RULES_DIRS:
        for name in host.listdir(directory):
            if name.endswith(".rules") and name not in chosen:
                chosen[name] = f"{directory}/{name}"
    return [chosen[name] for name in sorted(chosen)]


def logical_lines(text: str) -> list[str]:
    """Comment-free rule lines with backslash continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending.strip():
        lines.append(pending)
    return lines


def parse_rule(line: str) -> list[tuple[str, str, str, str]] | None:
    """``(key, attr, op, value)`` for each pair, or None when the line is not well formed."""
    pairs = []
    pos = 0
    while pos < len(line):
        match = _PAIR.match(line, pos)
        if match is None:
            return None
        key, attr, op, value = match.groups()
        pairs.append((key.upper(), attr or "", op, value))
        pos = match.end()
    return pairs


def _matches(pattern: str, value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def rules_online(text: str) -> tuple[bool, bool]:
    """Pure: whether a rules file onlines hot-added (CPUs, memory blocks).

    A rule counts when, on an ``add`` event (or with no ACTION test) in subsystem
    ``cpu``/``memory`` (on the rule itself or from an enclosing
    ``SUBSYSTEM!="x", GOTO="L"`` ... ``LABEL="L"`` block), it assigns
    ``ATTR{online}="1"`` (CPUs, memory), ``ATTR{state}`` to ``online*`` or to an
    ``$env{...}``/``%E{...}`` substitution (memory: RHEL picks online or
    online_movable through ENV), or RUNs a command naming ``online``.
    """
    found = {"cpu": False, "memory": False}
    scopes: dict[str, dict[str, str]] = {}  # open GOTO label -> conditions implied inside it
    for line in logical_lines(text):
        pairs = parse_rule(line)
        if pairs is None:
            continue
        keys = {key for key, _attr, _op, _value in pairs}
        label = next((v for k, _a, _o, v in pairs if k == "LABEL"), None)
        if label is not None and keys == {"LABEL"}:
            scopes.pop(label, None)
            continue
        goto = next((v for k, _a, o, v in pairs if k == "GOTO" and o in ("=", ":=")), None)
        if goto is not None:
            implied = {k: v for k, _a, o, v in pairs if o == "!=" and k in ("SUBSYSTEM", "ACTION")}
            if implied and len(implied) == len(pairs) - 1:
                scopes.setdefault(goto, {}).update(implied)
            continue
        conditions: dict[str, str] = {}
        for implied in scopes.values():
            conditions.update(implied)
        for key, _attr, op, value in pairs:
            if op == "==" and key in ("SUBSYSTEM", "ACTION"):
                conditions[key] = value
        action = conditions.get("ACTION")
        if action is not None and not _matches(action, "add"):
            continue
        subsystem = conditions.get("SUBSYSTEM", "")
        for name in ("cpu", "memory"):
            if subsystem and _matches(subsystem, name) and _assigns_online(pairs, name):
                found[name] = True
    return found["cpu"], found["memory"]


def _assigns_online(pairs: list[tuple[str, str, str, str]], subsystem: str) -> bool:
    for key, attr, op, value in pairs:
        if op not in ("=", ":=", "+="):
            continue
        if key == "ATTR" and attr == "online" and value == "1":
            return True
        if key == "ATTR" and attr == "state" and subsystem == "memory" and (
                value.startswith("online") or "$env{" in value or "%E{" in value):
            return True
        if key == "RUN" and "online" in value:
            return True
    return False
