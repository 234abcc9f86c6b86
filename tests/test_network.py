"""Addresses per VIF: resolution, stacking, filtering and stable indexes."""

from xenguest_agent.facts import Address, Interface
from xenguest_agent.network import assign_slots, group_addresses, resolve_vifs, selected

A = lambda text, fam=4: Address(fam, text, text.startswith(("fe80", "169.254")))  # noqa: E731


def test_include_then_exclude():
    assert selected("eth0", (), ("lo",))
    assert not selected("lo", (), ("lo",))
    assert not selected("docker0", ("eth*", "enX*"), ())
    assert not selected("eth9", ("eth*",), ("eth9",))


def test_resolution_prefers_config_then_kernel_then_mac():
    ifaces = (Interface("eth0", "aa:00:00:00:00:01", vif=None),
              Interface("eth1", "AA:00:00:00:00:02", vif=None),
              Interface("eth2", "aa:00:00:00:00:03", vif=5),
              Interface("br0", "aa:00:00:00:00:02", vif=None, lower=("eth1",)))
    resolved = {i.name: i.vif for i in resolve_vifs(ifaces, {"eth2": 7}, {"aa:00:00:00:00:02": 3})}
    # eth2: configuration wins over the kernel; eth1 by MAC (case-insensitive);
    # br0 shares eth1's MAC but is stacked, so it is not itself a VIF
    assert resolved == {"eth0": None, "eth1": 3, "eth2": 7, "br0": None}


def test_bridge_bond_and_vlan_report_under_their_vif():
    ifaces = (
        Interface("eth0", "m0", vif=0, addresses=(A("fe80::1", 6),)),
        Interface("br0", "m0", lower=("eth0",), addresses=(A("10.0.0.2"),)),
        Interface("eth1", "m1", vif=2),
        Interface("eth1.100", "m1", lower=("eth1",), addresses=(A("192.168.100.5"),)),
        Interface("eth3", "m3", vif=4), Interface("eth4", "m4", vif=3),
        Interface("bond0", "m3", lower=("eth3", "eth4"), addresses=(A("172.16.0.9"),)),
        Interface("docker0", "m9", addresses=(A("172.17.0.1"),)),
        Interface("lo", None, addresses=()),
    )
    view = group_addresses(ifaces, {})
    assert view.vifs == {0: (A("fe80::1", 6), A("10.0.0.2")), 2: (A("192.168.100.5"),),
                         3: (A("172.16.0.9"),), 4: ()}
    assert view.sriov == {}


def test_stacking_loops_do_not_hang():
    ifaces = (Interface("a", None, lower=("b",), addresses=(A("10.0.0.1"),)),
              Interface("b", None, lower=("a",)))
    assert group_addresses(ifaces, {}).vifs == {}


def test_sriov_vf_matched_by_mac_and_filters_apply():
    ifaces = (Interface("ens5", "02:00:00:00:00:05", addresses=(A("10.1.0.5"),)),
              Interface("eth0", "m0", vif=0, addresses=(A("10.0.0.2"),)))
    view = group_addresses(ifaces, {"02:00:00:00:00:05": 1})
    assert view.sriov == {1: (A("10.1.0.5"),)}
    filtered = group_addresses(ifaces, {"02:00:00:00:00:05": 1}, include=("eth*",))
    assert filtered.sriov == {1: ()} and filtered.vifs == {0: (A("10.0.0.2"),)}


def test_slots_are_stable_and_global_first():
    first = assign_slots({}, [A("fe80::1", 6), A("2001:db8::1", 6)], 16)
    assert first == {"2001:db8::1": 0, "fe80::1": 1}
    # another address comes: existing ones keep their index
    second = assign_slots(first, [A("fe80::1", 6), A("2001:db8::1", 6), A("2001:db8::2", 6)], 16)
    assert second == {"2001:db8::1": 0, "fe80::1": 1, "2001:db8::2": 2}
    # the first goes: the others do not move, the new one reuses the hole
    third = assign_slots(second, [A("fe80::1", 6), A("2001:db8::2", 6), A("2001:db8::3", 6)], 16)
    assert third == {"fe80::1": 1, "2001:db8::2": 2, "2001:db8::3": 0}


def test_slots_are_bounded():
    many = [A(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(40)]
    slots = assign_slots({}, many, 16)
    assert sorted(slots.values()) == list(range(16))
    assert list(slots) == [a.address for a in many[:16]]
    # when one goes, the next waiting address fills its index
    remaining = many[1:]
    again = assign_slots(slots, remaining, 16)
    assert again[many[16].address] == slots[many[0].address]
    assert len(again) == 16
