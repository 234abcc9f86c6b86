"""Golden cases for ``xenguest-agent status``, each written BY HAND from xapi's rules.

Every expected value below was derived from xapi-project/xen-api, not by running the code:

* networks, netbios_name, os_version, memory, ``other``: ``ocaml/xapi/xapi_guest_agent.ml``
  (``networks``: the first IPv4 address of a VIF is also ``<vif>/ip``; ``netbios_name``:
  ``data/host_name_dns ^ "." ^ data/domain``; ``other``: ``control/*``, with
  ``feature-suspend`` replaced by ``data-cant-suspend-reason`` when that key exists).
* PV_drivers_version: ``ocaml/xapi/xapi_pv_driver_version.ml`` ``get_drivers_version``
  (Major/Minor through ``int_of_string``, which takes ``0x1f`` and ``1_0`` but not ``1.2``;
  Micro and Build default to -1).
* operations: ``ocaml/xapi/xapi_vm_lifecycle.ml`` ``check_op_for_feature`` (implicit support for
  PV/PVH or detected drivers; suspend-like ops first refused by a cant-suspend reason),
  ``xapi_vif_helpers.ml``/``xapi_vbd_helpers.ml`` ``valid_operations`` (only HVM is checked:
  tristate, then PV_drivers_detected, then the drivers version).

Operations are compared as (op, allowed, deciding key, xapi error).
"""

from __future__ import annotations

import pytest

from xenguest_agent import status
from xenguest_agent.guestprobe import DomainType, OtherAgent

TOOLS = "XenCenter shows 'tools not installed' (PV_drivers_version Unknown)"
STATE = "/run/xenguest-agent/state.json"
RUNNING = status.Daemon(STATE, {"pid": 100, "version": "1.0", "last_publish": "2026-01-01T00:00:00Z",
                                "connected": True, "refused": []}, True)
PV = DomainType("pv", "/sys/hypervisor/guest_type says 'PV'")
PVH = DomainType("pvh", "/sys/hypervisor/guest_type says 'PVH'")
HVM = DomainType("hvm", "/sys/hypervisor/guest_type says 'HVM'")
UNKNOWN = DomainType("unknown", "/sys/hypervisor/guest_type missing")

#: what a Linux guest agent publishes, in xenstored's order
AGENT_TREE = {
    "attr/PVAddons/MajorVersion": "9",
    "attr/PVAddons/MinorVersion": "1",
    "attr/PVAddons/MicroVersion": "0",
    "attr/PVAddons/Installed": "1",
    "attr/vif/0/ipv4/0": "192.0.2.10",
    "attr/vif/0/ipv4/1": "192.0.2.11",
    "attr/vif/0/ipv6/0": "2001:db8::10",
    "data/os_name": "Debian GNU/Linux 12 (bookworm)",
    "data/os_uname": "6.1.0-18-amd64",
    "data/os_distro": "debian",
    "data/os_majorver": "12",
    "data/os_minorver": "5",
    "data/host_name_dns": "web01",
    "data/domain": "corp.example.com",
    "data/meminfo_total": "2014228",
    "data/meminfo_free": "1523400",
    "data/updated": "1",
    "control/feature-balloon": "1",
}


def tree(**changes: str | None) -> dict[str, str]:
    """AGENT_TREE with keys changed (``attr__PVAddons__MajorVersion=None`` removes one)."""
    out = dict(AGENT_TREE)
    for name, value in changes.items():
        key = name.replace("__", "/").replace("_dash_", "-")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def ops(report: status.Report) -> list[tuple[str, bool, str, str | None]]:
    return [(v.op, v.allowed, v.key, v.error) for v in report.operations]


ALL_OPS = ("clean_shutdown", "clean_reboot", "suspend", "pool_migrate", "changing_VCPUs_live",
           "vif_plug", "vbd_plug")


# --- PV, PVH, HVM with a complete tree ----------------------------------------------------------

def test_pv_guest_with_the_agent_tree() -> None:
    report = status.diagnose(AGENT_TREE, PV, False, (), RUNNING)
    metrics = report.view.metrics
    assert dict(metrics.pv_drivers_version) == {"major": "9", "minor": "1", "micro": "0"}
    drivers = report.view.drivers
    assert (drivers.kind, drivers.major, drivers.minor, drivers.micro, drivers.build) == \
        ("Linux", 9, 1, 0, -1)  # no BuildVersion: -1
    assert dict(metrics.os_version) == {"name": "Debian GNU/Linux 12 (bookworm)",
                                        "uname": "6.1.0-18-amd64", "distro": "debian",
                                        "major": "12", "minor": "5"}
    assert dict(metrics.netbios_name) == {"host_name": "web01.corp.example.com"}
    assert dict(metrics.networks) == {"0/ip": "192.0.2.10", "0/ipv4/0": "192.0.2.10",
                                      "0/ipv4/1": "192.0.2.11", "0/ipv6/0": "2001:db8::10"}
    assert dict(metrics.memory) == {"free": "1523400", "total": "2014228"}
    assert dict(metrics.other) == {"feature-balloon": "1"}
    # PV: implicit support for every guest feature; VIF/VBD plug is checked only for HVM
    assert ops(report) == [(op, True, "domain type", None) for op in ALL_OPS]
    assert report.problems == ()
    assert report.exit_status == 0


def test_pvh_guest_without_any_pvaddons_still_allows_everything_but_shows_no_tools() -> None:
    pvh_tree = {k: v for k, v in AGENT_TREE.items() if not k.startswith("attr/PVAddons/")}
    report = status.diagnose(pvh_tree, PVH, False, (), RUNNING)
    assert report.view.drivers.kind == "Unknown"
    # has_definitely_booted_pv is true for pvh: implicit support whatever the drivers say
    assert ops(report) == [(op, True, "domain type", None) for op in ALL_OPS]
    assert report.problems == (f"attr/PVAddons/MajorVersion missing: {TOOLS}",)
    assert report.exit_status == 1


def test_hvm_guest_with_drivers_gets_everything_from_the_pvaddons() -> None:
    report = status.diagnose(AGENT_TREE, HVM, False, (), RUNNING)
    # drivers detected -> implicit support; hot-plug: tristate unspecified, no connected
    # device, so has_pv_drivers decides
    assert ops(report) == [(op, True, "attr/PVAddons", None) for op in ALL_OPS]
    assert report.exit_status == 0


def test_hvm_hotplug_from_connected_device_and_from_the_tristate() -> None:
    t = tree(feature__hotplug__vif="1", feature__hotplug__vbd="0")
    report = status.diagnose(t, HVM, True, (), RUNNING)
    assert ops(report)[-2:] == [("vif_plug", True, "feature/hotplug/vif", None),
                                ("vbd_plug", False, "feature/hotplug/vbd", "OPERATION_NOT_ALLOWED")]
    t = tree(attr__PVAddons__MajorVersion=None)  # drivers Unknown, but a device is Connected
    report = status.diagnose(t, HVM, True, (), RUNNING)
    assert ops(report)[-2:] == [("vif_plug", True, "device/*/backend state", None),
                                ("vbd_plug", True, "device/*/backend state", None)]


# --- PVAddons keys ---------------------------------------------------------------------------

def test_hvm_guest_missing_major_loses_every_op_without_the_kernel_flags() -> None:
    report = status.diagnose(tree(attr__PVAddons__MajorVersion=None), HVM, False, (), RUNNING)
    major = "attr/PVAddons/MajorVersion"
    assert ops(report) == [
        ("clean_shutdown", False, "control/feature-poweroff", "VM_LACKS_FEATURE"),
        ("clean_reboot", False, "control/feature-reboot", "VM_LACKS_FEATURE"),
        ("suspend", False, "control/feature-suspend", "VM_LACKS_FEATURE"),
        ("pool_migrate", False, "control/feature-suspend", "VM_LACKS_FEATURE"),
        ("changing_VCPUs_live", False, "control/feature-vcpu-hotplug", "VM_LACKS_FEATURE"),
        ("vif_plug", False, major, "VM_MISSING_PV_DRIVERS"),
        ("vbd_plug", False, major, "VM_MISSING_PV_DRIVERS"),
    ]
    assert report.problems[0] == f"{major} missing: {TOOLS}"
    assert len(report.problems) == 1 + 7
    assert report.exit_status == 1


def test_hvm_guest_with_non_integer_minor_relies_on_the_kernel_flags() -> None:
    # the Linux kernel writes control/feature-{poweroff,reboot,suspend} (drivers/xen/manage.c)
    t = tree(attr__PVAddons__MinorVersion="1.2", control__feature_dash_poweroff="1",
             control__feature_dash_reboot="1", control__feature_dash_suspend="1")
    report = status.diagnose(t, HVM, False, (), RUNNING)
    assert report.view.drivers.kind == "Unknown"
    assert ops(report) == [
        ("clean_shutdown", True, "control/feature-poweroff", None),
        ("clean_reboot", True, "control/feature-reboot", None),
        ("suspend", True, "control/feature-suspend", None),
        ("pool_migrate", True, "control/feature-suspend", None),
        ("changing_VCPUs_live", False, "control/feature-vcpu-hotplug", "VM_LACKS_FEATURE"),
        ("vif_plug", False, "attr/PVAddons/MinorVersion", "VM_MISSING_PV_DRIVERS"),
        ("vbd_plug", False, "attr/PVAddons/MinorVersion", "VM_MISSING_PV_DRIVERS"),
    ]
    assert report.problems[0] == f"attr/PVAddons/MinorVersion is not an integer ('1.2'): {TOOLS}"
    assert report.exit_status == 1


def test_ocaml_integers_that_look_odd_still_count() -> None:
    # int_of_string "0x1f" = 31, "1_0" = 10 (OCaml runtime parse_intnat)
    t = tree(attr__PVAddons__MinorVersion="0x1f", attr__PVAddons__MicroVersion="1_0",
             attr__PVAddons__BuildVersion="-3")
    drivers = status.diagnose(t, HVM, False, (), RUNNING).view.drivers
    assert (drivers.kind, drivers.major, drivers.minor, drivers.micro, drivers.build) == \
        ("Linux", 9, 31, 10, -3)


def test_non_integer_micro_also_means_tools_not_installed() -> None:
    report = status.diagnose(tree(attr__PVAddons__MicroVersion=" 0"), PV, False, (), RUNNING)
    assert report.problems == (f"attr/PVAddons/MicroVersion is not an integer (' 0'): {TOOLS}",)


# --- cant-suspend, other keys ------------------------------------------------------------------

def test_cant_suspend_reason_refuses_suspend_and_migrate_even_for_pv_as_a_note() -> None:
    t = tree(control__feature_dash_suspend="1", data__cant_suspend_reason="UEFI vars")
    report = status.diagnose(t, PV, False, (), RUNNING)
    assert dict(report.view.metrics.other) == {"feature-balloon": "1",
                                               "data-cant-suspend-reason": "UEFI vars"}
    assert [o for o in ops(report) if not o[1]] == [
        ("suspend", False, "data/cant_suspend_reason", "VM_NON_SUSPENDABLE"),
        ("pool_migrate", False, "data/cant_suspend_reason", "VM_NON_SUSPENDABLE")]
    assert report.problems == ()  # the guest's own choice: said in a note
    assert sum("VM_NON_SUSPENDABLE" in n for n in report.notes) == 2


def test_cant_suspend_reason_without_feature_suspend_never_reaches_xapi() -> None:
    # xapi replaces control/feature-suspend by the reason; with no feature-suspend it is dropped
    report = status.diagnose(tree(data__cant_suspend_reason="UEFI vars"), PV, False, (), RUNNING)
    assert "data-cant-suspend-reason" not in report.view.metrics.other
    assert all(o[1] for o in ops(report))


@pytest.mark.parametrize("key, line", [
    ("data/os_name", "data/os_name missing: XenCenter and Xen Orchestra show no operating system"),
    ("data/updated", "data/updated missing: squeezed sees no guest agent"),
    ("data/meminfo_free",
     "data/meminfo_free missing: the VM's memory_internal_free RRD stays empty"),
])
def test_each_missing_key_is_one_line(key: str, line: str) -> None:
    report = status.diagnose({k: v for k, v in AGENT_TREE.items() if k != key}, PV, False, (),
                             RUNNING)
    assert report.problems == (line,)


def test_a_memory_figure_rrdd_cannot_parse() -> None:
    report = status.diagnose(tree(data__meminfo_free="1.5G"), PV, False, (), RUNNING)
    assert report.problems == (("data/meminfo_free is not an integer ('1.5G'): the VM's "
                               "memory_internal_free RRD stays empty"),)


def test_unknown_domain_type_is_judged_as_hvm_and_said() -> None:
    report = status.diagnose(tree(attr__PVAddons__MajorVersion=None), UNKNOWN, False, (), RUNNING)
    assert ("clean_shutdown", False, "control/feature-poweroff", "VM_LACKS_FEATURE") in ops(report)
    assert any(n.startswith("domain type unknown") for n in report.notes)


# --- other agents, the daemon -------------------------------------------------------------------

def test_another_agent_publishing_is_a_problem_an_installed_one_a_note() -> None:
    others = (OtherAgent("xe-daemon", 321, "process 321 (/usr/sbin/xe-daemon -p /run/xe-daemon.pid)"),
              OtherAgent("xen-guest-agent", None, "installed"))
    report = status.diagnose(AGENT_TREE, PV, False, others, RUNNING)
    assert report.problems == (
        ("xe-daemon is also publishing (process 321 (/usr/sbin/xe-daemon -p /run/xe-daemon.pid)): "
        "it writes the same keys; stop one of the two agents"),)
    assert "xen-guest-agent is installed (installed)" in report.notes
    assert report.exit_status == 1


def test_daemon_not_running_stale_state_and_refusals() -> None:
    stale = status.Daemon(STATE, {"pid": 4242, "last_publish": "2026-01-01T00:00:00Z",
                                  "refused": [["attr/vif/0/ipv4/0", "EDQUOT"]]}, False)
    report = status.diagnose(AGENT_TREE, PV, False, (), stale)
    assert report.problems == (
        f"{STATE}: the daemon (pid 4242) is not running; it last published 2026-01-01T00:00:00Z",
        "attr/vif/0/ipv4/0: xenstored refused the daemon's write (EDQUOT)")
    missing = status.diagnose(AGENT_TREE, PV, False, (), status.Daemon(STATE, None, False))
    assert missing.problems == (
        (f"{STATE} missing or unreadable: the xenguest-agent daemon is not running, so nothing "
        "republishes after a migration or a change"),)
    offline = status.Daemon(STATE, {"pid": 100, "connected": False, "xenstore": "/dev/xen/xenbus"}, True)
    assert status.diagnose(AGENT_TREE, PV, False, (), offline).problems == (
        f"{STATE}: the daemon is not connected to XenStore (/dev/xen/xenbus)",)


# --- the two renderings -------------------------------------------------------------------------

def test_text_and_json_carry_every_problem() -> None:
    report = status.diagnose(tree(attr__PVAddons__MajorVersion=None), HVM, False, (), RUNNING)
    text = status.to_text(report)
    assert text.splitlines()[1].startswith("PV_drivers_version: Unknown (attr/PVAddons/MajorVersion")
    for problem in report.problems:
        assert f"  {problem}\n" in text
    data = status.to_json(report)
    assert data["problems"] == list(report.problems) and data["exit_status"] == 1
    assert data["PV_drivers_version"]["key"] == "attr/PVAddons/MajorVersion"
    assert data["networks"]["0/ip"] == "192.0.2.10"
    ok = status.to_text(status.diagnose(AGENT_TREE, PV, False, (), RUNNING))
    assert ok.endswith("missing: nothing: xapi has everything it needs\n")
