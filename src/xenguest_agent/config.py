"""The agent's configuration: one frozen record, read from YAML, then overridden
by the command line.

Defaults live here, in code.  Unknown keys, wrong types and values out of bounds
are errors that name the file, the line and the key (``config.yaml:7:
network.max_addresses: expected an integer from 1 to 256, got 'many'``), because a
typo silently ignored is a setting an administrator believes is in force when it is
not.  Hostile input (NaN, tags, deep nesting, a FIFO as the file) ends the same way:
a ConfigError, never a traceback; the CLI turns it into exit status 78.
"""

from __future__ import annotations

import os
import stat

from xenguest_agent import configcheck as valid
from xenguest_agent import records
from xenguest_agent.configcheck import (
    DAY,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_GRACE,
)
from xenguest_agent.log import LEVELS
from xenguest_agent.records import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

    from xenguest_agent.configcheck import Check

if TYPE_CHECKING:  # PyYAML is imported only when a config file is read (memory: ~3 MiB)
    import yaml

LINUX_CONFIG_PATH = "/etc/xenguest-agent/config.yaml"
FREEBSD_CONFIG_PATH = "/usr/local/etc/xenguest-agent/config.yaml"

LINUX_HOOKS_DIR = "/etc/xenguest-agent/hooks"
FREEBSD_HOOKS_DIR = "/usr/local/etc/xenguest-agent/hooks"

#: the levels log.py writes, least severe first (log_level, --log-level)
LOG_LEVELS = tuple(LEVELS)
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

    threshold_kib: int = 16384      # a move must pass both this absolute threshold...
    threshold_percent: float = 1.0  # ...and this share of total (agent.memory_due)
    min_interval: float = 120.0     # such a move is written at most this often
    max_age: float = 600.0          # any move is written once this passed


@dataclass(frozen=True)
class NetworkConfig:
    """Which interfaces are reported and how much of them."""

    include: Tuple[str, ...] = ()       # fnmatch patterns; empty = all
    exclude: Tuple[str, ...] = ("lo",)  # fnmatch patterns, applied after include
    max_addresses: int = 16             # per VIF and per address family
    static_vifs: Tuple[Tuple[str, int], ...] = ()  # interface name -> VIF id, overrides detection
    static_ip: bool = True              # apply XenCenter's static IP settings (docs/static-ip.md)


@dataclass(frozen=True)
class FeatureConfig:
    """What the agent may advertise to the toolstack."""

    balloon: bool = True   # control/feature-balloon when a balloon driver exists
    hotplug: bool = True   # feature/hotplug/{vif,vbd} when the front-ends exist


@dataclass(frozen=True)
class HotplugConfig:
    """Whether hot-added vCPUs and memory blocks are brought online (docs/control.md):
    "auto" (only where no distribution udev rule does it), "true" or "false"."""

    online_cpus: str = "auto"
    online_memory: str = "auto"


@dataclass(frozen=True)
class ControlConfig:
    """How ``control/shutdown`` requests are handled (see docs/control.md)."""

    mode: str = "auto"
    grace: float = 2.0
    pm_freeze_timeout: Optional[int] = 300  # seconds; Linux /sys/power/pm_freeze_timeout
    hook_timeout: float = 30.0
    hooks_dir: Optional[str] = None  # absolute; None: LINUX_HOOKS_DIR / FREEBSD_HOOKS_DIR
    commands: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # request -> argv, overrides the OS default


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know, immutable once built."""

    xenstore: Optional[str] = None     # None: the per-OS default device
    interval: float = 600.0            # safety sweep with events: full re-collection (s)
    poll_interval: float = 5.0         # everything, when no network event source exists (s)
    log_level: str = "info"
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    hotplug: HotplugConfig = field(default_factory=HotplugConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    source: str = "<defaults>"



#: Each section's checks; the record is the Config field of the same name.
_SECTIONS: Dict[str, Dict[str, Check]] = {
    "memory": {
        "threshold_kib": valid.number(0, 1 << 40, integer=True),  # 1 PiB
        "threshold_percent": valid.number(0, 100),
        "min_interval": valid.number(1, 3600),
        "max_age": valid.number(1, DAY),
    },
    "network": {
        "include": valid.patterns,
        "exclude": valid.patterns,
        # Each address is a key; xenstored's default quota is 1000 entries per domain
        # (C xenstored quota_nb_entry_per_domain, oxenstored quota-maxentity).
        "max_addresses": valid.number(1, 256, integer=True),
        "static_vifs": valid.vif_map,
        "static_ip": valid.boolean,
    },
    "features": {"balloon": valid.boolean, "hotplug": valid.boolean},
    "hotplug": {"online_cpus": valid.tristate, "online_memory": valid.tristate},
    "control": {
        "mode": valid.choice(*CONTROL_MODES),
        "grace": valid.number(0, MAX_GRACE),
        # seconds; written as milliseconds to /sys/power/pm_freeze_timeout (unsigned int)
        "pm_freeze_timeout": valid.optional(valid.number(1, 3600, integer=True)),
        "hook_timeout": valid.number(1, 3600),
        "hooks_dir": valid.optional(valid.absolute_path),
        "commands": valid.commands,
    },
}

_TOP: Dict[str, Check] = {
    "xenstore": valid.optional(valid.string),
    "interval": valid.number(1, DAY),
    "poll_interval": valid.number(1, 3600),
    "log_level": valid.choice(*LOG_LEVELS),
}


class _TooDeep(Exception):
    def __init__(self, line: int, key: str) -> None:
        super().__init__(line, key)
        self.line = line
        self.key = key


def _compose(text: str) -> "Optional[yaml.Node]":
    """yaml.compose with the nesting bounded: PyYAML's composer recurses once per level,
    so 5,000 nested brackets end in RecursionError deep inside it."""
    import yaml

    class Loader(yaml.SafeLoader):
        keys: Tuple[str, ...] = ()

        def compose_node(self, parent: Any, index: Any) -> Any:
            if len(self.keys) >= MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooDeep(mark.line + 1, ".".join(k for k in self.keys if k))
            name = index.value if isinstance(index, yaml.ScalarNode) else ""
            self.keys = (*self.keys, name if isinstance(name, str) else "")
            try:
                return super().compose_node(parent, index)
            finally:
                self.keys = self.keys[:-1]

    return yaml.compose(text, Loader=Loader)


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
        if not isinstance(key_node, yaml.ScalarNode) or not isinstance(name, str):
            raise ConfigError("keys must be plain names", source, _line(key_node), key or None)
        full = f"{key}.{name}" if key else name
        if name in items:
            raise ConfigError("duplicate key", source, _line(key_node), full)
        items[name] = (key_node, value_node)
    return items


def _construct(node: "yaml.Node", source: str, key: str) -> Any:
    """The Python value of one node.  Tags the safe loader refuses (``!!python/...``,
    ``!custom``) or that fail while constructing (``!!float abc``, an int past
    Python's digit limit) and alias chains deeper than the recursion limit all become
    a ConfigError naming the key."""
    import yaml

    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except Exception as exc:  # noqa: BLE001  PyYAML's constructors fail in many ways on odd
        # input (``!!timestamp x`` is an AttributeError inside it): all are the value's fault
        problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
        if isinstance(exc, RecursionError):
            problem = "nested too deeply (aliases)"
        raise ConfigError(f"unusable value: {valid.brief(problem)}", source, _line(node), key) from None


def _apply(record: Any, checks: Mapping[str, Check], items: "Mapping[str, Tuple[yaml.Node, yaml.Node]]",
           source: str, prefix: str, also_known: Tuple[str, ...] = ()) -> Any:
    changes: Dict[str, Any] = {}
    for name, (key_node, value_node) in items.items():
        full = f"{prefix}{name}"
        check = checks.get(name)
        if check is None:
            known = ", ".join(sorted((*checks, *also_known)))
            raise ConfigError(f"unknown key (known: {known})", source, _line(key_node), full)
        value = _construct(value_node, source, full)
        try:
            changes[name] = check(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{exc}, got {valid.show(value)}", source, _line(value_node), full) from None
    return records.replace(record, **changes)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Build a Config from YAML text; every error names ``source``, line and key."""
    import yaml

    try:
        root = _compose(text)
    except _TooDeep as exc:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", source, exc.line,
                          exc.key or None) from None
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
    assert isinstance(config, Config)
    for section, checks in _SECTIONS.items():
        if section in items:
            section_items = _mapping(items[section][1], source, section)
            record = _apply(getattr(config, section), checks, section_items, source, f"{section}.")
            config = records.replace(config, **{section: record})
    return records.replace(config, source=source)


# --- reading the file --------------------------------------------------------------------

def _read(path: str) -> Tuple[str, os.stat_result]:
    """The file's text and its fstat.  Opened with O_NONBLOCK so a FIFO cannot block
    (open(2) on a FIFO for reading otherwise waits for a writer), then refused unless it
    is a regular file (a device such as /dev/zero never ends), and read bounded."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("not a regular file", path)
        chunks: List[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes", path)
    return b"".join(chunks).decode("utf-8"), info


def load_config(path: str, required: bool) -> Config:
    """Read the config file.  A missing file is fine unless the user named it.

    A config that makes root run something (``control.commands``, ``control.hooks_dir``)
    must be root's alone: see :func:`check_trusted_config`."""
    try:
        text, info = _read(path)
    except FileNotFoundError:
        if required:
            raise ConfigError("file not found", path) from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path) from None
    try:
        config = parse_config(text, path)
    except RecursionError:  # a last resort: the bounds above should make this unreachable
        raise ConfigError("nested too deeply", path) from None
    if config.control.commands or config.control.hooks_dir is not None:
        key = "control.commands" if config.control.commands else "control.hooks_dir"
        check_trusted_config(path, info, key)
    return config


def _untrusted(info: os.stat_result) -> Optional[str]:
    if info.st_uid != 0:
        return f"owned by uid {info.st_uid}, not root"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def check_trusted_config(path: str, opened: Optional[os.stat_result] = None,
                         key: str = "control.commands") -> None:
    """Refuse a config whose content someone other than root could have chosen.

    The file (``opened``: the fstat of the descriptor that was read, so the check is on
    what was read) must be owned by root and not group/other-writable, and so must every
    directory from its real location up to ``/``: whoever can write a directory in the
    chain can replace the file (the hardening issue, item 5; OpenSSH's ``safe_path``
    applies the same rule to authorized_keys).  A symlink is judged by its target's chain:
    the content read is the target's.  Raises ConfigError naming the offender."""
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
        if opened is not None and (info.st_dev, info.st_ino) != (opened.st_dev, opened.st_ino):
            raise ConfigError("the file was replaced while being read", path, key=key)
        chain = [(real, info)]
        directory = os.path.dirname(real)
        while True:
            chain.append((directory, os.stat(directory)))
            if directory == "/":
                break
            directory = os.path.dirname(directory)
    except OSError as exc:
        raise ConfigError(f"cannot check who may write it: {exc}", path, key=key) from None
    for where, status in chain:
        problem = _untrusted(status)
        if problem is not None:
            raise ConfigError(
                f"names what root runs, so it and every directory above it must be root's alone: "
                f"{where} is {problem}", path, key=key)
