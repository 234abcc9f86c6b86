"""Expectations for tests/support/guestroot.py's synthetic guest, written by hand from the
files GuestRoot creates and from xapi's rules, so that integration tests do not take their
expected values from the agent's own ``show``."""

from __future__ import annotations

from collections.abc import Mapping

from xenguest_agent import xapi

#: Every key a default GuestRoot publishes, with its value (PVAddons versions aside: they follow
#: the package version; checked through xapi's rules instead).
GUESTROOT_KEYS: dict[str, str] = {
    # etc/os-release PRETTY_NAME and ID (os-release(5)); VERSION_ID "12" refined by
    # etc/debian_version "12.5"; proc/sys/kernel/osrelease
    "data/os_name": "Debian GNU/Linux 12 (bookworm)",
    "data/os_distro": "debian",
    "data/os_majorver": "12",
    "data/os_minorver": "5",
    "data/os_uname": "6.1.0-18-amd64",
    # proc/meminfo MemTotal and MemAvailable, KiB
    "data/meminfo_total": "2014228",
    "data/meminfo_free": "1523400",
    # proc/sys/kernel/hostname "guest1"; no etc/resolv.conf, so no data/domain
    "data/host_name_dns": "guest1",
    # eth0's device/nodename is device/vif/0, one address
    "attr/vif/0/ipv4/0": "10.0.0.2",
    # sys/devices/system/xen_memory/xen_memory0 and sys/bus/xen/drivers/vif exist; no vbd driver
    "control/feature-balloon": "1",
    "feature/hotplug/vif": "1",
    "attr/PVAddons/Installed": "1",
    "data/updated": "1",
}
PVADDONS_VERSIONS = tuple(f"attr/PVAddons/{k}Version" for k in ("Major", "Minor", "Micro", "Build"))


def check_guestroot_tree(tree: Mapping[str, str]) -> None:
    """Assert that ``tree`` (leaves, relative to the home) is what a default GuestRoot must
    publish, and that XenCenter would show it as described (via the xapi model)."""
    assert set(tree) == set(GUESTROOT_KEYS) | set(PVADDONS_VERSIONS), sorted(
        set(tree) ^ (set(GUESTROOT_KEYS) | set(PVADDONS_VERSIONS)))
    assert {k: tree[k] for k in GUESTROOT_KEYS} == GUESTROOT_KEYS
    view = xapi.read_guest(tree)
    assert view.drivers.detected, view.drivers  # four integers: tools installed
    assert dict(view.metrics.os_version) == {"name": "Debian GNU/Linux 12 (bookworm)",
                                             "distro": "debian", "major": "12", "minor": "5",
                                             "uname": "6.1.0-18-amd64"}
    assert dict(view.metrics.netbios_name) == {"host_name": "guest1"}
    assert dict(view.metrics.networks) == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2"}
    assert (view.metrics.can_use_hotplug_vif, view.metrics.can_use_hotplug_vbd) == ("yes", "unspecified")
    assert view.squeezed == xapi.Squeezed(can_balloon=True, has_guest_agent=True,
                                          memory_internal_free=1523400)
