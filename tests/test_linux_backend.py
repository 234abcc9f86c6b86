"""The Linux backend's pure parsers with inline text, and LinuxBackend on the fixture trees.

Parsers take text, not paths (node_exporter), so each quirk of a real file is one
inline case here; each distro's whole layout is a tree under tests/fixtures/linux/.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.base import (
    os_info_from_release,
    parse_os_release,
    parse_resolv_domain,
    split_version,
)
from xenguest_agent.backends.linux import (
    LinuxBackend,
    LinuxError,
    parse_legacy_release,
    parse_lsb_release,
    parse_meminfo,
    vif_from_nodename,
)
from xenguest_agent.facts import Capabilities, HostNames, Interface, Memory, OsInfo
from xenguest_agent.host import Host

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "linux"


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- parse_meminfo -------------------------------------------------------------------------------

MEMINFO_MODERN = dedent("""
    MemTotal:        4020016 kB
    MemFree:         2874520 kB
    MemAvailable:    3512784 kB
    Buffers:           53212 kB
    HugePages_Total:       0
    Hugepagesize:       2048 kB
    VmallocTotal:   34359738367 kB
    """)

MEMINFO_2_6_32 = dedent("""
    MemTotal:        1922480 kB
    MemFree:         1134832 kB
    Buffers:           48712 kB
    Cached:           431640 kB
    SwapTotal:       2064380 kB
    HardwareCorrupted:     0 kB
    HugePages_Total:       0
    """)


def test_meminfo_free_is_memavailable() -> None:
    assert parse_meminfo(MEMINFO_MODERN) == Memory(total_kib=4020016, free_kib=3512784)


def test_meminfo_without_memavailable_falls_back_to_memfree() -> None:
    assert parse_meminfo(MEMINFO_2_6_32) == Memory(total_kib=1922480, free_kib=1134832)


def test_meminfo_rhel6_backport_puts_memavailable_last() -> None:
    # RHEL 6.6+ with vm.meminfo_legacy_layout=0 appends MemAvailable as the last line.
    text = MEMINFO_2_6_32 + "MemAvailable:    1583024 kB\n"
    assert parse_meminfo(text) == Memory(total_kib=1922480, free_kib=1583024)


def test_meminfo_skips_garbage_lines() -> None:
    text = dedent("""
        garbage without a colon
        MemTotal:        2000 kB
        Weird:           lots kB
        : 12 kB
        MemFree:
        MemFree:         1500 kB
        """)
    assert parse_meminfo(text) == Memory(total_kib=2000, free_kib=1500)


def test_meminfo_without_total_is_an_error() -> None:
    with pytest.raises(LinuxError, match="MemTotal"):
        parse_meminfo("MemFree: 10 kB\nMemAvailable: 20 kB\n")


def test_meminfo_without_any_free_figure_is_an_error() -> None:
    with pytest.raises(LinuxError, match="MemFree"):
        parse_meminfo("MemTotal: 10 kB\nBuffers: 1 kB\n")


def test_meminfo_empty_is_an_error() -> None:
    with pytest.raises(LinuxError):
        parse_meminfo("")


# --- parse_os_release / os_info_from_release ----------------------------------------------------

def test_os_release_quoting_and_comments() -> None:
    text = dedent("""
        # a comment line
        NAME="Rocky Linux"
        ID=rocky
        VERSION_ID='9.3'

          PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"
        not an assignment
        1BAD=starts with a digit
        EMPTY=
        """)
    fields = parse_os_release(text)
    assert fields == {"NAME": "Rocky Linux", "ID": "rocky", "VERSION_ID": "9.3",
                      "PRETTY_NAME": "Rocky Linux 9.3 (Blue Onyx)", "EMPTY": ""}


def test_os_release_escaped_quote_and_backslash() -> None:
    fields = parse_os_release(r'NAME="say \"hi\" back\\slash"' + "\n")
    assert fields["NAME"] == 'say "hi" back\\slash'


def test_os_release_escaped_dollar_and_backtick() -> None:
    # os-release(5): shell special characters ("$", quotes, backslash, backtick) are
    # escaped with backslashes, following shell style; the value has them unescaped
    # (CPython's platform.freedesktop_os_release does the same).
    fields = parse_os_release(r'PRETTY_NAME="Price \$5 \`x\`"' + "\n")
    assert fields["PRETTY_NAME"] == "Price $5 `x`"


def test_os_release_unbalanced_quote_is_kept_as_text() -> None:
    assert parse_os_release('NAME="Broken Linux\n') == {"NAME": "Broken Linux"}


def test_os_release_later_assignment_wins() -> None:
    assert parse_os_release("ID=a\nID=b\n")["ID"] == "b"


@pytest.mark.parametrize("fields,expected", [
    ({"ID": "debian", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "VERSION_ID": "12"},
     OsInfo("Debian GNU/Linux 12 (bookworm)", "debian", "12", None, "k")),
    ({"ID": "ol", "NAME": "Oracle Linux Server", "VERSION": "8.9", "VERSION_ID": "8.9"},
     OsInfo("Oracle Linux Server 8.9", "oracle", "8", "9", "k")),
    ({"ID": "Arch", "NAME": "Arch Linux"}, OsInfo("Arch Linux", "arch", None, None, "k")),
    ({"NAME": "Mystery OS"}, OsInfo("Mystery OS", "mystery", None, None, "k")),
])
def test_os_info_from_release(fields: Dict[str, str], expected: OsInfo) -> None:
    assert os_info_from_release(fields, "k") == expected


def test_os_info_from_release_without_any_name() -> None:
    assert os_info_from_release({"VERSION_ID": "1"}, "k") is None


# --- split_version --------------------------------------------------------------------------------

@pytest.mark.parametrize("version,expected", [
    ("12", ("12", None)),
    ("12.5", ("12", "5")),
    ("24.04", ("24", "04")),
    ("3.19.1", ("3", "19")),
    ("7.9.2009", ("7", "9")),
    ("14.1-RELEASE-p5", ("14", "1")),
    (" 9.3 ", ("9", "3")),
    ("rolling", (None, None)),
    ("trixie/sid", (None, None)),
    ("", (None, None)),
])
def test_split_version(version: str, expected: tuple) -> None:
    assert split_version(version) == expected


# --- parse_legacy_release (/etc/redhat-release and friends) --------------------------------------

@pytest.mark.parametrize("line,distro,major,minor", [
    ("CentOS release 6.10 (Final)", "centos", "6", "10"),
    ("CentOS Linux release 7.9.2009 (Core)", "centos", "7", "9"),
    ("CentOS Stream release 9", "centos", "9", None),
    ("Red Hat Enterprise Linux Server release 6.10 (Santiago)", "rhel", "6", "10"),
    ("Red Hat Enterprise Linux Server release 7.9 (Maipo)", "rhel", "7", "9"),
    ("Red Hat Enterprise Linux release 8.9 (Ootpa)", "rhel", "8", "9"),
    ("Oracle Linux Server release 6.10", "oracle", "6", "10"),
    ("Oracle Linux Server release 7.9", "oracle", "7", "9"),
    ("Rocky Linux release 9.3 (Blue Onyx)", "rocky", "9", "3"),
    ("AlmaLinux release 9.3 (Shamrock Pampas Cat)", "almalinux", "9", "3"),
    ("Scientific Linux release 6.10 (Carbon)", "scientific", "6", "10"),
    ("Fedora release 39 (Thirty Nine)", "fedora", "39", None),
])
def test_legacy_release(line: str, distro: str, major: str, minor: str) -> None:
    info = parse_legacy_release(line + "\n", "2.6.32-754.el6.x86_64")
    assert info == OsInfo(name=line, distro=distro, major=major, minor=minor,
                          kernel="2.6.32-754.el6.x86_64")


def test_legacy_release_reads_only_the_first_line() -> None:
    info = parse_legacy_release("CentOS release 6.10 (Final)\nKernel \\r on an \\m\n", "k")
    assert info is not None and info.name == "CentOS release 6.10 (Final)"


@pytest.mark.parametrize("text", ["", "\n", "no version here", "release (Final)"])
def test_legacy_release_unrecognised(text: str) -> None:
    assert parse_legacy_release(text, "k") is None


# --- parse_lsb_release -------------------------------------------------------------------------------

def test_lsb_release_ubuntu() -> None:
    text = dedent("""
        DISTRIB_ID=Ubuntu
        DISTRIB_RELEASE=14.04
        DISTRIB_CODENAME=trusty
        DISTRIB_DESCRIPTION="Ubuntu 14.04.6 LTS"
        """)
    assert parse_lsb_release(text, "k") == OsInfo("Ubuntu 14.04.6 LTS", "ubuntu", "14", "04", "k")


def test_lsb_release_without_description() -> None:
    info = parse_lsb_release("DISTRIB_ID=LinuxMint\nDISTRIB_RELEASE=17.3\n", "k")
    assert info == OsInfo("LinuxMint 17.3", "linuxmint", "17", "3", "k")


def test_lsb_release_without_id() -> None:
    assert parse_lsb_release("DISTRIB_RELEASE=14.04\n", "k") is None


# --- parse_resolv_domain ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("search example.org\nnameserver 192.168.10.1\n", "example.org"),
    ("domain example.com\nnameserver 10.0.0.1\n", "example.com"),
    ("search a.example b.example\n", "a.example"),
    ("domain example.com.\n", "example.com"),
    ("search .\n", None),
    ("nameserver 10.0.0.1\n", None),
    ("# search commented.example\n; domain also.example\nnameserver 1.1.1.1\n", None),
    ("search\n", None),
    ("", None),
    ("domain corp.example.net\nsearch corp.example.net\n", "corp.example.net"),
])
def test_resolv_domain(text: str, expected: str) -> None:
    assert parse_resolv_domain(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("domain a.example\nsearch b.example c.example\n", "b.example"),
    ("search b.example\ndomain a.example\n", "a.example"),
    ("search x.example\nsearch y.example\n", "y.example"),
])
def test_resolv_domain_last_instance_wins(text: str, expected: str) -> None:
    # resolv.conf(5): "The domain and search keywords are mutually exclusive. If more
    # than one instance of these keywords is present, the last instance wins."
    # glibc's res_init takes the local domain from whichever line came last.
    assert parse_resolv_domain(text) == expected


# --- vif_from_nodename -------------------------------------------------------------------------------

@pytest.mark.parametrize("nodename,expected", [
    ("device/vif/0", 0),
    ("device/vif/2", 2),
    ("device/vif/12", 12),
    ("device/vbd/51712", None),
    ("device/vif/", None),
    ("device/vif/1/extra", None),
    ("/local/domain/5/device/vif/0", None),
    ("", None),
    (None, None),
])
def test_vif_from_nodename(nodename: object, expected: object) -> None:
    assert vif_from_nodename(nodename) == expected  # type: ignore[arg-type]


# --- LinuxBackend on the fixture trees ---------------------------------------------------------------

def backend(tree: str) -> LinuxBackend:
    host = Host(str(FIXTURES / tree))
    return LinuxBackend(host, CapturedAddresses(host))


def by_name(tree: str) -> Dict[str, Interface]:
    return {iface.name: iface for iface in backend(tree).interfaces()}


def test_debian12_interfaces() -> None:
    found = by_name("debian12")
    assert sorted(found) == ["eth0", "lo"]
    assert (found["eth0"].vif, found["eth0"].mac, found["eth0"].lower) == (0, "00:16:3e:5c:2a:91", ())
    assert [a.address for a in found["eth0"].addresses] == [
        "192.168.10.21", "2001:db8:10:0:216:3eff:fe5c:2a91", "fe80::216:3eff:fe5c:2a91"]
    assert [a.link_local for a in found["eth0"].addresses] == [False, False, True]
    assert found["lo"].vif is None and found["lo"].addresses == ()  # loopback dropped


def test_ubuntu2404_vifs_by_nodename_not_name() -> None:
    found = by_name("ubuntu2404")
    assert {name: iface.vif for name, iface in found.items()} == {
        "docker0": None, "enX0": 0, "enX1": 1, "lo": None, "veth7c1e2a9": None}
    assert found["docker0"].lower == ("veth7c1e2a9",)
    assert found["veth7c1e2a9"].lower == ()  # upper_docker0 is not a lower link


def test_rocky9_bridge_and_vlan_lower_links() -> None:
    found = by_name("rocky9")
    assert {name: iface.vif for name, iface in found.items()} == {
        "br0": None, "eth0": 0, "eth1": 2, "eth1.100": None, "lo": None}
    assert found["br0"].lower == ("eth0",)          # lower_eth0 and brif/eth0, once
    assert found["eth1.100"].lower == ("eth1",)
    assert found["eth0"].lower == () and found["eth1"].lower == ()
    assert found["eth0"].addresses == () and found["br0"].addresses != ()


def test_centos6_old_sysfs_without_devtype() -> None:
    tree = FIXTURES / "centos6" / "sys" / "class" / "net" / "eth0"
    assert not (tree / "device" / "devtype").exists()  # the point of this tree
    assert not any(p.name.startswith("lower_") for p in tree.iterdir())
    found = by_name("centos6")
    assert found["eth0"].vif == 0 and found["eth0"].lower == ()


def test_many_addresses_all_reported_by_backend() -> None:
    eth0 = by_name("many-addresses")["eth0"]
    assert sum(a.family == 4 for a in eth0.addresses) == 40
    assert sum(a.family == 6 for a in eth0.addresses) == 40
    assert eth0.addresses[0].address == "169.254.83.17" and eth0.addresses[0].link_local


@pytest.mark.parametrize("tree,expected", [
    ("debian12", OsInfo("Debian GNU/Linux 12 (bookworm)", "debian", "12", "5", "6.1.0-18-amd64")),
    ("ubuntu2404", OsInfo("Ubuntu 24.04 LTS", "ubuntu", "24", "04", "6.8.0-31-generic")),
    ("rocky9", OsInfo("Rocky Linux 9.3 (Blue Onyx)", "rocky", "9", "3",
                      "5.14.0-362.8.1.el9_3.x86_64")),
    ("alpine319", OsInfo("Alpine Linux v3.19", "alpine", "3", "19", "6.6.14-0-virt")),
    ("centos6", OsInfo("CentOS release 6.10 (Final)", "centos", "6", "10",
                       "2.6.32-754.el6.x86_64")),
])
def test_os_info_per_tree(tree: str, expected: OsInfo) -> None:
    assert backend(tree).os_info() == expected


@pytest.mark.parametrize("tree,expected", [
    ("debian12", Memory(4020016, 3512784)),
    ("ubuntu2404", Memory(8130548, 7032416)),
    ("rocky9", Memory(3777604, 3231204)),
    ("alpine319", Memory(1004652, 901836)),
    ("centos6", Memory(1922480, 1134832)),  # MemFree: the legacy layout has no MemAvailable
])
def test_memory_per_tree(tree: str, expected: Memory) -> None:
    assert backend(tree).memory() == expected


@pytest.mark.parametrize("tree,expected", [
    ("debian12", Capabilities(balloon=True, hotplug_vif=True, hotplug_vbd=True)),
    ("alpine319", Capabilities(balloon=False, hotplug_vif=True, hotplug_vbd=True)),
])
def test_capabilities_per_tree(tree: str, expected: Capabilities) -> None:
    assert backend(tree).capabilities() == expected


@pytest.mark.parametrize("tree,expected", [
    ("debian12", HostNames("web01", "example.org")),
    ("ubuntu2404", HostNames("noble-app", "lan.example.net")),  # via the resolv.conf symlink
    ("alpine319", HostNames("alpine319", None)),
    # xapi joins data/host_name_dns and data/domain (xapi_guest_agent.ml): the FQDN is split
    ("centos6", HostNames("c6legacy", "lab.example.net")),
])
def test_host_names_per_tree(tree: str, expected: HostNames) -> None:
    assert backend(tree).host_names() == expected


def test_empty_root_degrades(tmp_path: Path) -> None:
    host = Host(str(tmp_path))
    empty = LinuxBackend(host, CapturedAddresses(host))
    assert empty.interfaces() == ()
    assert empty.capabilities() == Capabilities()
    assert empty.host_names() == HostNames()
    with pytest.raises(LinuxError):
        empty.kernel_release()
    with pytest.raises(LinuxError):
        empty.memory()


@pytest.mark.parametrize("text, distro, major, minor", [
    # SLES 11 keeps the service pack in PATCHLEVEL (XenServer's agent reports it as minor)
    ("SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\nPATCHLEVEL = 4\n", "sles", "11", "4"),
    # Oracle Linux 5 names itself this way in redhat-release
    ("Enterprise Linux Enterprise Linux Server release 5.11 (Carthage)\n", "oracle", "5", "11"),
    ("Oracle Linux Server release 6.10\n", "oracle", "6", "10"),
])
def test_legacy_release_sles_patchlevel_and_oracle(text, distro, major, minor) -> None:
    info = parse_legacy_release(text, "k")
    assert (info.distro, info.major, info.minor) == (distro, major, minor)


def test_oracle_release_is_read_before_redhat_release(tmp_path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("2.6.32-754.el6uek\n")
    (tmp_path / "etc/redhat-release").write_text("Red Hat Enterprise Linux Server release 6.10 (Santiago)\n")
    (tmp_path / "etc/oracle-release").write_text("Oracle Linux Server release 6.10\n")
    info = LinuxBackend(Host(str(tmp_path)), addresses=None).os_info()
    assert (info.distro, info.major, info.minor) == ("oracle", "6", "10")


def test_pm_freeze_timeout_is_raised_never_lowered(tmp_path) -> None:
    power = tmp_path / "sys/power"
    power.mkdir(parents=True)
    (power / "pm_freeze_timeout").write_text("20000\n")
    backend = LinuxBackend(Host(str(tmp_path)), addresses=None)
    backend.tune_suspend(300)
    assert (power / "pm_freeze_timeout").read_text() == "300000\n"
    (power / "pm_freeze_timeout").write_text("900000\n")
    backend.tune_suspend(300)
    assert (power / "pm_freeze_timeout").read_text() == "900000\n"
    (power / "pm_freeze_timeout").unlink()
    backend.tune_suspend(300)  # absent (old kernel): left alone, no error


# --- the live address source, in a network namespace ---------------------------------------
#
# Interface names: the kernel accepts any bytes but '/', ':' and white space, shorter than
# IFNAMSIZ (net/core/dev.c, dev_valid_name), so a name need not be UTF-8.  A labelled IPv4
# address (``ip addr add ... label eth0:1``) is still an address of eth0: the label is only
# IFA_LABEL on the address (net/ipv4/devinet.c, inet_fill_ifaddr), its ifa_index is eth0's.

LIVE_INTERFACES = """
import json
import struct
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.host import Host
found = LinuxBackend(Host("/")).interfaces()
print(json.dumps({i.name.encode("utf-8", "surrogateescape").hex():
                  {"addresses": [a.address for a in i.addresses], "mac": i.mac} for i in found}))
"""


def ns_ip(ns: str, *args: str) -> None:
    done = subprocess.run(["ip", "-n", ns, *args], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.fail(f"ip -n {ns} {' '.join(args)}: {done.stderr.decode(errors='replace')}",
                    pytrace=False)


def live_interfaces(ns: str) -> Dict[bytes, Dict[str, object]]:
    """LinuxBackend(Host("/")).interfaces() run inside the namespace: name (bytes) -> facts."""
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-W", "error::ResourceWarning",
                           "-c", LIVE_INTERFACES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return {bytes.fromhex(name): facts for name, facts in json.loads(done.stdout).items()}


def test_live_non_utf8_interface_name_does_not_break_the_round(netns: str) -> None:
    weird = b"e\xffx"  # valid for dev_valid_name, not UTF-8
    name = os.fsdecode(weird)  # argv bytes survive as surrogates (PEP 383)
    ns_ip(netns, "link", "add", name, "type", "veth", "peer", "name", "p1")
    ns_ip(netns, "link", "set", "p1", "address", "02:00:00:00:00:01")
    ns_ip(netns, "addr", "add", "10.6.0.1/24", "dev", "p1")
    ns_ip(netns, "addr", "add", "10.5.0.1/24", "dev", name)
    found = live_interfaces(netns)
    assert found[b"p1"]["addresses"] == ["10.6.0.1"]
    assert found[b"p1"]["mac"] == "02:00:00:00:00:01"
    assert found[weird]["addresses"] == ["10.5.0.1"]  # still reported, under its own bytes


def test_live_labelled_alias_is_reported_under_its_interface(netns: str) -> None:
    ns_ip(netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns_ip(netns, "addr", "add", "10.1.2.3/24", "dev", "v0", "label", "v0:1")
    ns_ip(netns, "addr", "add", "10.1.2.4/24", "dev", "v0")
    ns_ip(netns, "addr", "add", "10.9.0.1/24", "dev", "v0", "label", "v0:vip")
    found = live_interfaces(netns)
    assert sorted(found) == [b"lo", b"v0", b"v1"]  # no "v0:1" pseudo-interface
    assert sorted(found[b"v0"]["addresses"]) == ["10.1.2.3", "10.1.2.4", "10.9.0.1"]  # type: ignore[call-overload]


def test_live_tentative_ipv6_address_waits_for_dad(netns: str) -> None:
    """An IPv6 address on a link that is down stays IFA_F_TENTATIVE (DAD has not run:
    net/ipv6/addrconf.c addrconf_dad_begin waits for the link); the kernel does not use it
    as a source (__ipv6_dev_get_saddr), so it is not reported until DAD completes and the
    kernel announces it again (addrconf_dad_completed -> RTM_NEWADDR).  ``nodad`` makes
    an address usable at once."""
    ns_ip(netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns_ip(netns, "addr", "add", "2001:db8::5/64", "dev", "v0")
    ns_ip(netns, "addr", "add", "2001:db8::6/64", "dev", "v0", "nodad")
    shown = subprocess.run(["ip", "-n", netns, "-6", "addr", "show", "dev", "v0"],
                           capture_output=True, text=True, timeout=30).stdout
    assert "2001:db8::5/64 scope global tentative" in shown  # the premise, as iproute2 sees it
    assert live_interfaces(netns)[b"v0"]["addresses"] == ["2001:db8::6"]


# --- NetlinkAddresses with a scripted kernel at the socket seam ---------------------------------

def _nlmsg(mtype: int, body: bytes, seq: int) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), mtype, 0x2, seq, 0) + body
    return data + b"\0" * (-len(data) % 4)


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _link(index: int, name: bytes) -> bytes:  # RTM_NEWLINK 16, IFLA_IFNAME 3
    return _nlmsg(16, struct.pack("=BxHiII", 0, 1, index, 0, 0) + _attr(3, name + b"\0"), 1)


def _addr(index: int, family: int, packed: bytes, flags: int = 0, label: bytes = b"") -> bytes:
    attrs = _attr(1, packed) + (_attr(2, packed) if family == 2 else b"")  # IFA_ADDRESS, IFA_LOCAL
    if label:
        attrs += _attr(3, label + b"\0")  # IFA_LABEL
    return _nlmsg(20, struct.pack("=BBBBI", family, 24, flags, 0, index) + attrs, 2)


class ScriptedKernel:
    """Replies to the link dump, then to the address dump; records that it was closed."""

    def __init__(self, links: bytes, addresses: bytes) -> None:
        done = struct.pack("=i", 0)
        self.replies = [[links + _nlmsg(3, done, 1)], [addresses + _nlmsg(3, done, 2)]]
        self.pending: list = []
        self.closed = False

    def __enter__(self) -> "ScriptedKernel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def sendto(self, data: bytes, address: object) -> int:
        self.pending = self.replies.pop(0)
        return len(data)

    def settimeout(self, value: object) -> None:
        assert value is not None  # every receive has a deadline

    def recvmsg(self, size: int) -> tuple:
        return self.pending.pop(0), [], 0, (0, 0)


def test_netlink_addresses_grouped_by_index(caplog: pytest.LogCaptureFixture) -> None:
    import socket as sk

    from xenguest_agent.backends.addresses import NetlinkAddresses

    links = _link(1, b"lo") + _link(2, b"eth0") + _link(3, b"n\xff\xfe") + _link(4, b"eth1")
    addresses = (_addr(1, 2, sk.inet_aton("127.0.0.1"))
                 + _addr(2, 2, sk.inet_aton("192.0.2.4"))
                 + _addr(2, 2, sk.inet_aton("192.0.2.5"), label=b"eth0:vip")
                 + _addr(2, 10, sk.inet_pton(sk.AF_INET6, "2001:db8::1"), flags=0x40)  # tentative
                 + _addr(3, 2, sk.inet_aton("198.51.100.7"))
                 + _addr(9, 2, sk.inet_aton("203.0.113.1")))  # no such link in the link dump
    kernels = []

    def factory() -> ScriptedKernel:
        kernels.append(ScriptedKernel(links, addresses))
        return kernels[-1]

    source = NetlinkAddresses(open_socket=factory)  # type: ignore[arg-type]
    with caplog.at_level("INFO"):
        table = source.addresses()
        again = source.addresses()
    assert table == again
    assert {name: [a.address for a in found] for name, found in table.items()} == {
        "lo": [], "eth0": ["192.0.2.4", "192.0.2.5"], os.fsdecode(b"n\xff\xfe"): ["198.51.100.7"],
        "eth1": []}
    assert all(kernel.closed for kernel in kernels) and len(kernels) == 2
    odd = [r for r in caplog.records if "not printable ASCII" in r.getMessage()]
    assert len(odd) == 1 and "b'n\\xff\\xfe'" in odd[0].getMessage()  # once, escaped
