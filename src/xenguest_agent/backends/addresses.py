"""Where interface addresses come from: the live kernel or a capture.

Linux: one rtnetlink RTM_GETLINK and one RTM_GETADDR dump
(:class:`NetlinkAddresses`), grouped by interface index.  psutil's
``net_if_addrs`` is not used there: it decodes every interface name as UTF-8
and raises for the whole table when one name is not (the kernel accepts any
byte but '/', ':' and white space: net/core/dev.c dev_valid_name), and it
reports a labelled IPv4 address (``ip addr add ... label eth0:1``) under its
label instead of its interface.  FreeBSD keeps psutil (getifaddrs(3)).

A fixture tree cannot hold the kernel's address table, so under ``--root`` the
addresses come from a captured ``ip -json address`` dump
(``_capture/ip-address.json`` in the tree), which any administrator can produce
to reproduce a problem.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

from xenguest_agent.backends.base import make_address
from xenguest_agent.facts import Address
from xenguest_agent.host import Host
from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol
else:  # a Protocol is for the type checker; at run time a plain base class
    Protocol = object

log = get_logger(__name__)

CAPTURE_PATH = "/_capture/ip-address.json"

Table = dict[str, tuple[Address, ...]]


class AddressSource(Protocol):
    """Interface name -> its addresses, in the kernel's order."""

    def addresses(self) -> Table: ...


class AddressCache:
    """Remembers parsed addresses: a guest's addresses rarely change, and one
    with thousands (containers) would otherwise re-validate each every round.
    Bounded: emptied when it passes ``limit`` entries."""

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._known: dict[tuple[int, str], Address | None] = {}

    def __call__(self, family: int, text: str) -> Address | None:
        key = (family, text)
        try:
            return self._known[key]
        except KeyError:
            pass
        if len(self._known) >= self.limit:
            self._known.clear()
        parsed = self._known[key] = make_address(family, text)
        return parsed


def _dedupe(items: Iterable[Address]) -> tuple[Address, ...]:
    seen: dict[tuple[int, str], Address] = {}
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
            found: list[Address] = []
            for entry in entries:
                family = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(entry.family)
                if family is None:
                    continue
                address = self.parse(family, entry.address)
                if address is not None:
                    found.append(address)
            table[name] = _dedupe(found)
        return table


class NetlinkAddresses:
    """Live Linux addresses from the kernel's own tables, keyed by interface index.

    Names come from RTM_GETLINK as bytes and are decoded the way Python decodes
    /sys/class/net entries (``os.fsdecode``, PEP 383), so any name the kernel
    accepts joins its sysfs directory (VIF id, MAC, stacking) and never raises.
    Addresses the kernel would not use yet or at all are left out (see
    :meth:`IfAddress.usable`)."""

    def __init__(self, timeout: float = 2.0,
                 open_socket: Callable[[], socket.socket] | None = None) -> None:
        from xenguest_agent.netevents import rtnetlink

        self.rtnetlink = rtnetlink
        self.timeout = timeout
        self.open_socket = open_socket if open_socket is not None else rtnetlink.open_dump_socket
        self.parse = AddressCache()
        self._odd_names: set[bytes] = set()

    def addresses(self) -> Table:
        names, found, problems = self.rtnetlink.dump_addresses(self.open_socket, self.timeout)
        if problems:
            log.info("rtnetlink dump: %d unreadable message(s), first: %s", len(problems), problems[0])
        grouped: dict[int, list[Address]] = {index: [] for index in names}
        for entry in found:
            if entry.index not in grouped or not entry.usable():
                continue  # a link created since the link dump comes with its own event
            kind = socket.AF_INET if entry.family == 4 else socket.AF_INET6
            address = self.parse(entry.family, socket.inet_ntop(kind, entry.packed))
            if address is not None:
                grouped[entry.index].append(address)
        table: Table = {}
        for index, raw in names.items():
            table[os.fsdecode(raw)] = _dedupe(grouped[index])
            self._note_odd_name(index, raw)
        return table

    def _note_odd_name(self, index: int, raw: bytes) -> None:
        """One log line per odd name: it is reported, but only by its index's sysfs."""
        if all(0x21 <= byte < 0x7F for byte in raw) or raw in self._odd_names:
            return
        if len(self._odd_names) < 1024:
            self._odd_names.add(raw)
        log.info("interface %d is named %r, not printable ASCII: reported through its sysfs "
                 "device and MAC; its name is never published", index, raw)


def parse_ip_json(text: str, parse: Callable[[int, str], Address | None] = make_address) -> Table:
    """Parse ``ip -json address`` output (iproute2) into the address table."""
    import json  # only captured trees (show --root) and tests parse `ip -json`

    table: Table = {}
    for link in json.loads(text):
        name = link.get("ifname")
        if not isinstance(name, str):
            continue
        found: list[Address] = []
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
