"""A small synthetic guest tree for integration tests that need a --root.

The captured trees of real distributions live in tests/fixtures/linux/; this
one is built per test so a test can change a fact (an address, memory) while
the agent runs and watch the change arrive in the real xenstored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

MEMINFO = """MemTotal:        2014228 kB
MemFree:          911284 kB
MemAvailable:    1523400 kB
Buffers:           41220 kB
Cached:           682100 kB
SwapTotal:             0 kB
SwapFree:              0 kB
"""


class GuestRoot:
    """A writable fake guest: os-release, /proc, /sys/class/net and an address capture."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links: Dict[str, dict] = {}
        self.file("etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                  'VERSION_ID="12"\nID=debian\n')
        self.file("etc/debian_version", "12.5\n")
        self.file("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n")
        self.file("proc/sys/kernel/hostname", "guest1\n")
        self.file("proc/meminfo", MEMINFO)
        self.file("sys/bus/xen/drivers/vif/.keep", "")
        self.file("sys/devices/system/xen_memory/xen_memory0/.keep", "")
        self.nic("eth0", 0, "00:16:3e:00:00:01", ["10.0.0.2"])

    def file(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def nic(self, name: str, vif: Optional[int], mac: str, addresses: List[str]) -> None:
        base = f"sys/class/net/{name}"
        self.file(f"{base}/address", mac + "\n")
        if vif is not None:
            self.file(f"{base}/device/devtype", "vif\n")
            self.file(f"{base}/device/nodename", f"device/vif/{vif}\n")
        self.links[name] = {"ifname": name, "address": mac, "addr_info": []}
        self.set_addresses(name, addresses)

    def set_addresses(self, name: str, addresses: List[str]) -> None:
        self.links[name]["addr_info"] = [
            {"family": "inet6" if ":" in a else "inet", "local": a,
             "prefixlen": 64 if ":" in a else 24, "scope": "global"} for a in addresses]
        self.file("_capture/ip-address.json", json.dumps(list(self.links.values())))

    def set_memory(self, available_kib: int) -> None:
        self.file("proc/meminfo", MEMINFO.replace("1523400", str(available_kib)))
