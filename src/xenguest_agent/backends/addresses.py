"""Where interface addresses come from: the live kernel (psutil) or a capture.

psutil's ``net_if_addrs`` (getifaddrs(3)) works on Linux and FreeBSD and needs
no child process; netifaces is unmaintained since 2021.  A fixture tree cannot
hold the kernel's address table, so under ``--root`` the addresses come from a
captured ``ip -json address`` dump (``_capture/ip-address.json`` in the tree),
which any administrator can produce to reproduce a problem.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Tuple

from xenguest_agent.backends.base import make_address
from xenguest_agent.facts import Address
from xenguest_agent.host import Host

log = logging.getLogger(__name__)

CAPTURE_PATH = "/_capture/ip-address.json"

Table = Dict[str, Tuple[Address, ...]]


class AddressSource(Protocol):
    """Interface name -> its addresses, in the kernel's order."""

    def addresses(self) -> Table: ...


class AddressCache:
    """Remembers parsed addresses: a guest's addresses rarely change, and one
    with thousands (containers) would otherwise re-validate each every round.
    Bounded: emptied when it passes ``limit`` entries."""

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._known: Dict[Tuple[int, str], Optional[Address]] = {}

    def __call__(self, family: int, text: str) -> Optional[Address]:
        key = (family, text)
        try:
            return self._known[key]
        except KeyError:
            pass
        if len(self._known) >= self.limit:
            self._known.clear()
        parsed = self._known[key] = make_address(family, text)
        return parsed


def _dedupe(items: Iterable[Address]) -> Tuple[Address, ...]:
    seen: Dict[Tuple[int, str], Address] = {}
    for item in items:
        seen.setdefault((item.family, item.address), item)
    return tuple(seen.values())


class PsutilAddresses:
    """Live addresses through psutil (imported on first use, not at import)."""

    def __init__(self) -> None:
        self.parse = AddressCache()

    def addresses(self) -> Table:
        import psutil

        table: Table = {}
        for name, entries in psutil.net_if_addrs().items():
            found: List[Address] = []
            for entry in entries:
                family = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(entry.family)
                if family is None:
                    continue
                address = self.parse(family, entry.address)
                if address is not None:
                    found.append(address)
            table[name] = _dedupe(found)
        return table


def parse_ip_json(text: str, parse: Callable[[int, str], Optional[Address]] = make_address) -> Table:
    """Parse ``ip -json address`` output (iproute2) into the address table."""
    table: Table = {}
    for link in json.loads(text):
        name = link.get("ifname")
        if not isinstance(name, str):
            continue
        found: List[Address] = []
        for info in link.get("addr_info", ()):
            family = {"inet": 4, "inet6": 6}.get(info.get("family"))
            local = info.get("local")
            if family is None or not isinstance(local, str):
                continue
            address = parse(family, local)
            if address is not None:
                found.append(address)
        table[name] = _dedupe(found)
    return table


class CapturedAddresses:
    """Addresses replayed from a captured ``ip -json address`` file under the root."""

    def __init__(self, host: Host, path: str = CAPTURE_PATH) -> None:
        self.host = host
        self.path = path
        self.parse = AddressCache()

    def addresses(self) -> Table:
        text = self.host.read_text(self.path)
        if text is None:
            log.info("no address capture at %s under %s: reporting no addresses",
                     self.path, self.host.root)
            return {}
        return parse_ip_json(text, self.parse)
