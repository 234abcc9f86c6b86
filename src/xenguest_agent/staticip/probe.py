"""What the daemon needs before any static IP request arrives: whether to advertise the
feature, which keys to watch, and whether a request is there.

Only cheap path checks and XenStore reads live here, so an idle guest never loads the
parsing, planning and applying modules (manager.py and what it imports): the driver
loads them when :func:`requested` first finds a request.

Paths: xen-api ``ocaml/xenopsd/xc/device_common.ml`` ``extra_xenserver_path_of_device``
puts a device's extra keys at ``<domain path>/xenserver/device/<kind>/<frontend devid>``;
kinds ``vif`` and, for SR-IOV VFs, ``net-sriov-vf`` (both watched by the Windows agent).
A request is an ``enabled`` (IPv4) or ``enabled6`` (IPv6) key under the device's
``static-ip-setting/`` (xen-api ``ocaml/xenopsd/xc/xenops_server_xen.ml``
``xenstore_of_static_ip_setting``).
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, List, Optional

    from xenguest_agent.host import Host
    Read = Callable[[str], Optional[str]]
    Ls = Callable[[str], Optional[List[str]]]

VIF_ROOT = "xenserver/device/vif"
SRIOV_ROOT = "xenserver/device/net-sriov-vf"
ROOTS = (VIF_ROOT, SRIOV_ROOT)
SETTING = "static-ip-setting"
FEATURE_KEY = "control/feature-static-ip-setting"
REQUEST_KEYS = ("enabled", "enabled6")
DEVID = re.compile(r"^(0|[1-9][0-9]{0,8})\Z")

#: The backends' names (each class's ``name`` in linux.py and freebsd.py).
NETWORKMANAGER = "NetworkManager"
NETWORKD = "systemd-networkd"
IFUPDOWN = "ifupdown"
RC_CONF = "rc.conf"


def detect(host: Host) -> Optional[str]:
    """The name of the guest's network configuration system, or None.  A running
    NetworkManager (it keeps /run/NetworkManager) or systemd-networkd (it keeps
    /run/systemd/netif/state, what sd_network_get_operational_state reads) wins
    over files that may be left over from an earlier setup.  Both are driven through
    their command-line tools, which reach the daemon over the D-Bus system bus
    (nmcli; networkctl reload/reconfigure): without the bus's socket neither can apply
    anything, so neither is chosen."""
    def any_of(*paths: str) -> bool:
        return any(host.exists(p) for p in paths)

    bus = host.exists("/run/dbus/system_bus_socket")
    if bus and host.exists("/run/NetworkManager") and any_of("/usr/bin/nmcli", "/bin/nmcli"):
        return NETWORKMANAGER
    if bus and host.exists("/run/systemd/netif/state") and any_of("/usr/bin/networkctl",
                                                                  "/bin/networkctl"):
        return NETWORKD
    if host.exists("/etc/network/interfaces") and any_of("/sbin/ifup", "/usr/sbin/ifup"):
        return IFUPDOWN
    if host.exists("/etc/rc.subr") and host.exists("/usr/sbin/sysrc"):
        return RC_CONF
    return None


def requested(read: Read, ls: Ls) -> bool:
    """Whether any device (followed by its canonical decimal id only, as the manager
    does) holds an ``enabled`` or ``enabled6`` request."""
    for root in ROOTS:
        for entry in ls(root) or []:
            if DEVID.match(entry) and any(read(f"{root}/{entry}/{SETTING}/{key}") is not None
                                          for key in REQUEST_KEYS):
                return True
    return False
