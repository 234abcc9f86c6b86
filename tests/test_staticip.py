"""Static IP settings: parsing xenopsd's keys, matching the NIC, the manager's job flow.

The key sets are built by hand from xen-api ocaml/xenopsd/xc/xenops_server_xen.ml:
``xenstore_of_static_ip_setting`` (written at VIF plug: mac, error-code "0",
error-msg "", enabled 0/1/2 with address and, only when given, gateway; the
same with a 6 suffix) and ``set_ip_static`` / ``set_ip_unspecified_or_autoconf``
(each ``VIF.configure_ipv4/ipv6``: enabled[6] written, address[6]/gateway[6]
written or removed).  xapi's checks before them: ocaml/xapi/xapi_vif.ml
``configure_ipv4`` (``Helpers.assert_is_valid_cidr``: ocaml/xapi/helpers.ml
``parse_cidr`` with Ipaddr's Prefix.of_string).
"""

from __future__ import annotations

import ipaddress

import pytest

from xenguest_agent.facts import Interface
from xenguest_agent.host import CommandResult, Host
from xenguest_agent.staticip import (
    FEATURE_KEY,
    Refusal,
    StaticIpManager,
    match_nic,
    parse_setting,
)
from xenguest_agent.staticip.linux import Networkd
from xenguest_agent.staticip.setting import (
    AUTOMATIC,
    STATIC,
    UNSPECIFIED,
    NicConfig,
    parse_state,
)

MAC = "00:16:3e:5a:01:02"
BASE = "xenserver/device/vif/0/static-ip-setting"


def plug(**extra: str) -> dict[str, str]:
    """What xenstore_of_static_ip_setting writes for an unspecified VIF, plus overrides."""
    keys = {"mac": MAC, "error-code": "0", "error-msg": "", "enabled": "0", "enabled6": "0"}
    keys.update(extra)
    return keys


# --- parsing ----------------------------------------------------------------------------------

def test_plug_with_nothing_specified_is_unspecified_for_both_families() -> None:
    setting = parse_setting(plug())
    assert setting.mac == MAC
    assert setting.ipv4 is not None and setting.ipv4.mode == UNSPECIFIED
    assert setting.ipv6 is not None and setting.ipv6.mode == UNSPECIFIED


def test_static_ipv4_with_gateway_and_static_ipv6_without() -> None:
    # Static4 (address :: _, Some gw) -> enabled 1, address, gateway;
    # Static6 (address6 :: _, None) -> enabled6 1, address6 and no gateway6 key.
    setting = parse_setting(plug(enabled="1", address="192.0.2.10/24", gateway="192.0.2.1",
                                 enabled6="1", address6="2001:db8::10/64"))
    assert setting.ipv4 is not None and setting.ipv4.mode == STATIC
    assert setting.ipv4.address == ipaddress.ip_interface("192.0.2.10/24")
    assert setting.ipv4.gateway == ipaddress.ip_address("192.0.2.1")
    assert setting.ipv6 is not None and setting.ipv6.address == ipaddress.ip_interface("2001:db8::10/64")
    assert setting.ipv6.gateway is None


def test_dhcp_and_autoconf_are_mode_two() -> None:
    setting = parse_setting(plug(enabled="2", enabled6="2"))
    assert setting.ipv4 is not None and setting.ipv4.mode == AUTOMATIC
    assert setting.ipv6 is not None and setting.ipv6.mode == AUTOMATIC


def test_a_family_whose_enabled_key_is_absent_is_not_requested() -> None:
    # set_ipv4_configuration touches only the IPv4 keys; the agent removed enabled6 earlier.
    values = {"mac": MAC, "enabled": "1", "address": "10.0.0.5/8"}
    setting = parse_setting(values)
    assert setting.ipv6 is None
    merged = NicConfig(ipv6=parse_setting(plug(enabled6="2")).ipv6 or NicConfig().ipv6).merge(setting)
    assert merged.ipv6.mode == AUTOMATIC and merged.ipv4.mode == STATIC


def test_uppercase_mac_is_normalised() -> None:
    assert parse_setting(plug(mac=MAC.upper())).mac == MAC


@pytest.mark.parametrize("values, fragment", [
    (plug(enabled="3"), "enabled is '3'"),
    (plug(enabled="yes"), "enabled is 'yes'"),
    (plug(enabled="1"), "address is missing"),
    (plug(enabled="1", address="192.0.2.10"), "not an address in CIDR form"),
    (plug(enabled="1", address="192.0.2.10/255.255.255.0"), "not an address in CIDR form"),
    (plug(enabled="1", address="192.0.2.10/33"), "not a valid CIDR"),
    (plug(enabled="1", address="192.0.2.300/24"), "not a valid CIDR"),
    (plug(enabled="1", address="2001:db8::1/64"), "not an IPv4 address"),
    (plug(enabled="1", address="192.0.2.10/24", gateway="192.0.2.1; reboot"), "not an IP address"),
    (plug(enabled="1", address="192.0.2.10/24\nGateway=6.6.6.6"), "not an address in CIDR form"),
    (plug(enabled6="1", address6="fe80::1%eth0/64"), "not an address in CIDR form"),
    (plug(enabled6="1", address6="2001:db8::1/64", gateway6="192.0.2.1"), "not an IPv6 address"),
    (plug(mac="00:16:3e:zz:00:01"), "not a MAC address"),
])
def test_malformed_values_are_refused_with_code_two(values: dict[str, str], fragment: str) -> None:
    with pytest.raises(Refusal) as caught:
        parse_setting(values)
    assert caught.value.code == "2"
    assert fragment in caught.value.message
    assert all(" " <= c <= "~" for c in caught.value.message)


def test_state_round_trips_and_garbage_means_nothing_managed() -> None:
    config = NicConfig().merge(parse_setting(plug(enabled="1", address="192.0.2.10/24",
                                                  gateway="192.0.2.1", enabled6="2")))
    assert parse_state(config.state_text()) == config
    assert parse_state("ipv4=1 not-an-address\n") == NicConfig()
    assert parse_state(None) == NicConfig()


# --- NIC matching -----------------------------------------------------------------------------

ETH0 = Interface("eth0", MAC, vif=0)
ETH1 = Interface("eth1", "00:16:3e:5a:01:03", vif=1)
BR0 = Interface("br0", MAC, lower=("eth0",))


def test_the_vif_device_id_names_the_nic_not_a_bridge_with_the_same_mac() -> None:
    nic = match_nic("xenserver/device/vif", 0, MAC, [BR0, ETH0, ETH1])
    assert (nic.name, nic.mac) == ("eth0", MAC)


def test_mac_is_the_fallback_when_the_guest_does_not_know_vif_ids() -> None:
    unknown = Interface("enX0", MAC)
    assert match_nic("xenserver/device/vif", 4, MAC, [unknown]).name == "enX0"


def test_a_vif_whose_mac_disagrees_with_the_setting_is_refused() -> None:
    with pytest.raises(Refusal) as caught:
        match_nic("xenserver/device/vif", 1, MAC, [ETH0, ETH1])
    assert caught.value.code == "4"


def test_no_interface_named_is_error_101_and_nothing_else_is_touched() -> None:
    with pytest.raises(Refusal) as caught:
        match_nic("xenserver/device/vif", 7, "00:16:3e:00:00:99", [ETH0, ETH1])
    assert caught.value.code == "101"


def test_an_interface_known_to_be_another_vif_is_not_taken_by_mac() -> None:
    with pytest.raises(Refusal):
        match_nic("xenserver/device/vif", 5, ETH1.mac, [ETH0, ETH1])


# --- the manager ------------------------------------------------------------------------------

class Recorder:
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv, timeout=5.0):  # type: ignore[no-untyped-def]
        self.calls.append(list(argv))
        code = 1 if self.fail and self.fail in argv else 0
        return CommandResult(tuple(argv), code, "", "boom: no such link\n" if code else "")


class Store:
    """A dict standing in for XenStore at the daemon seam (read/ls/write/rm)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = dict(keys)

    def read(self, path: str) -> str | None:
        return self.keys.get(path)

    def ls(self, path: str) -> list[str] | None:
        children = {k[len(path) + 1:].split("/")[0] for k in self.keys if k.startswith(path + "/")}
        return sorted(children) if children else None

    def apply(self, out: dict[str, str | None]) -> None:
        for path, value in out.items():
            if value is None:
                self.keys.pop(path, None)
            else:
                self.keys[path] = value


def vif0(**extra: str) -> dict[str, str]:
    return {f"{BASE}/{k}": v for k, v in plug(**extra).items()}


def manager(tmp_path, runner: Recorder, interfaces=(ETH0, ETH1), enabled: bool = True):  # type: ignore[no-untyped-def]
    return StaticIpManager(Host(str(tmp_path), runner), lambda: list(interfaces), enabled, Networkd())


def drive(mgr: StaticIpManager, store: Store) -> list[str]:
    names = []
    for job in mgr.on_change(store.read, store.ls):
        job.run()
        names.append(job.nic.name if job.nic else "-")
        store.apply(mgr.finish(job, store.read))
    return names


def test_static_setting_is_applied_reported_and_cleared(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = Recorder()
    store = Store(vif0(enabled="1", address="192.0.2.10/24", gateway="192.0.2.1", enabled6="0"))
    mgr = manager(tmp_path, runner)
    assert drive(mgr, store) == ["eth0"]
    assert store.keys[f"{BASE}/error-code"] == "0" and store.keys[f"{BASE}/error-msg"] == ""
    assert f"{BASE}/enabled" not in store.keys and f"{BASE}/enabled6" not in store.keys
    assert runner.calls == [["networkctl", "reload"], ["networkctl", "reconfigure", "eth0"]]
    assert (tmp_path / "etc/systemd/network/05-xenguest-agent-eth0.network").exists()
    # our own writes fire the watch again: nothing left to do
    assert drive(mgr, store) == []


def test_the_same_setting_at_the_next_plug_changes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = Recorder()
    mgr = manager(tmp_path, runner)
    keys = vif0(enabled="1", address="192.0.2.10/24", gateway="192.0.2.1", enabled6="2")
    drive(mgr, Store(keys))
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    runner.calls.clear()
    store = Store(keys)  # xenopsd rewrites every key at the next VIF plug
    assert drive(mgr, store) == ["eth0"]
    assert runner.calls == []
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert store.keys[f"{BASE}/error-code"] == "0"


def test_ipv4_change_keeps_the_ipv6_setting_applied_before(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = manager(tmp_path, Recorder())
    store = Store(vif0(enabled="0", enabled6="1", address6="2001:db8::10/64", gateway6="2001:db8::1"))
    drive(mgr, store)
    # set_ip_static for IPv4 only, one transaction: enabled=1, address, gateway
    store.keys.update({f"{BASE}/enabled": "1", f"{BASE}/address": "192.0.2.10/24"})
    drive(mgr, store)
    text = (tmp_path / "etc/systemd/network/05-xenguest-agent-eth0.network").read_text()
    assert "Address=192.0.2.10/24" in text and "Address=2001:db8::10/64" in text
    assert "Gateway=2001:db8::1" in text


def test_malformed_setting_is_refused_and_nothing_changes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = Recorder()
    store = Store(vif0(enabled="1", address="192.0.2.10/24", gateway="not-an-ip"))
    assert drive(manager(tmp_path, runner), store) == ["-"]
    assert store.keys[f"{BASE}/error-code"] == "2"
    assert "gateway 'not-an-ip'" in store.keys[f"{BASE}/error-msg"]
    assert f"{BASE}/enabled" not in store.keys
    assert runner.calls == [] and not any(tmp_path.rglob("*.network"))


def test_a_failed_command_is_reported_and_the_files_are_put_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = Recorder(fail="reconfigure")
    keys = vif0(enabled="1", address="192.0.2.10/24")
    store = Store(keys)
    mgr = manager(tmp_path, runner)
    drive(mgr, store)
    assert store.keys[f"{BASE}/error-code"] == "1"
    assert store.keys[f"{BASE}/error-msg"] == "networkctl reconfigure eth0 exited 1: boom: no such link"
    assert not (tmp_path / "etc/systemd/network/05-xenguest-agent-eth0.network").exists()
    runner.fail = None
    store = Store(keys)  # the next request of the same setting runs again
    drive(mgr, store)
    assert store.keys[f"{BASE}/error-code"] == "0"


def test_a_newer_request_arriving_during_the_job_is_not_cleared(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(vif0(enabled="1", address="192.0.2.10/24"))
    mgr = manager(tmp_path, Recorder())
    [job] = mgr.on_change(store.read, store.ls)
    assert mgr.on_change(store.read, store.ls) == []  # one job per NIC at a time
    job.run()
    store.keys[f"{BASE}/enabled"] = "2"  # VIF.configure_ipv4 mode=DHCP meanwhile
    store.keys.pop(f"{BASE}/address")
    store.apply(mgr.finish(job, store.read))
    assert store.keys[f"{BASE}/enabled"] == "2"
    assert f"{BASE}/enabled6" not in store.keys  # that one was acted on
    assert drive(mgr, store) == ["eth0"]
    assert "DHCP=ipv4" in (tmp_path / "etc/systemd/network/05-xenguest-agent-eth0.network").read_text()


def test_only_decimal_device_ids_are_followed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store({"xenserver/device/vif/..%2f/static-ip-setting/enabled": "1",
                   "xenserver/device/vif/0x1/static-ip-setting/enabled": "1"})
    assert manager(tmp_path, Recorder()).on_change(store.read, store.ls) == []


def test_advertise_follows_the_setting_and_the_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    on = manager(tmp_path, Recorder())
    assert on.advertise() and on.feature_keys() == {FEATURE_KEY: "1"}
    assert on.watch_paths() == ["xenserver/device/vif", "xenserver/device/net-sriov-vf"]
    off = manager(tmp_path, Recorder(), enabled=False)
    assert not off.advertise() and off.feature_keys() == {} and off.watch_paths() == []
    bare = StaticIpManager(Host(str(tmp_path), Recorder()), list)
    assert bare.backend is None and not bare.advertise()


def test_no_backend_refuses_with_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = StaticIpManager(Host(str(tmp_path), Recorder()), lambda: [ETH0])
    job = mgr._job("xenserver/device/vif", 0, Store(vif0(enabled="2")).read)
    assert job is not None and job.code == "3"
    assert job.message.startswith("no supported network manager")


def test_detect_picks_the_running_manager(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xenguest_agent.staticip import detect

    def touch(*paths: str) -> None:
        for p in paths:
            (tmp_path / p.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / p.lstrip("/")).write_text("")

    host = Host(str(tmp_path))
    assert detect(host) is None
    touch("/etc/network/interfaces", "/usr/sbin/ifup")
    assert type(detect(host)).__name__ == "Ifupdown"
    touch("/run/systemd/netif/state", "/usr/bin/networkctl")
    touch("/run/NetworkManager/devices", "/usr/bin/nmcli")
    # networkctl reload/reconfigure and nmcli talk to their daemon over the D-Bus system bus:
    # without it every request would fail (error-code 1) although the feature is advertised
    # (seen in the real-Xen systemd guest before it had dbus)
    assert type(detect(host)).__name__ == "Ifupdown"
    touch("/run/dbus/system_bus_socket")
    assert type(detect(host)).__name__ == "NetworkManager"
    (tmp_path / "run/NetworkManager/devices").unlink()
    (tmp_path / "run/NetworkManager").rmdir()
    assert type(detect(host)).__name__ == "Networkd"


def test_a_nic_not_there_yet_keeps_the_request_until_it_appears(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """At boot xenopsd writes the keys at VIF plug, possibly before the guest's
    interface exists: the agent reports 101 (the Windows agent's code for it) but
    keeps enabled, so the setting is applied once the interface shows up."""
    present: list[Interface] = []
    runner = Recorder()
    mgr = StaticIpManager(Host(str(tmp_path), runner), lambda: list(present), True, Networkd())
    store = Store(vif0(enabled="1", address="192.0.2.10/24"))
    assert drive(mgr, store) == ["-"]
    assert store.keys[f"{BASE}/error-code"] == "101"
    assert store.keys[f"{BASE}/enabled"] == "1"
    # nothing changed: no job, so no write that would fire the watch again
    assert mgr.on_change(store.read, store.ls) == []
    present.append(ETH0)
    assert drive(mgr, store) == ["eth0"]
    assert store.keys[f"{BASE}/error-code"] == "0"
    assert f"{BASE}/enabled" not in store.keys
    assert runner.calls[-1] == ["networkctl", "reconfigure", "eth0"]


def test_finish_writes_only_what_changes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """error-code 0 and error-msg "" are already there from the plug: rewriting them
    would fire every watcher for nothing."""
    store = Store(vif0(enabled="2", enabled6="2"))
    mgr = manager(tmp_path, Recorder())
    [job] = mgr.on_change(store.read, store.ls)
    job.run()
    assert mgr.finish(job, store.read) == {f"{BASE}/enabled": None, f"{BASE}/enabled6": None}


def test_an_sriov_vf_is_matched_by_mac_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """xenopsd's Network.Sriov branch writes the same keys under
    xenserver/device/net-sriov-vf/<devid>; the VF is a PCI NIC, not a VIF, so the
    device id says nothing about the guest interface."""
    vf = Interface("ens5", "00:16:3e:77:00:01")
    base = "xenserver/device/net-sriov-vf/0/static-ip-setting"
    store = Store({f"{base}/mac": "00:16:3e:77:00:01", f"{base}/enabled": "2"})
    mgr = manager(tmp_path, Recorder(), interfaces=(ETH0, vf))
    assert drive(mgr, store) == ["ens5"]
    assert store.keys[f"{base}/error-code"] == "0"


def test_odd_device_ids_are_skipped_not_crashed_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only canonical decimal ids name a device (paths are built from integers):
    "00" would be rebuilt as "0", a non-ASCII digit is not a number to int()."""
    store = Store({"xenserver/device/vif/00/static-ip-setting/enabled": "1",
                   "xenserver/device/vif/\u00b2/static-ip-setting/enabled": "1"})
    assert manager(tmp_path, Recorder()).on_change(store.read, store.ls) == []


@pytest.mark.parametrize("key, value", [("mac", MAC + "\n"), ("address", "192.0.2.10/24\n"),
                                        ("gateway", "192.0.2.1\n")])
def test_a_trailing_newline_is_refused(key: str, value: str) -> None:
    """Python's "$" also matches before a final newline: the checks must not."""
    with pytest.raises(Refusal):
        parse_setting(plug(**{"enabled": "1", "address": "192.0.2.10/24", key: value}))

