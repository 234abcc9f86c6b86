"""The FreeBSD backend: pure parsers with inline text, FreeBSDBackend on the captured trees
(tests/fixtures/freebsd/, replayed by FixtureRunner), and the whole agent against the real
xenstored with a FreeBSD tree.

Nothing here needs FreeBSD: every sysctl and ifconfig the backend runs is answered from a
capture, and a command without one raises UnexpectedCommand.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

from support.freebsd_device import FreeBSDXenstoreDevice
from xenguest_agent import cli
from xenguest_agent.agent import Agent
from xenguest_agent.backends import select_backend
from xenguest_agent.backends.addresses import PsutilAddresses
from xenguest_agent.backends.freebsd import (
    DEFAULT_XENSTORE,
    FREEBSD_VERSION,
    IFCONFIG,
    SYSCTL,
    SYSCTL_NAMES,
    FreeBSDBackend,
    FreeBSDError,
    capabilities_from_sysctl,
    memory_from_sysctl,
    parse_freebsd_version,
    parse_sysctl,
    vif_ids,
)
from xenguest_agent.backends.freebsd_ifconfig import IfconfigEntry, build_interfaces, parse_ifconfig
from xenguest_agent.config import Config
from xenguest_agent.facts import Address, Capabilities, HostNames, Interface, Memory, OsInfo
from xenguest_agent.fixture import FixtureError, FixtureRunner, UnexpectedCommand, parse_argv_file
from xenguest_agent.host import CommandResult, Host

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "freebsd"
TREES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
HOME = "/local/domain/0"


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def v4(address: str) -> Address:
    return Address(4, address)


def v6(address: str, link_local: bool = False) -> Address:
    return Address(6, address, link_local)


# --- parse_sysctl --------------------------------------------------------------------------------

def test_sysctl_lines_empty_values_and_continuations() -> None:
    text = ("kern.osrelease: 14.1-RELEASE-p4\n"
            "dev.xn.0.%location: \n"          # an empty string prints "name: " (trailing blank)
            "dev.xn.0.%desc: Virtual Network Interface\n"
            "kern.version: FreeBSD 14.1-RELEASE-p4 GENERIC\n"
            "\n"
            "kern.hostname: a.b: c\n")
    assert parse_sysctl(text) == {
        "kern.osrelease": "14.1-RELEASE-p4", "dev.xn.0.%location": "",
        "dev.xn.0.%desc": "Virtual Network Interface",
        "kern.version": "FreeBSD 14.1-RELEASE-p4 GENERIC", "kern.hostname": "a.b: c"}


def test_sysctl_multi_line_string_is_joined() -> None:
    text = "kern.version: FreeBSD 13.2-RELEASE releng/13.2-n254617\n    root@builder:/usr/obj GENERIC\n"
    assert parse_sysctl(text)["kern.version"].splitlines()[1] == "root@builder:/usr/obj GENERIC"


# --- memory ------------------------------------------------------------------------------------------

BASE_MEMORY = {"hw.physmem": "2112618496", "hw.pagesize": "4096",
               "vm.stats.vm.v_free_count": "300111", "vm.stats.vm.v_inactive_count": "50022"}


def test_memory_is_free_plus_inactive_pages_in_kib() -> None:
    # 2112618496 B = 2063104 KiB; (300111 + 50022) pages of 4 KiB = 1400532 KiB
    assert memory_from_sysctl(BASE_MEMORY) == Memory(total_kib=2063104, free_kib=1400532)


def test_memory_counts_cache_pages_of_old_releases_and_arc_above_its_floor() -> None:
    values = dict(BASE_MEMORY, **{"vm.stats.vm.v_cache_count": "1000",
                                  "kstat.zfs.misc.arcstats.size": "402653184",
                                  "kstat.zfs.misc.arcstats.c_min": "66019328"})
    # 1400532 + 4000 (cache) + (402653184 - 66019328) / 1024 = 328744 (ARC)
    assert memory_from_sysctl(values).free_kib == 1400532 + 4000 + 328744


def test_memory_arc_below_its_floor_adds_nothing() -> None:
    values = dict(BASE_MEMORY, **{"kstat.zfs.misc.arcstats.size": "1000",
                                  "kstat.zfs.misc.arcstats.c_min": "5000"})
    assert memory_from_sysctl(values).free_kib == 1400532


def test_memory_pagesize_is_read_not_assumed() -> None:
    values = dict(BASE_MEMORY, **{"hw.pagesize": "16384", "vm.stats.vm.v_free_count": "30000",
                                  "vm.stats.vm.v_inactive_count": "5000"})
    assert memory_from_sysctl(values).free_kib == 35000 * 16


def test_memory_free_never_exceeds_total() -> None:
    values = dict(BASE_MEMORY, **{"vm.stats.vm.v_free_count": "9999999"})
    memory = memory_from_sysctl(values)
    assert memory.free_kib == memory.total_kib == 2063104


def test_memory_total_excludes_ballooned_out_pages() -> None:
    """sys/dev/xen/balloon/balloon.c: decrease_reservation() takes pages with vm_page_alloc()
    and keeps them (counted in bs.balloon_low, exported as dev.xen.balloon.low_mem, in pages;
    high_mem is bs.balloon_high); hw.physmem is fixed at boot. So a guest ballooned down by
    256 MiB still reports the boot size in hw.physmem, and those pages are neither free nor
    inactive: without the correction XenCenter would count them as used."""
    values = dict(BASE_MEMORY, **{"dev.xen.balloon.low_mem": "65536",
                                  "dev.xen.balloon.high_mem": "0"})
    # 2063104 KiB - 65536 pages * 4 KiB = 1800960 KiB; free is unchanged
    assert memory_from_sysctl(values) == Memory(total_kib=1800960, free_kib=1400532)
    values["dev.xen.balloon.high_mem"] = "256"
    assert memory_from_sysctl(values).total_kib == 1800960 - 1024
    # no balloon driver in the kernel: the sysctls are absent and nothing is subtracted
    assert memory_from_sysctl(BASE_MEMORY).total_kib == 2063104


def test_memory_never_reports_more_free_than_the_ballooned_total() -> None:
    values = dict(BASE_MEMORY, **{"dev.xen.balloon.low_mem": "400000"})
    memory = memory_from_sysctl(values)
    assert memory.total_kib == 2063104 - 1600000 == memory.free_kib


@pytest.mark.parametrize("missing", sorted(BASE_MEMORY))
def test_memory_without_a_required_counter_raises(missing: str) -> None:
    values = {k: v for k, v in BASE_MEMORY.items() if k != missing}
    with pytest.raises(FreeBSDError, match=missing):
        memory_from_sysctl(values)


def test_memory_garbage_raises() -> None:
    with pytest.raises(FreeBSDError, match="not a number"):
        memory_from_sysctl(dict(BASE_MEMORY, **{"hw.physmem": "lots"}))


# --- vif ids and capabilities ------------------------------------------------------------------------

def test_vif_ids_come_from_xenstore_path_not_the_unit() -> None:
    values = {"dev.xn.0.xenstore_path": "device/vif/0", "dev.xn.1.xenstore_path": "device/vif/2",
              "dev.xn.2.xenstore_path": "device/vif/3", "dev.xbd.0.xenstore_path": "device/vbd/51712",
              "dev.xn.3.xenstore_path": "backend/vif/4/0", "dev.xn.0.%driver": "xn"}
    assert vif_ids(values) == {0: 0, 1: 2, 2: 3}


def test_capabilities_follow_attached_devices() -> None:
    assert capabilities_from_sysctl({}) == Capabilities(False, False, False)
    values = {"dev.xenballoon.0.%driver": "xenballoon", "dev.xn.0.%driver": "xn",
              "dev.xbd.0.%driver": "xbd", "dev.xn.%parent": ""}
    assert capabilities_from_sysctl(values) == Capabilities(True, True, True)
    # the devclass node alone (no unit) is not an attached device
    assert capabilities_from_sysctl({"dev.xn.%parent": ""}).hotplug_vif is False


# --- freebsd-version ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,major,minor", [
    ("14.1-RELEASE-p5\n", "14", "1"), ("13.2-RELEASE", "13", "2"), ("15.0-CURRENT", "15", "0"),
    ("14.2-STABLE", "14", "2"), ("12.4-RELEASE-p9", "12", "4")])
def test_freebsd_version(text: str, major: str, minor: str) -> None:
    info = parse_freebsd_version(text, "14.1-RELEASE")
    assert info == OsInfo(f"FreeBSD {text.strip()}", "freebsd", major, minor, "14.1-RELEASE")


def test_freebsd_version_garbage() -> None:
    assert parse_freebsd_version("", "x") is None
    assert parse_freebsd_version("freebsd-version: not found", "x") is None


# --- parse_ifconfig ----------------------------------------------------------------------------------

IFCONFIG_MIX = dedent("""
    xn0: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500
    \toptions=503<RXCSUM,TXCSUM,TSO4,LRO>
    \tether 00:16:3E:00:00:01
    \tinet 10.0.0.2 netmask 0xffffff00 broadcast 10.0.0.255
    \tinet 10.0.0.2 netmask 0xffffff00 broadcast 10.0.0.255
    \tinet6 fe80::216:3eff:fe00:1%xn0 prefixlen 64 scopeid 0x1
    \tinet6 2001:db8::2 prefixlen 64 autoconf
    \tmedia: Ethernet manual
    \tstatus: active
    xn1: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500
    \tether 00:16:3e:00:00:01
    \thwaddr 00:16:3e:00:00:02
    \tlaggproto lacp laggdev lagg0
    \tlaggport: xn1 flags=1c<ACTIVE,COLLECTING,DISTRIBUTING>
    \tlaggport: xn2 flags=1c<ACTIVE,COLLECTING,DISTRIBUTING>
    lagg0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500
    \tether 00:16:3e:00:00:01
    \tlaggproto lacp lagghash l2,l3,l4
    \tlaggport: xn1 flags=1c<ACTIVE,COLLECTING,DISTRIBUTING>
    \tlaggport: xn2 flags=1c<ACTIVE,COLLECTING,DISTRIBUTING>
    \tgroups: lagg
    vlan5: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500
    \tvlan: 5 parent interface: lagg0
    vlan6: flags=8802<BROADCAST,SIMPLEX,MULTICAST> metric 0 mtu 1500
    \tvlan: 0 vlanproto: 802.1q vlanpcp: 0 parent interface: <none>
    bridge0: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500
    \tether 58:9c:fc:00:00:01
    \tinet 172.16.0.1 netmask 0xffff0000 broadcast 172.16.255.255
    \tmember: tap0 flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>
    \t        ifmaxaddr 0 port 7 priority 128 path cost 2000000
    \tmember: vlan5 flags=143<LEARNING,DISCOVER,AUTOEDGE,AUTOPTP>
    tun0: flags=8051<UP,POINTOPOINT,RUNNING,MULTICAST> metric 0 mtu 1500
    \tinet 10.8.0.1 --> 10.8.0.2 netmask 0xffffffff
    lo0: flags=8049<UP,LOOPBACK,RUNNING,MULTICAST> metric 0 mtu 16384
    \tinet6 ::1 prefixlen 128
    \tinet6 fe80::1%lo0 prefixlen 64 scopeid 0x3
    \tinet 127.0.0.1 netmask 0xff000000
    """)


def test_ifconfig_entries() -> None:
    entries = {e.name: e for e in parse_ifconfig(IFCONFIG_MIX)}
    assert list(entries) == ["xn0", "xn1", "lagg0", "vlan5", "vlan6", "bridge0", "tun0", "lo0"]
    # duplicates collapse, scope suffixes go, MACs are lower case
    assert entries["xn0"] == IfconfigEntry("xn0", "00:16:3e:00:00:01", (), (
        v4("10.0.0.2"), v6("fe80::216:3eff:fe00:1", True), v6("2001:db8::2")))
    # a lagg port: its permanent MAC (hwaddr), and the sibling list is not "below" it
    assert entries["xn1"] == IfconfigEntry("xn1", "00:16:3e:00:00:02", (), ())
    assert entries["lagg0"].lower == ("xn1", "xn2")
    assert entries["vlan5"].lower == ("lagg0",)
    assert entries["vlan6"].lower == ()
    assert entries["bridge0"].lower == ("tap0", "vlan5")
    assert entries["bridge0"].addresses == (v4("172.16.0.1"),)
    assert entries["tun0"].addresses == (v4("10.8.0.1"),)
    # loopback addresses are dropped; fe80::1 on lo0 is kept but lo0 is no VIF
    assert entries["lo0"].addresses == (v6("fe80::1", True),)


def test_ifconfig_garbage_and_empty() -> None:
    assert parse_ifconfig("") == ()
    assert parse_ifconfig("ifconfig: socket: Protocol not supported\n") == ()
    assert parse_ifconfig("xn0: flags=0<> metric 0 mtu 1500\n\tinet nonsense\n") == (
        IfconfigEntry("xn0", None, (), ()),)


def test_build_interfaces_vif_only_from_sysctl() -> None:
    entries = parse_ifconfig(IFCONFIG_MIX)
    built = {i.name: i for i in build_interfaces(entries, {0: 0, 1: 4}, None)}
    assert built["xn0"].vif == 0
    assert built["xn1"].vif == 4
    # xn2 is named in a laggport line but has no entry: unknown, not invented
    assert "xn2" not in built
    assert built["lagg0"].vif is None and built["lagg0"].lower == ("xn1", "xn2")
    # no xenstore_path for a unit: left to the agent's MAC match, never "xnN is VIF N"
    lone = build_interfaces(parse_ifconfig("xn3: flags=0<> metric 0 mtu 1500\n\tether 00:16:3e:0:0:3\n"),
                            {}, None)
    assert lone == (Interface("xn3", "00:16:3e:0:0:3", None, (), ()),)


def test_build_interfaces_with_an_address_table() -> None:
    entries = parse_ifconfig(IFCONFIG_MIX)
    table = {"xn0": (v4("192.0.2.9"),), "epair0b": (v4("192.0.2.10"),)}
    built = {i.name: i for i in build_interfaces(entries, {0: 0}, table)}
    assert built["xn0"].addresses == (v4("192.0.2.9"),)  # the table wins over ifconfig's
    assert built["bridge0"].addresses == ()
    assert built["epair0b"] == Interface("epair0b", None, None, (v4("192.0.2.10"),), ())


# --- FixtureRunner -----------------------------------------------------------------------------------

def test_argv_file() -> None:
    assert parse_argv_file("/sbin/sysctl\n-i\nkern.hostname\n") == ("/sbin/sysctl", "-i", "kern.hostname")
    with pytest.raises(FixtureError):
        parse_argv_file("")


def capture(directory: Path, stem: str, argv: Sequence[str], out: str, rc: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.argv").write_text("\n".join(argv) + "\n")
    (directory / f"{stem}.out").write_text(out)
    if rc:
        (directory / f"{stem}.rc").write_text(rc)


def test_fixture_runner_replays_and_refuses(tmp_path: Path) -> None:
    capture(tmp_path / "_commands", "a", ["/bin/echo", "hi there"], "hi there\n")
    capture(tmp_path / "_commands", "b", ["/usr/bin/false"], "", rc="1\n")
    runner = FixtureRunner(str(tmp_path))
    assert runner(["/bin/echo", "hi there"]) == CommandResult(("/bin/echo", "hi there"), 0, "hi there\n", "")
    assert runner(["/usr/bin/false"]).returncode == 1
    with pytest.raises(UnexpectedCommand, match="/bin/echo"):
        runner(["/bin/echo", "hi", "there"])  # same words, different argv
    assert runner.unused == set()


def test_fixture_runner_rejects_malformed_captures(tmp_path: Path) -> None:
    commands = tmp_path / "_commands"
    capture(commands, "a", ["x"], "")
    capture(commands, "b", ["x"], "")
    with pytest.raises(FixtureError, match="same argv"):
        FixtureRunner(str(tmp_path))
    (commands / "b.argv").unlink()
    (commands / "c.argv").write_text("y\n")
    with pytest.raises(FixtureError, match="no c.out"):
        FixtureRunner(str(tmp_path))


def test_unexpected_command_is_not_swallowed_by_the_agent(tmp_path: Path) -> None:
    """The agent keeps going when a collector raises an Exception; a missing capture must not
    be one of those, or a golden dump could silently lose keys."""
    agent = Agent(FreeBSDBackend(Host(str(tmp_path), FixtureRunner(str(tmp_path)))), Config())
    with pytest.raises(UnexpectedCommand, match="sysctl"):
        agent.collect()


# --- FreeBSDBackend on the captured trees -----------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def backend_for(tree: str, clock: Clock = None) -> FreeBSDBackend:  # type: ignore[assignment]
    root = str(FIXTURES / tree)
    return FreeBSDBackend(Host(root, FixtureRunner(root)), clock=clock or Clock())


def collect_all(backend: FreeBSDBackend) -> Dict[str, object]:
    return {"os": backend.os_info(), "memory": backend.memory(), "interfaces": backend.interfaces(),
            "capabilities": backend.capabilities(), "names": backend.host_names()}


@pytest.mark.parametrize("tree", TREES)
def test_one_sysctl_and_one_ifconfig_per_round_and_every_capture_used(tree: str) -> None:
    clock = Clock()
    backend = backend_for(tree, clock)
    runner = backend.host.run
    assert isinstance(runner, FixtureRunner)
    first = collect_all(backend)
    commands = [argv[0] for argv in runner.calls]
    expected = [SYSCTL, IFCONFIG] + ([FREEBSD_VERSION] if tree == "13-vlan" else [])
    assert sorted(commands) == sorted(expected)
    assert runner.calls[0] == (SYSCTL, "-i") + SYSCTL_NAMES
    assert runner.unused == set(), f"{tree}: captures nobody asked for: {runner.unused}"
    clock.now += 60  # the next round takes a fresh snapshot
    assert collect_all(backend) == first
    assert [argv[0] for argv in runner.calls].count(SYSCTL) == 2


@pytest.mark.parametrize("tree", TREES)
def test_fixtures_say_only_what_freebsd_can_print(tree: str) -> None:
    """Rules the reconstructed captures must follow, from freebsd/freebsd-src:

    - ``dev.<driver>.%parent`` (the devclass, not a unit) is the parent *class*, set only for a
      driver with base classes (sys/kern/subr_bus.c devclass_sysctl_handler prints
      ``dc->parent ? dc->parent->name : ""``; devclass_add_driver takes the parent from
      driver->baseclasses[0]); netfront's ``xn``, blkfront's ``xbd`` and ``xenballoon``
      (DEFINE_CLASS_0) have none, so it is empty. A unit's ``%parent`` is its parent device.
    - ``pltime``/``vltime`` are printed only with ``ifconfig -L`` (sbin/ifconfig/af_inet6.c
      in6_status: ``if (ip6lifetime && ...)``), and the backend runs ``ifconfig -a``.
    - ``sysctl`` prints only what it was asked for: each name is one of the requested names
      or a leaf below a requested node (sbin/sysctl/sysctl.c parse/show_var).
    """
    commands = FIXTURES / tree / "_commands"
    values = parse_sysctl((commands / "sysctl.out").read_text())
    for name, value in values.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "dev" and parts[2] == "%parent":
            assert value == "", f"{tree}: {name} is the devclass's parent class, empty here"
        assert any(name == n or name.startswith(n + ".") for n in SYSCTL_NAMES), \
            f"{tree}: {name} was not asked for"
    ifconfig_argv = parse_argv_file((commands / "ifconfig.argv").read_text())
    if "-L" not in ifconfig_argv:
        text = (commands / "ifconfig.out").read_text()
        assert " pltime " not in text and " vltime " not in text, tree


def test_routing_socket_fixture_carries_the_interfaces_56_byte_sockaddr_dl() -> None:
    """tests/fixtures/routesock: an interface's link-level address, sent as RTA_IFP, is sized by
    sys/net/if.c if_attach_internal: offsetof(sdl_data) + IFNAMSIZ + if_addrlen, at least
    sizeof(struct sockaddr_dl) (54, sys/net/if_dl.h), rounded up to sizeof(long): 56 on amd64."""
    data = (FIXTURES.parent / "routesock" / "newaddr_inet.bin").read_bytes()
    ifa_msghdr, netmask = 20, 16  # RTA_NETMASK (a sockaddr_in, 16) comes before RTA_IFP
    sdl_len, family = data[ifa_msghdr + netmask], data[ifa_msghdr + netmask + 1]
    assert (sdl_len, family) == (56, 18)  # AF_LINK


def test_14_one_nic() -> None:
    facts = collect_all(backend_for("14-one-nic"))
    # os-release is the userland (-p5); the kernel is a patch level behind (-p4)
    assert facts["os"] == OsInfo("FreeBSD 14.1-RELEASE-p5", "freebsd", "14", "1", "14.1-RELEASE-p4")
    # (612345 + 120000) * 4 KiB + (1073741824 - 133451136) / 1024 of ARC above c_min
    assert facts["memory"] == Memory(total_kib=4170348, free_kib=2929380 + 918252)
    interfaces = {i.name: i for i in facts["interfaces"]}  # type: ignore[attr-defined]
    assert interfaces["xn0"] == Interface("xn0", "00:16:3e:3b:9a:01", 0, (
        v4("10.0.10.21"), v6("fe80::216:3eff:fe3b:9a01", True), v6("2001:db8:10::21")), ())
    assert interfaces["lo0"].vif is None
    assert facts["capabilities"] == Capabilities(balloon=True, hotplug_vif=True, hotplug_vbd=True)
    assert facts["names"] == HostNames("fbsd14", "example.org")  # split as xapi joins it


def test_14_several_nics_ballooned_down_by_2_gib() -> None:
    # hw.physmem 8535236608 B = 8335192 KiB, minus dev.xen.balloon.low_mem 524288 pages of 4 KiB
    # (balloon.c); free: (999168 free + 402112 inactive) pages * 4 KiB, no ZFS
    memory = backend_for("14-several-nics").memory()
    assert memory == Memory(total_kib=8335192 - 2097152, free_kib=(999168 + 402112) * 4)


def test_14_several_nics_units_are_not_vif_ids() -> None:
    interfaces = {i.name: i for i in backend_for("14-several-nics").interfaces()}
    assert {n: i.vif for n, i in interfaces.items() if i.vif is not None} == {"xn0": 0, "xn1": 2, "xn2": 3}
    assert interfaces["bridge0"].lower == ("epair0a", "xn2")
    assert interfaces["bridge0"].addresses == (v4("10.30.0.1"),)


def test_13_lagg_ports_keep_their_permanent_macs() -> None:
    interfaces = {i.name: i for i in backend_for("13-lagg").interfaces()}
    assert interfaces["lagg0"].lower == ("xn0", "xn1")
    assert interfaces["xn1"].mac == "00:16:3e:21:7a:02"  # hwaddr, not the lagg's MAC
    assert (interfaces["xn0"].vif, interfaces["xn1"].vif) == (0, 1)


def test_13_vlan_without_os_release_uses_freebsd_version() -> None:
    backend = backend_for("13-vlan")
    assert backend.os_info() == OsInfo("FreeBSD 13.2-RELEASE-p9", "freebsd", "13", "2", "13.2-RELEASE-p8")
    interfaces = {i.name: i for i in backend.interfaces()}
    assert interfaces["vlan100"].lower == ("xn1",)
    assert interfaces["xn0.200"].lower == ("xn0",)
    assert backend.host_names() == HostNames("vlan13", "vlan.example.com")


def test_14_ipv6_only() -> None:
    backend = backend_for("14-ipv6-only")
    (xn0,) = [i for i in backend.interfaces() if i.name == "xn0"]
    assert xn0.addresses == (v6("fe80::216:3eff:fe66:1", True), v6("2001:db8:20:0:216:3eff:fe66:1"))
    assert backend.host_names() == HostNames("v6only", None)


class ScriptedRunner:
    """Answers sysctl from a dict; everything else fails like a missing binary."""

    def __init__(self, sysctl: Dict[str, str], fail: bool = True) -> None:
        self.sysctl = sysctl
        self.calls: List[tuple] = []

    def __call__(self, argv: Sequence[str], timeout: float = 5.0) -> CommandResult:
        self.calls.append(tuple(argv))
        if argv[0] == SYSCTL:
            out = "".join(f"{k}: {v}\n" for k, v in self.sysctl.items())
            return CommandResult(tuple(argv), 0, out, "")
        return CommandResult(tuple(argv), 127, "", f"{argv[0]}: not found\n")


def test_os_info_last_resort_is_the_kernel_release(tmp_path: Path) -> None:
    backend = FreeBSDBackend(Host(str(tmp_path), ScriptedRunner({"kern.osrelease": "12.4-RELEASE-p9"})))
    assert backend.os_info() == OsInfo("FreeBSD 12.4-RELEASE-p9", "freebsd", "12", "4", "12.4-RELEASE-p9")


def test_failed_commands_raise(tmp_path: Path) -> None:
    backend = FreeBSDBackend(Host(str(tmp_path), ScriptedRunner({})))
    with pytest.raises(FreeBSDError, match="kern.osrelease"):
        backend.os_info()
    with pytest.raises(FreeBSDError, match="ifconfig -a exited 127"):
        backend.interfaces()


def test_constants_and_power_commands(tmp_path: Path) -> None:
    backend = FreeBSDBackend(Host(str(tmp_path), ScriptedRunner({})))
    assert backend.name == "freebsd"
    assert backend.default_xenstore == DEFAULT_XENSTORE == "/dev/xen/xenstore"
    assert backend.kernel_features == ()
    assert backend.unadvertised_features == ("poweroff", "reboot", "suspend")
    # FreeBSD's own kernel maps "halt" to xctrl_poweroff (shutdown_nice(RB_POWEROFF|RB_HALT)):
    # sys/dev/xen/control/control.c, xctrl_shutdown_reasons. shutdown(8): -p powers off, -h
    # only halts (the domain would stay "running" and the toolstack would wait for it).
    assert backend.power_commands() == {"poweroff": ("/sbin/shutdown", "-p", "now"),
                                        "reboot": ("/sbin/shutdown", "-r", "now"),
                                        "halt": ("/sbin/shutdown", "-p", "now")}
    backend.tune_suspend(300)  # nothing to tune, nothing run
    assert backend.host.run.calls == []  # type: ignore[attr-defined]


def test_address_source_defaults(tmp_path: Path) -> None:
    assert isinstance(FreeBSDBackend(Host("/")).addresses, PsutilAddresses)
    assert FreeBSDBackend(Host(str(tmp_path))).addresses is None  # ifconfig's own, under a root
    assert isinstance(select_backend("FreeBSD", Host(str(tmp_path))), FreeBSDBackend)


# --- the whole agent against the real xenstored ------------------------------------------------------

def leaves(tree: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in tree.items() if not any(o.startswith(k + "/") for o in tree)}


@pytest.mark.parametrize("via", ["xenstored", "freebsd-device"])
@pytest.mark.parametrize("tree", ["14-one-nic", "13-lagg", "14-ipv6-only"])
def test_run_once_publishes_the_golden_dump_and_the_features(tree: str, via: str, xenstored,
                                                             tmp_path: Path) -> None:
    """Straight to xenstored's socket, and through the model of FreeBSD's /dev/xen/xenstore
    (support.freebsd_device: xenstore_dev.c xs_dev_write's per-open-file rules), which must
    not have had to refuse anything."""
    config = tmp_path / "config.yaml"
    config.write_text("")
    with FreeBSDXenstoreDevice(xenstored.socket_path) as device:
        spec = device.spec if via == "freebsd-device" else xenstored.spec
        code = cli.main(["run", "--once", "--xenstore", spec, "--root", str(FIXTURES / tree),
                         "--os", "freebsd", "--config", str(config)])
        assert (device.refusals, device.violations) == ([], [])
        assert (device.opens > 0) == (via == "freebsd-device")
    assert code == 0
    expected = json.loads((FIXTURES / tree / "expected.json").read_text())
    # FreeBSD's kernel performs the requests but advertises none: the agent does
    expected.update({"control/feature-poweroff": "1", "control/feature-reboot": "1",
                     "control/feature-suspend": "1"})
    assert leaves(xenstored.dump(HOME)) == expected
