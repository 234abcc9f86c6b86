"""The hot-plug policy: settings, and whether the distribution's udev rules already online
hot-added CPUs and memory blocks.

Rule syntax and precedence come from udev(7) (systemd/systemd man/udev.xml): ``*.rules`` in
/etc/udev/rules.d, /run/udev/rules.d, /usr/local/lib/udev/rules.d, /usr/lib/udev/rules.d,
/lib/udev/rules.d; a same-named file in an earlier directory hides the later one; an empty
file or a symlink to /dev/null disables it; ``\\`` continues a line; ``GOTO`` jumps to
``LABEL``.  The rules files in tests/fixtures/hotplug/rules/ were written for these tests in
the shapes of RHEL's 40-redhat.rules, Ubuntu's 40-vm-hotadd.rules and XenServer's
xen-vcpu-hotplug.rules (xenserver/xe-guest-utilities mk/xen-vcpu-hotplug.rules).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenguest_agent.host import Host
from xenguest_agent.hotplug_rules import (
    Decision,
    DistroRules,
    HotplugPolicy,
    active_rules_files,
    decide_one,
    detect_distro_rules,
    logical_lines,
    parse_rule,
    rules_online,
    udev_running,
)

RULES = Path(__file__).resolve().parent / "fixtures" / "hotplug" / "rules"


def rules_text(name: str) -> str:
    return (RULES / name).read_text()


@pytest.mark.parametrize("name, expected", [
    ("scoped.rules", (True, True)),       # GOTO-scoped CPU block; memory state from $env{...}
    ("oneline.rules", (True, True)),      # one rule per line with DEVPATH globs
    ("run-cpu.rules", (True, False)),     # RUN+= echo 1 > .../online, CPUs only
    ("unrelated.rules", (False, False)),  # other subsystems, remove actions, matches only
])
def test_rules_files_that_online(name: str, expected: tuple[bool, bool]) -> None:
    assert rules_online(rules_text(name)) == expected


def test_scope_ends_at_its_label() -> None:
    text = ('SUBSYSTEM!="cpu", GOTO="x"\nLABEL="x"\n'
            'ATTR{online}="1"\n')  # after the label: no subsystem condition any more
    assert rules_online(text) == (False, False)


def test_an_action_other_than_add_in_scope_does_not_count() -> None:
    text = 'SUBSYSTEM!="cpu", ACTION!="change", GOTO="x"\nATTR{online}="1"\nLABEL="x"\n'
    assert rules_online(text) == (False, False)


def test_alternatives_and_globs_in_subsystem() -> None:
    assert rules_online('SUBSYSTEM=="cpu|memory", ACTION=="add", ATTR{online}="1"\n') == (True, True)
    assert rules_online('SUBSYSTEM=="mem*", ACTION=="add", ATTR{state}="online_movable"\n') == (False, True)


def test_malformed_lines_are_ignored_not_counted() -> None:
    assert rules_online('SUBSYSTEM=="cpu", ACTION=="add", ATTR{online}="1\n') == (False, False)
    assert parse_rule('SUBSYSTEM=="cpu" garbage') is None


def test_continuations_and_comments() -> None:
    assert logical_lines('# c\n\nA=="1", \\\n  B="2"\n') == ['A=="1",  B="2"']
    assert parse_rule('A=="1",    B{x}+="2"') == [("A", "", "==", "1"), ("B", "x", "+=", "2")]


# --- which files are active ---------------------------------------------------------------------

def install(root: Path, directory: str, name: str, text: str) -> Path:
    path = root / directory.lstrip("/") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_detects_rules_under_the_root(tmp_path: Path) -> None:
    install(tmp_path, "/lib/udev/rules.d", "40-vm-hotadd.rules", rules_text("oneline.rules"))
    install(tmp_path, "/etc/udev/rules.d", "99-xen-vcpu.rules", rules_text("run-cpu.rules"))
    install(tmp_path, "/usr/lib/udev/rules.d", "70-other.rules", rules_text("unrelated.rules"))
    install(tmp_path, "/usr/lib/udev/rules.d", "README", rules_text("oneline.rules"))  # not *.rules
    found = detect_distro_rules(Host(str(tmp_path)))
    assert found == DistroRules(
        cpus=("/lib/udev/rules.d/40-vm-hotadd.rules", "/etc/udev/rules.d/99-xen-vcpu.rules"),
        memory=("/lib/udev/rules.d/40-vm-hotadd.rules",))


def test_etc_hides_lib_and_an_empty_or_dev_null_file_disables(tmp_path: Path) -> None:
    install(tmp_path, "/lib/udev/rules.d", "40-redhat.rules", rules_text("scoped.rules"))
    install(tmp_path, "/lib/udev/rules.d", "40-vm-hotadd.rules", rules_text("oneline.rules"))
    install(tmp_path, "/etc/udev/rules.d", "40-redhat.rules", "")
    masked = tmp_path / "run/udev/rules.d/40-vm-hotadd.rules"
    masked.parent.mkdir(parents=True)
    os.symlink("/dev/null", masked)
    host = Host(str(tmp_path))
    assert active_rules_files(host) == ["/etc/udev/rules.d/40-redhat.rules",
                                        "/run/udev/rules.d/40-vm-hotadd.rules"]
    assert detect_distro_rules(host) == DistroRules()


def test_udev_running_is_its_control_socket(tmp_path: Path) -> None:
    host = Host(str(tmp_path))
    assert not udev_running(host)
    install(tmp_path, "/run/udev", "control", "")
    assert udev_running(host)


# --- the decision -----------------------------------------------------------------------------

RULE = ("/lib/udev/rules.d/40-vm-hotadd.rules",)


@pytest.mark.parametrize("setting, rules, running, act", [
    ("true", RULE, True, True),     # forced on even beside a distro rule
    (True, (), True, True),
    ("false", (), True, False),     # forced off even with nobody else doing it
    (False, (), False, False),
    ("auto", (), True, True),       # nobody does it: the agent does
    ("auto", RULE, True, False),    # the distro does it: stand aside
    ("auto", RULE, False, True),    # a rule, but no udevd to apply it
    (" Auto ", RULE, True, False),
])
def test_decide_one(setting: object, rules: tuple[str, ...], running: bool, act: bool) -> None:
    decision = decide_one(setting, rules, running)  # type: ignore[arg-type]
    assert decision.act is act and decision.reason


def test_decide_names_the_rule_file() -> None:
    assert decide_one("auto", RULE, True) == Decision(False, f"auto: {RULE[0]} onlines them")


def test_policy_decides_cpus_and_memory_separately() -> None:
    policy = HotplugPolicy.decide("auto", "auto", DistroRules(cpus=RULE), udev_running=True)
    assert (policy.online_cpus, policy.online_memory) == (False, True)


@pytest.mark.parametrize("bad", ["yes", "", "on", "2"])
def test_unknown_setting_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="auto, true, false"):
        decide_one(bad, (), True)
