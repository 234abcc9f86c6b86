"""The key layout: formats xapi accepts, sanitising, bounds."""

import pytest

from xenguest_agent import schema
from xenguest_agent.facts import Address, Capabilities, Facts, HostNames, Memory, OsInfo, ToolsVersion
from xenguest_agent.network import NetworkView

TOOLS = ToolsVersion(0, 1, 0, 0)


@pytest.mark.parametrize("version, parts", [
    ("0.1.0", (0, 1, 0, 0)), ("1.2.3.4", (1, 2, 3, 4)), ("1.2.0.dev5", (1, 2, 0, 5)),
    ("2.0rc1", (2, 0, 1, 0)), ("3", (3, 0, 0, 0)), ("unknown", (0, 0, 0, 0)),
])
def test_tools_version_is_four_integers(version, parts):
    assert schema.tools_version(version) == ToolsVersion(*parts)


def test_sanitise_strips_control_and_non_ascii_and_bounds_length():
    assert schema.sanitise("Debian\x00 GNU\n/Linux\x1b[31m") == "Debian  GNU /Linux [31m"
    assert schema.sanitise("Ubuntu 24.04 \u2013 LTS") == "Ubuntu 24.04   LTS"
    assert len(schema.sanitise("x" * 5000)) == schema.MAX_VALUE_BYTES


def test_full_render():
    facts = Facts(
        tools=TOOLS,
        os=OsInfo("Debian GNU/Linux 12 (bookworm)", "debian", "12", None, "6.1.0-18-amd64"),
        memory=Memory(2048000, 1024000),
        interfaces=(),
        capabilities=Capabilities(balloon=True, hotplug_vif=True, hotplug_vbd=False),
        names=HostNames("web1", "example.org"),
    )
    view = NetworkView(vifs={0: (Address(4, "10.0.0.2"), Address(6, "fe80::1", True),
                                 Address(6, "2001:db8::2"))}, sriov={1: (Address(4, "10.1.0.1"),)})
    rendered = schema.render(facts, view, {})
    assert rendered.values == {
        "attr/PVAddons/MajorVersion": "0", "attr/PVAddons/MinorVersion": "1",
        "attr/PVAddons/MicroVersion": "0", "attr/PVAddons/BuildVersion": "0",
        "attr/PVAddons/Installed": "1",
        "data/os_name": "Debian GNU/Linux 12 (bookworm)", "data/os_distro": "debian",
        "data/os_majorver": "12", "data/os_minorver": "0", "data/os_uname": "6.1.0-18-amd64",
        "data/meminfo_total": "2048000", "data/meminfo_free": "1024000",
        "data/host_name_dns": "web1", "data/domain": "example.org",
        "control/feature-balloon": "1", "feature/hotplug/vif": "1",
        "attr/vif/0/ipv4/0": "10.0.0.2",
        "attr/vif/0/ipv6/0": "2001:db8::2", "attr/vif/0/ipv6/1": "fe80::1",
        "xenserver/attr/net-sriov-vf/1/ipv4/0": "10.1.0.1",
    }
    assert all(schema.owns(path) for path in rendered.values)


def test_failed_collectors_render_nothing_for_their_keys():
    rendered = schema.render(Facts(tools=TOOLS), None, {})
    assert set(rendered.values) == {f"attr/PVAddons/{k}" for k in
                                    ("MajorVersion", "MinorVersion", "MicroVersion",
                                     "BuildVersion", "Installed")}


def test_features_can_be_disabled_and_balloon_is_never_zero():
    facts = Facts(tools=TOOLS, capabilities=Capabilities(balloon=False, hotplug_vif=True,
                                                         hotplug_vbd=True))
    values = schema.render(facts, None, {}, advertise_hotplug=False).values
    assert "control/feature-balloon" not in values  # squeezed reads existence: never "0"
    assert "feature/hotplug/vif" not in values and "feature/hotplug/vbd" not in values


def test_addresses_per_family_are_bounded():
    view = NetworkView(vifs={0: tuple(Address(4, f"10.0.0.{i}") for i in range(1, 41))}, sriov={})
    values = schema.render(Facts(tools=TOOLS), view, {}, max_addresses=16).values
    assert sorted(int(k.rsplit("/", 1)[1]) for k in values if k.startswith("attr/vif/0/ipv4/")) \
        == list(range(16))
