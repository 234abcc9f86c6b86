"""examples/config.yaml, installed as /etc/xenguest-agent/config.yaml by the packages, lists
every setting commented out with its default: uncommented, it must parse and give exactly the
defaults in code (config.py), and it must name every setting there is (docs/packaging.md)."""

from __future__ import annotations

import re
from pathlib import Path

from xenguest_agent import config as cfg
from xenguest_agent import records

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "config.yaml"
SETTING = re.compile(r"^(\s*)#([a-z_]+:.*)$")


def uncommented() -> str:
    """Every commented-out setting line (``#key: value``) made live; prose comments stay."""
    return "\n".join(SETTING.sub(r"\1\2", line) for line in EXAMPLE.read_text().splitlines())


def test_the_example_as_written_is_all_defaults() -> None:
    assert cfg.parse_config(EXAMPLE.read_text(), str(EXAMPLE)) == cfg.Config(source=str(EXAMPLE))


def test_every_value_shown_is_the_default_in_code() -> None:
    assert cfg.parse_config(uncommented(), "example") == cfg.Config(source="example")


def test_every_setting_is_listed() -> None:
    text = uncommented()
    shown = set(re.findall(r"^([a-z_]+):", text, re.M))
    for section in ("memory", "network", "features", "hotplug", "control"):
        block = re.search(rf"^{section}:\n((?:[ \t]+.*\n?|\n)*)", text, re.M)
        assert block is not None, section
        shown |= {f"{section}.{k}" for k in re.findall(r"^\s+([a-z_]+):", block.group(1), re.M)}
    wanted = {f.name for f in records.fields(cfg.Config)
              if f.name not in ("source", "memory", "network", "features", "hotplug", "control")}
    for section in ("memory", "network", "features", "hotplug", "control"):
        wanted.add(section)
        record = getattr(cfg.Config(), section)
        wanted |= {f"{section}.{f.name}" for f in records.fields(record)}
    assert shown == wanted
