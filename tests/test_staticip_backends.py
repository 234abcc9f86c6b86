"""Each backend's files and commands, checked against the tool's documented syntax.

systemd.network(5) ([Match] MACAddress=/Name=, [Network] DHCP=, IPv6AcceptRA=,
Address=, Gateway=), nm-settings-keyfile(5) and nm-settings-nmcli(5) (ipv4.method
manual/auto, address1=, gateway=), interfaces(5) (iface IF inet static/dhcp,
inet6 static/auto, address ADDR/PREFIX, gateway), rc.conf(5) (ifconfig_IF,
ifconfig_IF_ipv6, defaultrouter, ipv6_defaultrouter).  For ifupdown the file is
also brought up by Debian's real ifup in a network namespace.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from xenguest_agent.host import CommandResult, Host
from xenguest_agent.staticip.freebsd import FreeBsdRcConf, rc_values
from xenguest_agent.staticip.linux import Ifupdown, Networkd, NetworkManager
from xenguest_agent.staticip.plan import (
    ApplyFailed,
    Nic,
    RemoveFile,
    Run,
    WriteFile,
    execute,
)
from xenguest_agent.staticip.setting import NicConfig, Refusal, parse_setting

FIXTURES = Path(__file__).parent / "fixtures" / "staticip"
NIC = Nic("eth0", "00:16:3e:5a:01:02")


def config(**keys: str) -> NicConfig:
    return NicConfig().merge(parse_setting(keys))


STATIC = config(enabled="1", address="192.0.2.10/24", gateway="192.0.2.1",
                enabled6="1", address6="2001:db8::10/64", gateway6="2001:db8::1")
DHCP = config(enabled="2", enabled6="2")
V4_ONLY = config(enabled="1", address="198.51.100.7/25", enabled6="0")
NONE = config(enabled="0", enabled6="0")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float = 5.0) -> CommandResult:
        self.calls.append(list(argv))
        return CommandResult(tuple(argv), 0, "", "")


def apply(host: Host, backend, old: NicConfig, new: NicConfig):  # type: ignore[no-untyped-def]
    steps = backend.plan(host, NIC, old, new)
    execute(host, steps)
    return steps


# --- systemd-networkd -------------------------------------------------------------------------

def parse_unit(text: str) -> configparser.ConfigParser:
    """systemd unit syntax: sections, Key=Value, repeatable keys (kept as lists)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"),
                                       delimiters=("=",), dict_type=_Multi, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


class _Multi(dict):  # type: ignore[type-arg]
    def __setitem__(self, key, value):  # type: ignore[no-untyped-def]
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def test_networkd_static_file(tmp_path: Path) -> None:
    runner = Recorder()
    host = Host(str(tmp_path), runner)
    steps = apply(host, Networkd(), NicConfig(), STATIC)
    path = tmp_path / "etc/systemd/network/05-xenguest-agent-eth0.network"
    unit = parse_unit(path.read_text())
    assert unit["Match"]["MACAddress"] == "00:16:3e:5a:01:02" and unit["Match"]["Name"] == "eth0"
    net = path.read_text().split("[Network]\n", 1)[1].splitlines()
    assert net == ["DHCP=no", "IPv6AcceptRA=no", "Address=192.0.2.10/24", "Gateway=192.0.2.1",
                   "Address=2001:db8::10/64", "Gateway=2001:db8::1"]
    assert runner.calls == [["networkctl", "reload"], ["networkctl", "reconfigure", "eth0"]]
    assert isinstance(steps[0], WriteFile) and steps[0].mode == 0o644
    assert Networkd().plan(host, NIC, STATIC, STATIC) == ()


def test_networkd_dhcp_and_a_family_left_to_the_guest(tmp_path: Path) -> None:
    host = Host(str(tmp_path), Recorder())
    text = Networkd().render(NIC, DHCP)
    assert "DHCP=ipv4\nIPv6AcceptRA=yes\n" in text and "\nAddress=" not in text
    text = Networkd().render(NIC, V4_ONLY)
    assert "DHCP=no\nIPv6AcceptRA=yes\nAddress=198.51.100.7/25\n" in text and "Gateway" not in text
    apply(host, Networkd(), NicConfig(), DHCP)
    steps = Networkd().plan(host, NIC, DHCP, NONE)
    assert steps == (RemoveFile("/etc/systemd/network/05-xenguest-agent-eth0.network"),
                     Run(("networkctl", "reload")), Run(("networkctl", "reconfigure", "eth0")))


def test_networkd_without_a_known_mac_matches_the_name_only() -> None:
    text = Networkd().render(Nic("enX1", None), DHCP)
    assert "[Match]\nName=enX1\n\n" in text


# --- NetworkManager ---------------------------------------------------------------------------

def test_networkmanager_keyfile(tmp_path: Path) -> None:
    runner = Recorder()
    host = Host(str(tmp_path), runner)
    nm = NetworkManager()
    apply(host, nm, NicConfig(), STATIC)
    path = tmp_path / "etc/NetworkManager/system-connections/xenguest-agent-eth0.nmconnection"
    assert path.stat().st_mode & 0o777 == 0o600  # nm-settings-keyfile(5): else NM ignores it
    key = configparser.ConfigParser(interpolation=None)
    key.read_string(path.read_text())
    assert dict(key["connection"]) == {"id": "xenguest-agent-eth0", "uuid": nm.uuid(NIC), "type": "ethernet",
                                       "interface-name": "eth0", "autoconnect-priority": "50"}
    assert dict(key["ethernet"]) == {"mac-address": "00:16:3E:5A:01:02"}
    assert dict(key["ipv4"]) == {"method": "manual", "address1": "192.0.2.10/24", "gateway": "192.0.2.1"}
    assert dict(key["ipv6"]) == {"method": "manual", "address1": "2001:db8::10/64", "gateway": "2001:db8::1"}
    assert runner.calls == [["nmcli", "connection", "load", ("/etc/NetworkManager/system-connections/"
                             "xenguest-agent-eth0.nmconnection")],
                            ["nmcli", "--wait", "30", "connection", "up", "uuid", nm.uuid(NIC)]]
    assert nm.plan(host, NIC, STATIC, STATIC) == ()
    assert "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n" in nm.render(NIC, DHCP)


def test_networkmanager_gives_the_nic_back(tmp_path: Path) -> None:
    runner = Recorder()
    host = Host(str(tmp_path), runner)
    nm = NetworkManager()
    apply(host, nm, NicConfig(), DHCP)
    runner.calls.clear()
    apply(host, nm, DHCP, NONE)
    assert runner.calls == [["nmcli", "connection", "delete", "uuid", nm.uuid(NIC)],
                            ["nmcli", "device", "connect", "eth0"]]
    assert not any(tmp_path.rglob("*.nmconnection"))
    assert nm.plan(host, NIC, NONE, NONE) == ()


# --- ifupdown ---------------------------------------------------------------------------------

DEBIAN_INTERFACES = ("# interfaces(5) file used by ifup(8) and ifdown(8)\n"
                     "source /etc/network/interfaces.d/*\n\n"
                     "auto lo\niface lo inet loopback\n")


def debian(tmp_path: Path, interfaces: str = DEBIAN_INTERFACES) -> Host:
    (tmp_path / "etc/network/interfaces.d").mkdir(parents=True)
    (tmp_path / "etc/network/interfaces").write_text(interfaces)
    return Host(str(tmp_path), Recorder())


def test_ifupdown_stanza(tmp_path: Path) -> None:
    host = debian(tmp_path)
    steps = Ifupdown().plan(host, NIC, NicConfig(), STATIC)
    body = next(s for s in steps if isinstance(s, WriteFile)).text.split("\n", 2)[2]
    assert body == ("allow-hotplug eth0\n"
                    "iface eth0 inet static\n\taddress 192.0.2.10/24\n\tgateway 192.0.2.1\n"
                    "iface eth0 inet6 static\n\taddress 2001:db8::10/64\n\tgateway 2001:db8::1\n")
    assert steps[-1] == Run(("ifup", "eth0"))
    assert "iface eth0 inet dhcp\niface eth0 inet6 auto\n" in Ifupdown().render(NIC, DHCP)


def test_ifupdown_takes_the_interface_down_before_changing_its_stanza(tmp_path: Path) -> None:
    host = debian(tmp_path)
    execute(host, Ifupdown().plan(host, NIC, NicConfig(), DHCP))
    steps = Ifupdown().plan(host, NIC, DHCP, STATIC)
    assert steps[0] == Run(("ifdown", "eth0"), check=False, undo=("ifup", "eth0"))
    assert isinstance(steps[1], WriteFile) and steps[2] == Run(("ifup", "eth0"))
    execute(host, steps)
    assert Ifupdown().plan(host, NIC, STATIC, STATIC) == ()


def test_ifupdown_refuses_an_interface_configured_elsewhere(tmp_path: Path) -> None:
    host = debian(tmp_path, DEBIAN_INTERFACES + "allow-hotplug eth0\niface eth0 inet dhcp\n")
    with pytest.raises(Refusal) as caught:
        Ifupdown().plan(host, NIC, NicConfig(), STATIC)
    assert caught.value.code == "4"
    assert caught.value.message.startswith("eth0 is already configured in /etc/network/interfaces")
    assert not any((tmp_path / "etc/network/interfaces.d").iterdir())


def test_ifupdown_refuses_when_interfaces_d_is_not_read(tmp_path: Path) -> None:
    host = debian(tmp_path, "auto lo\niface lo inet loopback\n")
    with pytest.raises(Refusal, match="does not source /etc/network/interfaces.d"):
        Ifupdown().plan(host, NIC, NicConfig(), STATIC)


def test_ifupdown_file_name_is_one_source_directory_reads() -> None:
    # interfaces(5): source-directory takes names matching ^[a-zA-Z0-9_-]+$ only
    assert Ifupdown().path(Nic("eth0.100", None)).endswith("/xenguest-agent-eth0_100")


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def test_ifupdown_stanza_brought_up_by_the_real_ifup(tmp_path: Path, netns: str) -> None:
    """Debian's ifup (package ifupdown) reads our generated tree inside a network
    namespace: the address and default route appear, and ifdown removes them."""
    ifup = shutil.which("ifup")
    if ifup is None:
        pytest.fail("Debian's ifupdown is required for this test (apt-get install ifupdown)", pytrace=False)
    _ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    root = tmp_path / "root"
    (root / "etc/network/interfaces.d").mkdir(parents=True)
    (root / "etc/network/interfaces").write_text(f"source {root}/etc/network/interfaces.d/*\n")
    state = tmp_path / "state"
    state.mkdir()

    def in_netns(argv: Sequence[str], timeout: float = 5.0) -> CommandResult:
        tool, *rest = argv
        full = ["ip", "netns", "exec", netns, tool, "-i", f"{root}/etc/network/interfaces",
                "--state-dir", str(state), *rest]
        done = subprocess.run(full, check=False, capture_output=True, text=True, timeout=timeout)
        return CommandResult(tuple(full), done.returncode, done.stdout, done.stderr)

    host = Host(str(root), in_netns)
    v4 = config(enabled="1", address="192.0.2.10/24", gateway="192.0.2.1")
    backend = Ifupdown()
    execute(host, backend.plan(host, NIC, NicConfig(), v4))
    assert "inet 192.0.2.10/24" in _ip(netns, "-4", "addr", "show", "dev", "eth0")
    assert "default via 192.0.2.1 dev eth0" in _ip(netns, "-4", "route", "show")
    execute(host, backend.plan(host, NIC, v4, NONE))
    assert "192.0.2.10" not in _ip(netns, "-4", "addr", "show", "dev", "eth0")
    assert not (root / "etc/network/interfaces.d/xenguest-agent-eth0").exists()


# --- FreeBSD rc.conf --------------------------------------------------------------------------

def freebsd(tmp_path: Path) -> Host:
    shutil.copytree(FIXTURES / "freebsd", tmp_path, dirs_exist_ok=True)
    return Host(str(tmp_path), Recorder())


XN0 = Nic("xn0", "00:16:3e:5a:01:02")


def sysrc(host: Host, steps) -> None:  # type: ignore[no-untyped-def]
    """Apply sysrc steps to the captured rc.conf the way sysrc(8) edits it."""
    path = Path(host.path("/etc/rc.conf"))
    lines = path.read_text().splitlines()
    for step in steps:
        argv = list(step.argv)
        if argv[0] != "sysrc":
            continue
        if argv[1] == "-x":
            lines = [line for line in lines if not line.startswith(argv[2] + "=")]
            continue
        name, value = argv[1].split("=", 1)
        new = f'{name}="{value}"'
        lines = [new if line.startswith(name + "=") else line for line in lines]
        if new not in lines:
            lines.append(new)
    path.write_text("\n".join(lines) + "\n")


def test_freebsd_static_then_again_then_back_to_dhcp(tmp_path: Path) -> None:
    host = freebsd(tmp_path)
    rc = FreeBsdRcConf()
    steps = rc.plan(host, XN0, NicConfig(), STATIC)
    assert [list(s.argv) for s in steps] == [
        ["service", "netif", "stop", "xn0"],
        ["sysrc", "ifconfig_xn0=inet 192.0.2.10/24"],
        ["sysrc", "defaultrouter=192.0.2.1"],
        ["sysrc", "ifconfig_xn0_ipv6=inet6 2001:db8::10/64"],
        ["sysrc", "ipv6_defaultrouter=2001:db8::1"],
        ["service", "netif", "start", "xn0"],
        ["service", "routing", "restart"],
    ]
    sysrc(host, steps)
    assert rc.plan(host, XN0, STATIC, STATIC) == ()
    back = rc.plan(host, XN0, STATIC, DHCP)
    assert [list(s.argv) for s in back][1:5] == [
        ["sysrc", "ifconfig_xn0=DHCP"], ["sysrc", "-x", "defaultrouter"],
        ["sysrc", "ifconfig_xn0_ipv6=inet6 accept_rtadv"], ["sysrc", "-x", "ipv6_defaultrouter"]]
    sysrc(host, back)
    values = rc_values(Path(host.path("/etc/rc.conf")).read_text())
    assert values["ifconfig_xn0"] == "DHCP" and "defaultrouter" not in values
    assert values["hostname"] == "fbsd14"


def test_freebsd_dhcp_already_configured_runs_nothing(tmp_path: Path) -> None:
    # the captured rc.conf already has ifconfig_xn0="DHCP" and inet6 accept_rtadv
    assert FreeBsdRcConf().plan(freebsd(tmp_path), XN0, NicConfig(), DHCP) == ()


def test_freebsd_leaves_a_router_it_did_not_set(tmp_path: Path) -> None:
    host = freebsd(tmp_path)
    with open(host.path("/etc/rc.conf"), "a") as handle:
        handle.write('defaultrouter="203.0.113.1"\n')
    steps = FreeBsdRcConf().plan(host, XN0, V4_ONLY, NONE)
    assert all("defaultrouter" not in " ".join(s.argv) for s in steps)


def test_rc_values_reads_as_sh_would() -> None:
    text = 'a="x y"  # note\nb=plain\n# c="no"\na=\'last\'\n'
    assert rc_values(text) == {"a": "last", "b": "plain"}


def test_freebsd_variable_names_follow_rc_subr() -> None:
    steps = FreeBsdRcConf().plan(Host("/nonexistent"), Nic("vlan0.5", None), NicConfig(), V4_ONLY)
    assert steps[1] == Run(("sysrc", "ifconfig_vlan0_5=inet 198.51.100.7/25"),
                           undo=("sysrc", "-x", "ifconfig_vlan0_5"))



def test_networkd_file_applied_by_the_real_systemd_networkd(tmp_path: Path, netns: str) -> None:
    """Debian's systemd-networkd reads our generated file (bind-mounted over
    /etc/systemd/network in a private mount namespace) inside a network namespace
    and configures the link it matches by MAC and name.  networkctl needs D-Bus,
    absent here, so networkd is started after the file is written (its start-up
    does what ``reload`` + ``reconfigure`` do); /sys is remounted read-only and
    /run/systemd/container written so networkd does not wait for udev (systemd
    src/shared/udev-util.c ``udev_available``, src/basic/virt.c ``detect_container``)."""
    import os
    import signal
    import time

    daemon = "/lib/systemd/systemd-networkd"
    if not os.path.exists(daemon) or shutil.which("unshare") is None:
        pytest.fail("systemd (systemd-networkd) and util-linux (unshare) are required", pytrace=False)
    _ip(netns, "link", "add", "eth0", "address", NIC.mac or "", "type", "veth", "peer", "name", "peer0")
    _ip(netns, "link", "set", "peer0", "up")
    host = Host(str(tmp_path), Recorder())
    execute(host, Networkd().plan(host, NIC, NicConfig(), config(enabled="1", address="192.0.2.10/24",
                                                                  gateway="192.0.2.1", enabled6="0")))
    network = tmp_path / "etc/systemd/network"
    # what netplan generates on Ubuntu for a DHCP NIC: ours must sort first to win
    netplan = tmp_path / "10-netplan-eth0.network"
    netplan.write_text("[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    script = (f"mount --bind {network} /etc/systemd/network && mount -t tmpfs tmpfs /run/systemd && "
              f"mkdir /run/systemd/network && cp {netplan} /run/systemd/network/ && "
              "echo docker > /run/systemd/container && mkdir /run/systemd/netif && "
              "chown systemd-network:systemd-network /run/systemd/netif && "
              f"exec ip netns exec {netns} sh -c 'mount -o remount,ro /sys && exec {daemon}'")
    with open(tmp_path / "networkd.log", "wb") as log:
        proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60  # failure guard only: the machine is shared
        while "192.0.2.10/24" not in _ip(netns, "-4", "addr", "show", "dev", "eth0"):
            assert proc.poll() is None, (tmp_path / "networkd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "networkd.log").read_text()[-2000:]
            time.sleep(0.1)
        while "default via 192.0.2.1 dev eth0" not in _ip(netns, "-4", "route", "show"):
            assert time.monotonic() < deadline, (tmp_path / "networkd.log").read_text()[-2000:]
            time.sleep(0.1)
        assert "eth0: Configuring with /etc/systemd/network/05-xenguest-agent-eth0.network" in \
            (tmp_path / "networkd.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


class Failing(Recorder):
    """Fails the first command whose argv equals ``fail``."""

    def __init__(self, fail: Sequence[str]) -> None:
        super().__init__()
        self.fail = list(fail)

    def __call__(self, argv: Sequence[str], timeout: float = 5.0) -> CommandResult:
        self.calls.append(list(argv))
        if list(argv) == self.fail:
            self.fail = []
            return CommandResult(tuple(argv), 1, "", "failed\n")
        return CommandResult(tuple(argv), 0, "", "")


def test_ifupdown_failure_brings_the_old_configuration_back_up(tmp_path: Path) -> None:
    """ifdown ran with the old stanza; if ifup of the new one fails, the old file is put
    back and brought up again, so a failed request does not leave the NIC down."""
    host = debian(tmp_path)
    execute(host, Ifupdown().plan(host, NIC, NicConfig(), DHCP))
    before = (tmp_path / "etc/network/interfaces.d/xenguest-agent-eth0").read_text()
    runner = Failing(["ifup", "eth0"])
    host = Host(str(tmp_path), runner)
    with pytest.raises(ApplyFailed, match="ifup eth0 exited 1: failed"):
        execute(host, Ifupdown().plan(host, NIC, DHCP, STATIC))
    assert (tmp_path / "etc/network/interfaces.d/xenguest-agent-eth0").read_text() == before
    assert runner.calls == [["ifdown", "eth0"], ["ifup", "eth0"], ["ifup", "eth0"]]


def test_freebsd_failure_restores_the_rc_conf_values(tmp_path: Path) -> None:
    host = freebsd(tmp_path)
    runner = Failing(["service", "netif", "start", "xn0"])
    host = Host(host.root, runner)
    with pytest.raises(ApplyFailed):
        execute(host, FreeBsdRcConf().plan(host, XN0, NicConfig(), V4_ONLY))
    # V4_ONLY leaves IPv6 automatic: the captured "inet6 accept_rtadv" already says so
    assert runner.calls == [["service", "netif", "stop", "xn0"],
                            ["sysrc", "ifconfig_xn0=inet 198.51.100.7/25"],
                            ["service", "netif", "start", "xn0"],  # fails
                            ["sysrc", "ifconfig_xn0=DHCP"],
                            ["service", "netif", "start", "xn0"]]


def test_networkmanager_failure_reloads_the_restored_file(tmp_path: Path) -> None:
    """nmcli(1) "connection load" rereads a file NM already knows; after a failed
    "up" the old file is back on disk and must be what NM holds too."""
    host = Host(str(tmp_path), Recorder())
    nm = NetworkManager()
    execute(host, nm.plan(host, NIC, NicConfig(), DHCP))
    path = "/etc/NetworkManager/system-connections/xenguest-agent-eth0.nmconnection"
    before = Path(host.path(path)).read_text()
    runner = Failing(["nmcli", "--wait", "30", "connection", "up", "uuid", nm.uuid(NIC)])
    host = Host(str(tmp_path), runner)
    with pytest.raises(ApplyFailed):
        execute(host, nm.plan(host, NIC, DHCP, STATIC))
    assert Path(host.path(path)).read_text() == before
    assert runner.calls[-1] == ["nmcli", "connection", "load", path]
    assert len(runner.calls) == 3
