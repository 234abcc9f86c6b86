"""The golden-file policy itself (docs/testing.md): regenerating expected.json can never make
a changed hand-written fact pass.  tests/support/golden.py checks facts.yaml through the xapi
model first and, in XENGUEST_UPDATE_GOLDEN=1 mode, refuses to write while a fact fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.golden import compare, fact_problems

FACTS = """
os_version: {name: Debian GNU/Linux 12 (bookworm), distro: debian, major: "12", minor: "5",
             uname: 6.1.0-18-amd64}
host_name: web01.example.org
networks:
  "0": {ip: 10.0.0.2, ipv4: [10.0.0.2], ipv6: []}
memory: {total: 2014228, free: 1523400}
tools: Linux
hotplug: {vif: "yes", vbd: "unspecified"}
balloon: false
"""

#: a dump that satisfies FACTS, written out by hand
GOOD = {"attr/PVAddons/MajorVersion": "0", "attr/PVAddons/MinorVersion": "1",
        "attr/PVAddons/MicroVersion": "0", "attr/PVAddons/BuildVersion": "0",
        "data/os_name": "Debian GNU/Linux 12 (bookworm)", "data/os_distro": "debian",
        "data/os_majorver": "12", "data/os_minorver": "5", "data/os_uname": "6.1.0-18-amd64",
        "data/host_name_dns": "web01", "data/domain": "example.org",
        "attr/vif/0/ipv4/0": "10.0.0.2", "data/meminfo_total": "2014228",
        "data/meminfo_free": "1523400", "feature/hotplug/vif": "1", "data/updated": "1"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "facts.yaml").write_text(FACTS)
    (tmp_path / "t" / "expected.json").write_text(json.dumps(GOOD, indent=2) + "\n")
    return tmp_path


def test_matching_dump_passes(tree: Path) -> None:
    compare(tree, "t", json.dumps(GOOD))


@pytest.mark.parametrize("change, complaint", [
    ({"data/host_name_dns": "web01.example.org"}, "netbios_name"),  # the doubled domain
    ({"attr/vif/1/ipv4/0": "10.0.0.2"}, "networks"),                 # an address under another VIF
    ({"data/meminfo_free": "1523401"}, "memory free"),
    ({"data/os_minorver": "0"}, "os_version"),
    ({"attr/PVAddons/MinorVersion": "1.0"}, "PV_drivers_version"),
    ({"control/feature-balloon": "0"}, "can_balloon"),                 # existence is what counts
    ({"feature/hotplug/vbd": "0"}, "hotplug"),
])
def test_update_mode_refuses_to_write_when_a_fact_fails(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                                        change: dict, complaint: str) -> None:
    monkeypatch.setenv("XENGUEST_UPDATE_GOLDEN", "1")
    golden = tree / "t" / "expected.json"
    before = golden.read_text()
    with pytest.raises(pytest.fail.Exception) as failed:
        compare(tree, "t", json.dumps({**GOOD, **change}))
    assert "NOT rewritten" in str(failed.value) and complaint in str(failed.value)
    assert golden.read_text() == before


def test_update_mode_writes_and_still_fails_when_facts_hold(tree: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENGUEST_UPDATE_GOLDEN", "1")
    printed = json.dumps({**GOOD, "data/other": "x"})
    with pytest.raises(pytest.fail.Exception, match="wrote"):
        compare(tree, "t", printed)
    assert json.loads((tree / "t" / "expected.json").read_text()) == {**GOOD, "data/other": "x"}


def test_no_facts_file_is_a_failure_and_nothing_is_written(tree: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENGUEST_UPDATE_GOLDEN", "1")
    (tree / "t" / "facts.yaml").unlink()
    golden = tree / "t" / "expected.json"
    before = golden.read_text()
    with pytest.raises(pytest.fail.Exception, match="no facts.yaml"):
        compare(tree, "t", json.dumps(GOOD))
    assert golden.read_text() == before


def test_required_facts_are_enforced() -> None:
    assert fact_problems({}, GOOD, required=("memory",))[:7] == [
        "facts.yaml lacks 'os_version'", "facts.yaml lacks 'host_name'", "facts.yaml lacks 'networks'",
        "facts.yaml lacks 'tools'", "facts.yaml lacks 'hotplug'", "facts.yaml lacks 'balloon'",
        "facts.yaml lacks 'memory'"]


def test_full_dump_still_compared_after_facts(tree: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="extra    data/other"):
        compare(tree, "t", json.dumps({**GOOD, "data/other": "x"}))
