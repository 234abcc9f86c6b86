"""Golden end-to-end dumps, checked in two steps.

1. The tree's ``facts.yaml``, written and reviewed by hand from the tree's files and xapi's
   rules, must hold for what ``show --format json`` printed, read through the model of xapi
   (:mod:`xenguest_agent.xapi`): OS fields, the host name XenCenter shows, which VIF each address
   lands under, memory, tools, hot-plug and balloon flags.
2. The whole dump must equal ``expected.json`` (a regression guard for every other key).

``XENGUEST_UPDATE_GOLDEN=1`` rewrites ``expected.json`` and fails so the diff is reviewed, but
only when step 1 passed: regenerating a golden file can never make a changed fact pass.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from xenguest_agent import xapi

FACTS = "facts.yaml"
#: keys every facts.yaml must have; callers add "memory" where it can be derived by hand
REQUIRED = ("os_version", "host_name", "networks", "tools", "hotplug", "balloon")


def update_mode() -> bool:
    return os.environ.get("XENGUEST_UPDATE_GOLDEN") == "1"


def render(values: dict[str, str]) -> list[str]:
    return (json.dumps(values, indent=2, sort_keys=True) + "\n").splitlines(keepends=True)


def _by_vif(networks: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """xapi's networks map ("0/ip", "0/ipv4/1", "0/ipv6/0") grouped per VIF id."""
    grouped: dict[str, dict[str, Any]] = {}
    for key, address in networks.items():
        vif, _, rest = key.partition("/")
        entry = grouped.setdefault(vif, {"ipv4": [], "ipv6": []})
        if rest == "ip":
            entry["ip"] = address
        else:
            entry[rest.split("/")[0]].append(address)
    return grouped


def _normalised(vifs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(vif): {"ip": v.get("ip"), "ipv4": sorted(v.get("ipv4", [])),
                       "ipv6": sorted(v.get("ipv6", []))} for vif, v in vifs.items()}


def fact_problems(facts: Mapping[str, Any], values: Mapping[str, str],
                  required: Sequence[str] = ()) -> list[str]:
    """Every hand-written fact that the published ``values`` contradict, as xapi would read them."""
    problems = [f"{FACTS} lacks {key!r}" for key in (*REQUIRED, *required) if key not in facts]
    view = xapi.read_guest(values)
    metrics = view.metrics

    def check(name: str, expected: object, actual: object) -> None:
        if expected != actual:
            problems.append(f"{name}: {FACTS} says {expected!r}; xapi would show {actual!r}")

    if "os_version" in facts:
        check("os_version", {k: str(v) for k, v in facts["os_version"].items()},
              dict(metrics.os_version))
    if "host_name" in facts:
        check("netbios_name host_name", facts["host_name"], metrics.netbios_name.get("host_name"))
    if "networks" in facts:
        check("networks", _normalised(facts["networks"]), _normalised(_by_vif(metrics.networks)))
    if "memory" in facts:
        memory = facts["memory"]
        check("memory total (KiB)", str(memory["total"]), metrics.memory.get("total"))
        check("memory free (KiB)", str(memory["free"]), metrics.memory.get("free"))
        check("rrdp-squeezed memory_internal_free", memory["free"], view.squeezed.memory_internal_free)
    if "tools" in facts:
        check("PV_drivers_version", facts["tools"], view.drivers.kind)
    if "hotplug" in facts:
        check("can_use_hotplug_vif/vbd", (facts["hotplug"]["vif"], facts["hotplug"]["vbd"]),
              (metrics.can_use_hotplug_vif, metrics.can_use_hotplug_vbd))
    if "balloon" in facts:
        check("squeezed can_balloon", facts["balloon"], view.squeezed.can_balloon)
    check("squeezed has_guest_agent", True, view.squeezed.has_guest_agent)
    return problems


def compare(fixtures: Path, tree: str, printed: str, required: Sequence[str] = ()) -> None:
    """Check the hand-written facts, then the golden file (or, in update mode, write it);
    fail with a readable explanation on any mismatch."""
    try:
        actual = json.loads(printed)
    except ValueError as exc:
        pytest.fail(f"{tree}: show did not print one JSON object ({exc}):\n{printed}", pytrace=False)
    assert isinstance(actual, dict), f"{tree}: expected a JSON object, got {type(actual).__name__}"
    facts_path = fixtures / tree / FACTS
    if not facts_path.exists():
        pytest.fail(f"{tree}: no {FACTS}; write it by hand from the tree's files and xapi's rules "
                    "(docs/testing.md)", pytrace=False)
    problems = fact_problems(yaml.safe_load(facts_path.read_text()) or {}, actual, required)
    if problems:
        refused = " (expected.json NOT rewritten)" if update_mode() else ""
        pytest.fail(f"{tree}: the hand-written facts do not hold{refused}:\n  "
                    + "\n  ".join(problems), pytrace=False)
    golden = fixtures / tree / "expected.json"
    if update_mode():
        golden.write_text(printed if printed.endswith("\n") else printed + "\n")
        pytest.fail(f"{tree}: wrote {golden}; "
                    "review every key and value (git diff) and rerun without "
                    "XENGUEST_UPDATE_GOLDEN", pytrace=False)
    if not golden.exists():
        pytest.fail(f"{tree}: no {golden.name}; create it with XENGUEST_UPDATE_GOLDEN=1 and review it",
                    pytrace=False)
    expected = json.loads(golden.read_text())
    if actual == expected:
        return
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    lines = [f"{tree}: output differs from {golden.name}"]
    lines += [f"  missing  {k} = {expected[k]!r}" for k in missing]
    lines += [f"  extra    {k} = {actual[k]!r}" for k in extra]
    lines += [f"  changed  {k}: expected {expected[k]!r}, got {actual[k]!r}" for k in changed]
    diff = difflib.unified_diff(render(expected), render(actual),
                                fromfile=f"{tree}/expected.json", tofile="show --format json")
    pytest.fail("\n".join(lines) + "\n\n" + "".join(diff), pytrace=False)
