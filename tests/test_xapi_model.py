"""Hand-built cases for the model of xapi's reading of a guest tree (xenguest_agent.xapi).

Every expected value below was worked out by hand from xapi-project/xen-api (commit
e2ee48d6, August 2026), not by running the model; each case names the file and function.
  GA  = ocaml/xapi/xapi_guest_agent.ml
  PV  = ocaml/xapi/xapi_pv_driver_version.ml
  XS  = ocaml/xenopsd/xc/xenops_server_xen.ml (VM.get_state, ls_lR)
  XX  = ocaml/xapi/xapi_xenops.ml (update_vm_internal: lookup, list)
  SQ  = ocaml/squeezed/src/squeeze_xen.ml
  RRD = ocaml/xcp-rrdd/bin/rrdp-squeezed/rrdp_squeezed.ml
"""

from __future__ import annotations

import pytest

from xenguest_agent.xapi import (
    DriversVersion,
    GuestMetrics,
    Squeezed,
    guest_metrics,
    ocaml_int,
    read_guest,
    xenopsd_notices,
    xenopsd_snapshot,
)

PVADDONS = {"attr/PVAddons/MajorVersion": "1", "attr/PVAddons/MinorVersion": "2",
            "attr/PVAddons/MicroVersion": "3", "attr/PVAddons/BuildVersion": "4",
            "attr/PVAddons/Installed": "1"}


def metrics(tree: dict[str, str]) -> GuestMetrics:
    return read_guest(tree).metrics


def test_a_complete_linux_agent_tree() -> None:
    tree = {**PVADDONS,
            "data/os_name": "Debian GNU/Linux 12 (bookworm)", "data/os_distro": "debian",
            "data/os_majorver": "12", "data/os_minorver": "5", "data/os_uname": "6.1.0-18-amd64",
            "data/meminfo_total": "2014228", "data/meminfo_free": "1523400",
            "data/host_name_dns": "web01", "data/domain": "example.org",
            "attr/vif/0/ipv4/0": "10.0.0.2", "attr/vif/0/ipv4/1": "10.0.0.3",
            "attr/vif/0/ipv6/0": "2001:db8::2",
            "attr/vif/2/ipv4/0": "10.2.0.2",
            "control/feature-balloon": "1", "control/feature-poweroff": "1",
            "feature/hotplug/vif": "1", "feature/hotplug/vbd": "1",
            "data/updated": "1"}
    view = read_guest(tree)
    # GA pv_drivers_version: the four *Version keys; "Installed" is not read
    assert view.metrics.pv_drivers_version == {"major": "1", "minor": "2", "micro": "3", "build": "4"}
    # GA os_version
    assert view.metrics.os_version == {"name": "Debian GNU/Linux 12 (bookworm)", "distro": "debian",
                                       "major": "12", "minor": "5", "uname": "6.1.0-18-amd64"}
    # GA netbios_name: host_name_dns ^ "." ^ domain
    assert view.metrics.netbios_name == {"host_name": "web01.example.org"}
    # GA networks / find_all_vif_ips: the lowest ipv4 index also as "N/ip"
    assert view.metrics.networks == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2", "0/ipv4/1": "10.0.0.3",
                                     "0/ipv6/0": "2001:db8::2", "2/ip": "10.2.0.2",
                                     "2/ipv4/0": "10.2.0.2"}
    # GA other: one entry per control/* key
    assert view.metrics.other == {"feature-balloon": "1", "feature-poweroff": "1"}
    # GA memory (computed, not stored: GA all)
    assert view.metrics.memory == {"free": "1523400", "total": "2014228"}
    # GA get_tristate
    assert (view.metrics.can_use_hotplug_vif, view.metrics.can_use_hotplug_vbd) == ("yes", "yes")
    # PV get_drivers_version
    assert view.drivers == DriversVersion("Linux", 1, 2, 3, 4)
    assert view.drivers.detected
    # SQ get_feature_balloon / get_guest_agent; RRD memory_internal_free in KiB
    assert view.squeezed == Squeezed(can_balloon=True, has_guest_agent=True, memory_internal_free=1523400)


# --- PV drivers version (PV get_drivers_version; GA get_initial_guest_metrics) -------------------

def drop(tree: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in tree.items() if k != key}


def test_missing_micro_defaults_to_minus_one() -> None:
    # GA: "default this field to -1 if it's not present"; PV: micro then parses as -1
    view = read_guest(drop(PVADDONS, "attr/PVAddons/MicroVersion"))
    assert view.metrics.pv_drivers_version == {"micro": "-1", "major": "1", "minor": "2", "build": "4"}
    assert view.drivers == DriversVersion("Linux", 1, 2, -1, 4)


def test_missing_build_is_minus_one() -> None:
    # PV lookup_driver_key_with_default "build" (-1): Linux agents traditionally write no build
    assert read_guest(drop(PVADDONS, "attr/PVAddons/BuildVersion")).drivers == \
        DriversVersion("Linux", 1, 2, 3, -1)


@pytest.mark.parametrize("key, why", [("attr/PVAddons/MajorVersion", "major missing"),
                                      ("attr/PVAddons/MinorVersion", "minor missing")])
def test_missing_major_or_minor_means_no_tools(key: str, why: str) -> None:
    # PV: List.assoc "major"/"minor" raises Not_found -> Unknown (XenCenter: tools not installed)
    drivers = read_guest(drop(PVADDONS, key)).drivers
    assert drivers == DriversVersion("Unknown", reason=why)
    assert not drivers.detected


def test_no_pvaddons_at_all() -> None:
    # GA: micro is only defaulted when the map is not empty
    view = read_guest({"data/os_distro": "debian"})
    assert view.metrics.pv_drivers_version == {}
    assert view.drivers.kind == "Unknown"


@pytest.mark.parametrize("key, value", [("attr/PVAddons/MinorVersion", "1.0"),
                                        ("attr/PVAddons/MinorVersion", ""),
                                        ("attr/PVAddons/MinorVersion", " 2"),
                                        ("attr/PVAddons/MicroVersion", "3b"),
                                        ("attr/PVAddons/BuildVersion", "dev")])
def test_a_non_integer_version_means_no_tools(key: str, value: str) -> None:
    # PV: int_of_string fails inside the try -> Unknown; micro and build too when present
    drivers = read_guest({**PVADDONS, key: value}).drivers
    assert drivers.kind == "Unknown"
    assert drivers.reason is not None and repr(value) in drivers.reason


def test_ocaml_integer_syntax_is_accepted() -> None:
    # PV uses int_of_string, which takes OCaml literals: 0x10 is 16, 1_0 is 10
    tree = {**PVADDONS, "attr/PVAddons/MinorVersion": "0x10", "attr/PVAddons/MicroVersion": "1_0"}
    assert read_guest(tree).drivers == DriversVersion("Linux", 1, 16, 10, 4)


def test_windows_by_distro() -> None:
    # PV: distro "windows" in os_version -> Windows
    assert read_guest({**PVADDONS, "data/os_distro": "windows"}).drivers.kind == "Windows"


@pytest.mark.parametrize("text, value", [
    ("12", 12), ("-1", -1), ("+7", 7), ("0x1F", 31), ("0o17", 15), ("0b101", 5), ("1_000", 1000),
    ("4611686018427387903", 2 ** 62 - 1), ("-4611686018427387904", -2 ** 62),
    ("4611686018427387904", None), ("_1", None), ("0x", None), ("1.0", None), ("", None),
    (" 1", None), ("1 ", None), ("one", None), ("-", None)])
def test_ocaml_int_of_string(text: str, value: object) -> None:
    # OCaml runtime/ints.c parse_intnat, nbits 63 (int_of_string)
    assert ocaml_int(text) == value


# --- networks (GA networks) -------------------------------------------------------------------

def test_ipv6_only_has_no_ip_alias() -> None:
    # GA find_all_vif_ips: the "N/ip" alias is made only for the first ipv4 address
    assert metrics({"attr/vif/0/ipv6/0": "2001:db8::5", "attr/vif/0/ipv6/1": "fe80::1"}).networks == {
        "0/ipv6/0": "2001:db8::5", "0/ipv6/1": "fe80::1"}


def test_indexes_sort_as_integers() -> None:
    # GA cmp: int_of_string comparison, so index 2 comes before 10 and gets the "0/ip" alias
    nets = metrics({"attr/vif/0/ipv4/10": "10.0.0.10", "attr/vif/0/ipv4/2": "10.0.0.2"}).networks
    assert nets == {"0/ip": "10.0.0.2", "0/ipv4/2": "10.0.0.2", "0/ipv4/10": "10.0.0.10"}


def test_a_non_integer_index_loses_the_family_and_what_came_before() -> None:
    # GA find_all_vif_ips: the sort raises Failure and the handler returns [] for this VIF,
    # dropping what earlier address families of the VIF had found.  Which family comes first
    # is xapi's listing order: XS ls_lR prepends each node it reads, XX list keeps the last
    # occurrence (Listext.setify), so a family created later is processed earlier.
    # ipv4 created before ipv6: ipv6 is processed first and fails, then ipv4 is added.
    tree = {"attr/vif/0/ipv4/0": "10.0.0.2", "attr/vif/0/ipv6/0": "2001:db8::2",
            "attr/vif/0/ipv6/x": "2001:db8::3", "attr/vif/1/ipv4/0": "10.1.0.2"}
    assert metrics(tree).networks == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2",
                                      "1/ip": "10.1.0.2", "1/ipv4/0": "10.1.0.2"}
    # ipv6 created first: ipv4 is processed first, then ipv6 fails and takes ipv4 with it
    tree = {"attr/vif/0/ipv6/0": "2001:db8::2", "attr/vif/0/ipv6/x": "2001:db8::3",
            "attr/vif/0/ipv4/0": "10.0.0.2", "attr/vif/1/ipv4/0": "10.1.0.2"}
    assert metrics(tree).networks == {"1/ip": "10.1.0.2", "1/ipv4/0": "10.1.0.2"}


def test_a_single_non_integer_index_is_never_compared() -> None:
    # GA: List.stable_sort never calls cmp on a one-element list
    assert metrics({"attr/vif/0/ipv4/a": "10.0.0.2"}).networks == {"0/ip": "10.0.0.2",
                                                                    "0/ipv4/a": "10.0.0.2"}


def test_sriov_vf() -> None:
    # GA get_initial_guest_metrics: networks "xenserver/attr" "net-sriov-vf", same rules
    tree = {"attr/vif/0/ipv4/0": "10.0.0.2",
            "xenserver/attr/net-sriov-vf/3/ipv4/0": "192.168.7.2",
            "xenserver/attr/net-sriov-vf/3/ipv6/0": "2001:db8:7::2"}
    assert metrics(tree).networks == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2",
                                      "3/ip": "192.168.7.2", "3/ipv4/0": "192.168.7.2",
                                      "3/ipv6/0": "2001:db8:7::2"}


def test_sriov_id_equal_to_a_vif_id_loses_to_the_vif() -> None:
    # GA: attr/vif pairs come first in the list; a VM_guest_metrics map keeps the first binding
    tree = {"attr/vif/0/ipv4/0": "10.0.0.2", "xenserver/attr/net-sriov-vf/0/ipv4/0": "192.168.7.2"}
    assert metrics(tree).networks == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2"}


def test_legacy_layout() -> None:
    # GA find_eths/find_all_ips: attr/ethN/ip -> N/ip and N/ipv4/0; ipv6/M/addr -> N/ipv6/M;
    # the prefix list is eth, xenbr, eno, ens, emp, enx: "enp0s3" matches none of them
    tree = {"attr/eth0/ip": "10.0.0.2", "attr/eth0/ipv6/0/addr": "2001:db8::2",
            "attr/xenbr1/ip": "10.1.0.2", "attr/enp0s3/ip": "10.3.0.2"}
    assert metrics(tree).networks == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2",
                                      "0/ipv6/0": "2001:db8::2", "1/ip": "10.1.0.2",
                                      "1/ipv4/0": "10.1.0.2"}


def test_legacy_ignored_once_attr_vif_exists() -> None:
    # GA networks: find_eths only when find_vifs found nothing
    tree = {"attr/eth0/ip": "10.9.9.9", "attr/vif/0/ipv4/0": "10.0.0.2"}
    assert metrics(tree).networks == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2"}


def test_list_is_a_string_prefix_match() -> None:
    # XX list: String.starts_with ~prefix:dir, so listing attr/vif/1 also sees attr/vif/10's
    # entries; their first component ("0") is neither ipv4 nor ipv6, so nothing changes
    tree = {"attr/vif/1/ipv4/0": "10.1.0.2", "attr/vif/10/ipv4/0": "10.10.0.2"}
    assert metrics(tree).networks == {"1/ip": "10.1.0.2", "1/ipv4/0": "10.1.0.2",
                                      "10/ip": "10.10.0.2", "10/ipv4/0": "10.10.0.2"}


# --- xenopsd's snapshot (XS VM.get_state) ------------------------------------------------------

def test_xenopsd_depths_and_exclusions() -> None:
    tree = {"data/os_name": "x", "data/volumes/0/name": "/dev/xvda",
            "attr/vif/0/ipv4/0": "10.0.0.2", "attr/vif/0/ipv4/0/deeper": "no",
            "attr/os/hotfixes/0/id": "KB1", "feature/hotplug/vif": "1",
            "device/vif/0/mac": "00:16:3e:00:00:01", "memory/target": "1048576"}
    paths = {k for k, _ in xenopsd_snapshot(tree)}
    # data depth 0: data/volumes is read (a child) but not its children
    assert {"data", "data/os_name", "data/volumes"} <= paths
    assert "data/volumes/0" not in paths
    # attr depth 3: attr/vif/0/ipv4/0 is read, one level further is not
    assert "attr/vif/0/ipv4/0" in paths and "attr/vif/0/ipv4/0/deeper" not in paths
    # attr/os/hotfixes is excluded; device/ and memory/ are not guest-agent roots
    assert not any(p.startswith(("attr/os/hotfixes", "device", "memory")) for p in paths)
    assert "feature/hotplug/vif" in paths


# --- netbios name, other, flags ----------------------------------------------------------------

@pytest.mark.parametrize("tree, expected", [
    ({"data/host_name_dns": "web01"}, {"host_name": "web01"}),
    ({"data/host_name_dns": "web01", "data/domain": "corp.example.com"},
     {"host_name": "web01.corp.example.com"}),
    # the agent's old defect: a fully qualified host name shows the domain twice
    ({"data/host_name_dns": "web01.corp.example.com", "data/domain": "corp.example.com"},
     {"host_name": "web01.corp.example.com.corp.example.com"}),
    ({"data/domain": "corp.example.com"}, {}),
])
def test_netbios_name(tree: dict[str, str], expected: dict[str, str]) -> None:
    # GA get_initial_guest_metrics, netbios_name
    assert metrics(tree).netbios_name == expected


def test_other_and_cant_suspend_reason() -> None:
    # GA get_initial_guest_metrics to_map: feature-suspend is replaced by the reason when
    # data/cant_suspend_reason exists; data/ts adds "data-ts"
    tree = {"control/feature-suspend": "1", "control/shutdown": "",
            "data/cant_suspend_reason": "busy", "data/ts": "123"}
    assert metrics(tree).other == {"data-cant-suspend-reason": "busy", "shutdown": "",
                                   "data-ts": "123"}


@pytest.mark.parametrize("value, tristate", [("1", "yes"), ("0", "no"), ("true", "unspecified"),
                                             ("", "unspecified"), (None, "unspecified")])
def test_hotplug_tristate(value: object, tristate: str) -> None:
    # GA get_tristate: exactly "0" or "1"
    tree = {} if value is None else {"feature/hotplug/vif": str(value), "feature/hotplug/vbd": str(value)}
    m = metrics(tree)
    assert (m.can_use_hotplug_vif, m.can_use_hotplug_vbd) == (tristate, tristate)


def test_squeezed_tests_existence_only() -> None:
    # SQ get_feature_balloon/get_guest_agent: a read that does not raise Enoent is "true",
    # whatever the value; RRD: Int64.of_string of data/meminfo_free
    view = read_guest({"control/feature-balloon": "0", "data/meminfo_free": "abc"})
    assert view.squeezed == Squeezed(can_balloon=True, has_guest_agent=False, memory_internal_free=None)


def test_services() -> None:
    # GA get_guest_services and xapi_globs.ml guest_service_keys (default list)
    tree = {"data/service/sshd/state": "running",
            "data/pvs_target/target_software_version": "1.0"}
    assert guest_metrics(xenopsd_snapshot(tree)).services == {
        "sshd/state": "running", "pvs_target/target_software_version": "1.0"}


@pytest.mark.parametrize("path, noticed", [
    ("attr/PVAddons/Installed", True), ("attr/vif/0/ipv4/0", True), ("control/feature-balloon", True),
    ("feature/hotplug/vif", True), ("xenserver/attr/net-sriov-vf/0/ipv4/0", True), ("data/ts", True),
    # not watched: a change here waits for the next watched write (hence the agent's nudge of
    # attr/PVAddons/Installed with every data/ batch, schema.py NUDGE_KEY)
    ("data/os_name", False), ("data/host_name_dns", False), ("data/meminfo_free", False),
    # unwatched since xen-api commit ad5cbe5e (June 2025)
    ("data/updated", False),
    # a string prefix is not a path prefix
    ("attribute", False),
])
def test_xenopsd_watches(path: str, noticed: bool) -> None:
    # XS Actions.interesting_paths_for_domain
    assert xenopsd_notices(path) is noticed
