"""The agent's configuration: one frozen record, read from YAML, then overridden
by the command line.

Defaults live here, in code.  Unknown keys and wrong types are errors that name
the file, the line and the key (``config.yaml:7: network.max_addresses: expected
an integer >= 1, got 'many'``), because a typo silently ignored is a setting an
administrator believes is in force when it is not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple

if TYPE_CHECKING:  # PyYAML is imported only when a config file is read (memory: ~3 MiB)
    import yaml

LINUX_CONFIG_PATH = "/etc/xenguest-agent/config.yaml"
FREEBSD_CONFIG_PATH = "/usr/local/etc/xenguest-agent/config.yaml"

LOG_LEVELS = ("debug", "info", "warning", "error")
CONTROL_MODES = ("auto", "agent", "observe")


class ConfigError(Exception):
    """A configuration value is unusable.  ``str()`` names file, line and key."""

    def __init__(self, message: str, source: str = "<config>", line: Optional[int] = None,
                 key: Optional[str] = None) -> None:
        where = source if line is None else f"{source}:{line}"
        what = f"{key}: {message}" if key else message
        super().__init__(f"{where}: {what}")
        self.source = source
        self.line = line
        self.key = key


@dataclass(frozen=True)
class MemoryConfig:
    """When ``data/meminfo_free`` is re-published (hysteresis, see docs/keys.md)."""

    threshold_kib: int = 16384      # absolute change that triggers a publish
    threshold_percent: float = 1.0  # relative change (of total) that triggers a publish
    min_interval: float = 5.0       # never publish memory more often than this
    max_age: float = 600.0          # publish at least this often when it moved at all


@dataclass(frozen=True)
class NetworkConfig:
    """Which interfaces are reported and how much of them."""

    include: Tuple[str, ...] = ()       # fnmatch patterns; empty = all
    exclude: Tuple[str, ...] = ("lo",)  # fnmatch patterns, applied after include
    max_addresses: int = 16             # per VIF and per address family
    static_vifs: Tuple[Tuple[str, int], ...] = ()  # interface name -> VIF id, overrides detection


@dataclass(frozen=True)
class FeatureConfig:
    """What the agent may advertise to the toolstack."""

    balloon: bool = True   # control/feature-balloon when a balloon driver exists
    hotplug: bool = True   # feature/hotplug/{vif,vbd} when the front-ends exist


@dataclass(frozen=True)
class ControlConfig:
    """How ``control/shutdown`` requests are handled (see docs/control.md)."""

    mode: str = "auto"
    grace: float = 2.0
    pm_freeze_timeout: Optional[int] = 300  # seconds; Linux /sys/power/pm_freeze_timeout
    hook_timeout: float = 30.0
    commands: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # request -> argv, overrides the OS default


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know, immutable once built."""

    xenstore: Optional[str] = None     # None: the per-OS default device
    interval: float = 300.0            # safety sweep with network events: full re-collection (s)
    poll_interval: float = 5.0         # everything, when no network event source exists (s)
    log_level: str = "info"
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    source: str = "<defaults>"


# --- validation -------------------------------------------------------------------------

Check = Callable[[Any], Any]


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("expected a number > 0")
    return float(value)


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("expected a number >= 0")
    return float(value)


def _count(minimum: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _choice(*choices: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value.lower()
    return check


def _optional(check: Check) -> Check:
    def wrapped(value: Any) -> Any:
        return None if value is None else check(value)
    return wrapped


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _patterns(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of interface name patterns")
    return tuple(value)


def _vif_map(value: Any) -> Tuple[Tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of interface name to VIF id")
    out = []
    for name, vif in value.items():
        if not isinstance(name, str) or isinstance(vif, bool) or not isinstance(vif, int) or vif < 0:
            raise ValueError("expected interface name: VIF id (an integer >= 0)")
        out.append((name, vif))
    return tuple(sorted(out))


def _commands(value: Any) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of request (poweroff, reboot, halt) to a command list")
    out = []
    for request, argv in value.items():
        if request not in ("poweroff", "reboot", "halt"):
            raise ValueError(f"unknown request {request!r} (poweroff, reboot, halt)")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise ValueError(f"{request}: expected a non-empty list of arguments (no shell)")
        out.append((request, tuple(argv)))
    return tuple(sorted(out))


_SECTIONS: Dict[str, Tuple[type, Dict[str, Check]]] = {
    "memory": (MemoryConfig, {
        "threshold_kib": _count(0),
        "threshold_percent": _non_negative_number,
        "min_interval": _non_negative_number,
        "max_age": _positive_number,
    }),
    "network": (NetworkConfig, {
        "include": _patterns,
        "exclude": _patterns,
        "max_addresses": _count(1),
        "static_vifs": _vif_map,
    }),
    "features": (FeatureConfig, {"balloon": _boolean, "hotplug": _boolean}),
    "control": (ControlConfig, {
        "mode": _choice(*CONTROL_MODES),
        "grace": _non_negative_number,
        "pm_freeze_timeout": _optional(_count(1)),
        "hook_timeout": _positive_number,
        "commands": _commands,
    }),
}

_TOP: Dict[str, Check] = {
    "xenstore": _optional(_string),
    "interval": _positive_number,
    "poll_interval": _positive_number,
    "log_level": _choice(*LOG_LEVELS),
}


def _line(node: "Optional[yaml.Node]") -> Optional[int]:
    return None if node is None else node.start_mark.line + 1


def _mapping(node: "yaml.Node", source: str, key: str) -> "Dict[str, Tuple[yaml.Node, yaml.Node]]":
    """A YAML mapping node as {name: (key node, value node)}, refusing duplicates."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("expected a mapping", source, _line(node), key or None)
    items: Dict[str, Tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        name = key_node.value
        full = f"{key}.{name}" if key else name
        if not isinstance(key_node, yaml.ScalarNode) or not isinstance(name, str):
            raise ConfigError("keys must be plain names", source, _line(key_node), full)
        if name in items:
            raise ConfigError("duplicate key", source, _line(key_node), full)
        items[name] = (key_node, value_node)
    return items


def _apply(record: Any, checks: Mapping[str, Check], items: "Mapping[str, Tuple[yaml.Node, yaml.Node]]",
           source: str, prefix: str, also_known: Tuple[str, ...] = ()) -> Any:
    import yaml

    loader = yaml.SafeLoader("")
    changes: Dict[str, Any] = {}
    for name, (key_node, value_node) in items.items():
        full = f"{prefix}{name}"
        check = checks.get(name)
        if check is None:
            known = ", ".join(sorted((*checks, *also_known)))
            raise ConfigError(f"unknown key (known: {known})", source, _line(key_node), full)
        value = loader.construct_object(value_node, deep=True)
        try:
            changes[name] = check(value)
        except ValueError as exc:
            raise ConfigError(f"{exc}, got {value!r}", source, _line(value_node), full) from None
    return dataclasses.replace(record, **changes)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Build a Config from YAML text; every error names ``source``, line and key."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source, line) from None
    config = Config(source=source)
    if root is None:  # an empty file means "all defaults"
        return config
    items = _mapping(root, source, "")
    top = {k: v for k, v in items.items() if k not in _SECTIONS}
    config = _apply(config, _TOP, top, source, "", also_known=tuple(_SECTIONS))
    for section, (record_type, checks) in _SECTIONS.items():
        if section in items:
            section_items = _mapping(items[section][1], source, section)
            record = _apply(getattr(config, section), checks, section_items, source, f"{section}.")
            config = dataclasses.replace(config, **{section: record})
    return dataclasses.replace(config, source=source)


def load_config(path: str, required: bool) -> Config:
    """Read the config file.  A missing file is fine unless the user named it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if required:
            raise ConfigError("file not found", path) from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path) from None
    return parse_config(text, path)
