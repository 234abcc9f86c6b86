"""Network change events: Linux rtnetlink and the FreeBSD routing socket.

The daemon re-collects the network facts when the kernel says something changed,
instead of waiting for the next poll.  This module only answers "something
changed" (and "you may have missed something, re-collect everything"); what
changed is re-read from the usual collectors, so a lost or misparsed message can
never publish wrong data, only delay a publish until the safety sweep.

Shape:

* :func:`parse_rtnetlink` and :func:`parse_route_messages` are pure: bytes in,
  a list of :class:`NetEvent` out.  They never raise; damaged input ends the
  parse and is described in the optional ``problems`` list.
* :class:`RtnetlinkSource` and :class:`RouteSocketSource` open the kernel socket
  and name their parser; :func:`select_event_source` picks one per OS.
* :class:`NetworkEvents` runs one reader thread that blocks in a selector on the
  socket and a wake-up socketpair, coalesces bursts with :class:`Coalescer` and
  calls ``notify("net")`` or ``notify("resync")``.

Nothing happens at import time: no socket is opened before
:meth:`NetworkEvents.start`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Set, Tuple

log = logging.getLogger(__name__)

#: What ``notify`` receives.  ``NET``: links or addresses changed, re-collect the
#: network facts.  ``RESYNC``: messages were lost (the socket buffer overran) or
#: could not be read, so re-collect everything from scratch.
NET = "net"
RESYNC = "resync"

#: Event kinds (the Linux names; FreeBSD messages are mapped onto them).
NEWLINK = "NEWLINK"
DELLINK = "DELLINK"
NEWADDR = "NEWADDR"
DELADDR = "DELADDR"
#: An ``NLMSG_ERROR`` carrying a non-zero error (``error`` holds the errno).
ERROR = "ERROR"
#: ``NLMSG_OVERRUN``: the kernel says data was lost.
OVERRUN = "OVERRUN"

#: Kinds that mean the network facts may have changed.
CHANGE_KINDS = frozenset({NEWLINK, DELLINK, NEWADDR, DELADDR})

DEFAULT_WINDOW = 0.05
RECV_SIZE = 65536
#: Datagrams read per wake-up before the loop checks its deadline and the stop
#: request again (a flood must not starve either).
DRAIN_LIMIT = 256


@dataclass(frozen=True)
class NetEvent:
    """One kernel message, reduced to what a log line or a test needs.

    ``family`` is ``"inet"``, ``"inet6"`` or None (links, unknown families): the
    numeric AF_* values differ between Linux and FreeBSD (AF_INET6 is 10 and 28).
    """

    kind: str
    ifindex: int = 0
    ifname: Optional[str] = None
    address: Optional[str] = None
    family: Optional[str] = None
    error: int = 0


def _problem(problems: Optional[List[str]], text: str) -> None:
    if problems is not None:
        problems.append(text)


def _address(family: Optional[str], raw: bytes) -> Optional[str]:
    if family == "inet" and len(raw) >= 4:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    if family == "inet6" and len(raw) >= 16:
        return str(ipaddress.IPv6Address(bytes(raw[:16])))
    return None


def _cstring(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


# --- Linux: rtnetlink ----------------------------------------------------------------------
#
# Values from the UAPI headers (include/uapi/linux/...; the same files as
# /usr/include/linux/ on this machine):
#   netlink.h:   NETLINK_ROUTE 0; struct nlmsghdr {u32 len; u16 type; u16 flags;
#                u32 seq; u32 pid}; NLMSG_ALIGNTO 4; NLMSG_NOOP 1, NLMSG_ERROR 2,
#                NLMSG_DONE 3, NLMSG_OVERRUN 4; NLM_F_MULTI 2;
#                struct nlmsgerr {int error; struct nlmsghdr msg}; NLA_TYPE_MASK.
#   rtnetlink.h: RTM_NEWLINK 16, RTM_DELLINK 17, RTM_NEWADDR 20, RTM_DELADDR 21;
#                RTMGRP_LINK 1, RTMGRP_IPV4_IFADDR 0x10, RTMGRP_IPV6_IFADDR 0x100;
#                struct rtattr {u16 rta_len; u16 rta_type}; RTA_ALIGNTO 4;
#                struct ifinfomsg {u8 family; u8 pad; u16 type; int index;
#                u32 flags; u32 change}.
#   if_addr.h:   struct ifaddrmsg {u8 family; u8 prefixlen; u8 flags; u8 scope;
#                u32 index}; IFA_ADDRESS 1, IFA_LOCAL 2 (IFA_ADDRESS is the peer
#                on point-to-point links, so IFA_LOCAL wins when present).
#   if_link.h:   IFLA_IFNAME 3.
#   socket.h:    AF_INET 2, AF_INET6 10.
# Netlink uses host byte order ("=" below).

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTNETLINK_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_MULTI = 0x2

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21

IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

LINUX_AF_INET = 2
LINUX_AF_INET6 = 10

NLMSGHDR = struct.Struct("=IHHII")
NLMSGERR = struct.Struct("=i")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")

_LINUX_KINDS = {RTM_NEWLINK: NEWLINK, RTM_DELLINK: DELLINK,
                RTM_NEWADDR: NEWADDR, RTM_DELADDR: DELADDR}
_LINUX_FAMILIES = {LINUX_AF_INET: "inet", LINUX_AF_INET6: "inet6"}


def nlmsg_align(length: int) -> int:
    """NLMSG_ALIGN: round up to NLMSG_ALIGNTO (4) bytes."""
    return (length + 3) & ~3


rta_align = nlmsg_align  # RTA_ALIGN: RTA_ALIGNTO is 4 as well


def _rtattrs(buf: memoryview, offset: int, end: int,
             problems: Optional[List[str]]) -> Dict[int, memoryview]:
    """The attributes between ``offset`` and ``end`` (the first of each type)."""
    attrs: Dict[int, memoryview] = {}
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(buf, offset)
        if length < RTATTR.size or offset + length > end:
            _problem(problems, f"rtattr at {offset}: length {length} overruns its message")
            break
        attrs.setdefault(kind & NLA_TYPE_MASK, buf[offset + RTATTR.size:offset + length])
        offset += rta_align(length)
    return attrs


def _linux_message(kind: str, mtype: int, buf: memoryview, start: int, end: int,
                   problems: Optional[List[str]]) -> Optional[NetEvent]:
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        if end - start < IFINFOMSG.size:
            _problem(problems, f"{kind} at {start}: shorter than struct ifinfomsg")
            return None
        _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(buf, start)
        attrs = _rtattrs(buf, start + nlmsg_align(IFINFOMSG.size), end, problems)
        name = attrs.get(IFLA_IFNAME)
        return NetEvent(kind, index, _cstring(name) if name is not None else None)
    if end - start < IFADDRMSG.size:
        _problem(problems, f"{kind} at {start}: shorter than struct ifaddrmsg")
        return None
    family_num, _prefix, _flags, _scope, index = IFADDRMSG.unpack_from(buf, start)
    family = _LINUX_FAMILIES.get(family_num)
    attrs = _rtattrs(buf, start + nlmsg_align(IFADDRMSG.size), end, problems)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    address = _address(family, raw) if raw is not None else None
    return NetEvent(kind, index, None, address, family)


def parse_rtnetlink(data: bytes, problems: Optional[List[str]] = None) -> List[NetEvent]:
    """Parse one netlink datagram (one or more ``struct nlmsghdr``) into events.

    Link and address messages become NEWLINK/DELLINK/NEWADDR/DELADDR events
    (``ifname`` from IFLA_IFNAME, ``address`` from IFA_LOCAL or IFA_ADDRESS);
    NLMSG_NOOP and ACKs (NLMSG_ERROR with error 0) are skipped; a real
    NLMSG_ERROR becomes an ERROR event with the positive errno; NLMSG_OVERRUN
    an OVERRUN event; NLMSG_DONE ends a multi-part dump.  Other types are
    ignored.  Damaged input (a length that overruns the buffer, a header cut
    short) ends the parse: what came before is returned, the damage is
    described in ``problems``.  Never raises.
    """
    buf = memoryview(bytes(data))
    events: List[NetEvent] = []
    offset = 0
    while offset < len(buf):
        if offset + NLMSGHDR.size > len(buf):
            _problem(problems, f"{len(buf) - offset} trailing bytes at {offset}: "
                               "shorter than struct nlmsghdr")
            break
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSGHDR.size or offset + length > len(buf):
            _problem(problems, f"nlmsghdr at {offset}: length {length} does not fit "
                               f"the {len(buf)}-byte datagram")
            break
        start, end = offset + NLMSGHDR.size, offset + length
        if mtype == NLMSG_DONE:
            break
        if mtype == NLMSG_ERROR:
            if end - start < NLMSGERR.size:
                _problem(problems, f"NLMSG_ERROR at {offset}: no error code")
                break
            (code,) = NLMSGERR.unpack_from(buf, start)
            if code != 0:
                events.append(NetEvent(ERROR, error=-code))
        elif mtype == NLMSG_OVERRUN:
            events.append(NetEvent(OVERRUN))
        elif mtype in _LINUX_KINDS:
            event = _linux_message(_LINUX_KINDS[mtype], mtype, buf, start, end, problems)
            if event is not None:
                events.append(event)
        offset += nlmsg_align(length)
    return events


# --- FreeBSD: the routing socket -----------------------------------------------------------
#
# Layouts for amd64, FreeBSD 13 and 14 (sys/net/route.h, sys/net/if.h,
# sys/net/if_dl.h; checked against the FreeBSD 14 tree, $FreeBSD: 55b075e5 route.h,
# 83597a7d if.h, 9c4c03f6 if_dl.h, and sys/net/rtsock.c rtsock_msg_mbuf(),
# rtsock_addrmsg(), rt_ifmsg(), rt_makeifannouncemsg()).  Every message starts
# with {u_short msglen; u_char version; u_char type}; RTM_VERSION is 5.
#
#   struct ifa_msghdr (RTM_NEWADDR 0xc, RTM_DELADDR 0xd), 20 bytes:
#     u_short ifam_msglen; u_char ifam_version; u_char ifam_type; int ifam_addrs;
#     int ifam_flags; u_short ifam_index; u_short _ifam_spare1; int ifam_metric;
#   struct if_msghdr (RTM_IFINFO 0xe), 16 + sizeof(struct if_data) = 168 bytes:
#     u_short ifm_msglen; u_char ifm_version; u_char ifm_type; int ifm_addrs;
#     int ifm_flags; u_short ifm_index; u_short _ifm_spare1; struct if_data;
#     (if_data is fixed-size since FreeBSD 11: 8 bytes of u8/u16, two u32, 14
#     uint64 counters, an 8-byte epoch and a 16-byte timeval union: 152 bytes.)
#   struct if_announcemsghdr (RTM_IFANNOUNCE 0x11), 24 bytes:
#     u_short ifan_msglen; u_char ifan_version; u_char ifan_type;
#     u_short ifan_index; char ifan_name[IFNAMSIZ=16]; u_short ifan_what;
#     (IFAN_ARRIVAL 0, IFAN_DEPARTURE 1).
#   struct rt_msghdr (RTM_ADD and other route messages), 152 bytes: not parsed,
#     skipped by its length.
#
# After the ifa_msghdr come the sockaddrs named by the ifam_addrs bits, in bit
# order (RTA_DST 0x1, RTA_GATEWAY 0x2, RTA_NETMASK 0x4, RTA_GENMASK 0x8,
# RTA_IFP 0x10, RTA_IFA 0x20, RTA_AUTHOR 0x40, RTA_BRD 0x80), each taking
# SA_SIZE(sa) bytes: sa_len rounded up to sizeof(long) (8), and 8 when sa_len is 0.
# rtsock_addrmsg() sends RTA_NETMASK, RTA_IFP (the interface's sockaddr_dl),
# RTA_IFA and RTA_BRD when set; the kernel recovers the IPv6 scope before sending
# (sa6_recoverscope), so link-local addresses arrive without an embedded zone.
#   sockaddr: u_char sa_len; u_char sa_family (AF_INET 2, AF_LINK 18, AF_INET6 28).
#   sockaddr_in: len, family, u_short port, 4-byte address at offset 4.
#   sockaddr_in6: len, family, port, u32 flowinfo, 16-byte address at offset 8.
#   sockaddr_dl: len, family, u_short sdl_index, u_char sdl_type, sdl_nlen,
#     sdl_alen, sdl_slen, then sdl_data: the name (sdl_nlen bytes), then the
#     link-level address.
# Routing messages use host byte order.

PF_ROUTE = 17  # FreeBSD sys/sys/socket.h: PF_ROUTE == AF_ROUTE == 17
RTM_VERSION = 5
RTM_ADD = 0x1
RTM_NEWADDR_BSD = 0xC
RTM_DELADDR_BSD = 0xD
RTM_IFINFO = 0xE
RTM_IFANNOUNCE = 0x11
IFAN_ARRIVAL = 0
IFAN_DEPARTURE = 1

RTA_NETMASK = 0x4
RTA_IFP = 0x10
RTA_IFA = 0x20
RTA_BRD = 0x80
RTAX_MAX = 8

BSD_AF_INET = 2
BSD_AF_LINK = 18
BSD_AF_INET6 = 28
IFNAMSIZ = 16

RT_HEADER = struct.Struct("=HBB")
IFA_MSGHDR = struct.Struct("=HBBiiHHi")
IF_MSGHDR = struct.Struct("=HBBiiHH")  # followed by struct if_data (152 bytes)
IF_DATA_SIZE = 152
IF_ANNOUNCEMSGHDR = struct.Struct(f"=HBBH{IFNAMSIZ}sH")
SOCKADDR_DL = struct.Struct("=BBHBBBB")

#: sizeof(long) on the machine that produced the messages: SA_SIZE rounds to it.
LONG_SIZE = struct.calcsize("l")

_BSD_FAMILIES = {BSD_AF_INET: "inet", BSD_AF_INET6: "inet6"}


def sa_size(sa_len: int, long_size: int = LONG_SIZE) -> int:
    """SA_SIZE() from sys/net/route.h: sa_len rounded up to sizeof(long), min sizeof(long)."""
    if sa_len == 0:
        return long_size
    return 1 + ((sa_len - 1) | (long_size - 1))


def _sockaddrs(buf: memoryview, offset: int, end: int, addrs: int, long_size: int,
               problems: Optional[List[str]]) -> Dict[int, memoryview]:
    """The sockaddrs after a header, keyed by their RTA_* bit."""
    found: Dict[int, memoryview] = {}
    for index in range(RTAX_MAX):
        bit = 1 << index
        if not addrs & bit:
            continue
        if offset + 2 > end:
            _problem(problems, f"sockaddr for RTA bit {bit:#x} missing at {offset}")
            break
        sa_len = buf[offset]
        step = sa_size(sa_len, long_size)
        if offset + max(sa_len, 2) > end:
            _problem(problems, f"sockaddr at {offset}: sa_len {sa_len} overruns its message")
            break
        found[bit] = buf[offset:offset + max(sa_len, 2)]
        offset += step
    return found


def _sockaddr_address(sa: memoryview) -> Tuple[Optional[str], Optional[str]]:
    """(family, address) of a sockaddr_in or sockaddr_in6."""
    family = _BSD_FAMILIES.get(sa[1])
    if family == "inet":
        return family, _address(family, sa[4:8])
    if family == "inet6":
        return family, _address(family, sa[8:24])
    return family, None


def _sockaddr_dl_name(sa: memoryview) -> Optional[str]:
    if len(sa) < SOCKADDR_DL.size or sa[1] != BSD_AF_LINK:
        return None
    nlen = SOCKADDR_DL.unpack_from(sa, 0)[4]
    name = sa[SOCKADDR_DL.size:SOCKADDR_DL.size + nlen]
    return _cstring(name) if nlen else None


def _bsd_message(mtype: int, buf: memoryview, start: int, end: int, long_size: int,
                 problems: Optional[List[str]]) -> Optional[NetEvent]:
    size = end - start
    if mtype in (RTM_NEWADDR_BSD, RTM_DELADDR_BSD):
        if size < IFA_MSGHDR.size:
            _problem(problems, f"ifa_msghdr at {start}: {size} bytes")
            return None
        _len, _ver, _type, addrs, _flags, index, _spare, _metric = IFA_MSGHDR.unpack_from(buf, start)
        sas = _sockaddrs(buf, start + IFA_MSGHDR.size, end, addrs, long_size, problems)
        family = address = name = None
        if RTA_IFA in sas:
            family, address = _sockaddr_address(sas[RTA_IFA])
        if RTA_IFP in sas:
            name = _sockaddr_dl_name(sas[RTA_IFP])
        kind = NEWADDR if mtype == RTM_NEWADDR_BSD else DELADDR
        return NetEvent(kind, index, name, address, family)
    if mtype == RTM_IFINFO:
        if size < IF_MSGHDR.size:
            _problem(problems, f"if_msghdr at {start}: {size} bytes")
            return None
        index = IF_MSGHDR.unpack_from(buf, start)[5]
        return NetEvent(NEWLINK, index)
    if mtype == RTM_IFANNOUNCE:
        if size < IF_ANNOUNCEMSGHDR.size:
            _problem(problems, f"if_announcemsghdr at {start}: {size} bytes")
            return None
        _len, _ver, _type, index, name, what = IF_ANNOUNCEMSGHDR.unpack_from(buf, start)
        kind = DELLINK if what == IFAN_DEPARTURE else NEWLINK
        return NetEvent(kind, index, _cstring(name))
    return None


def parse_route_messages(data: bytes, problems: Optional[List[str]] = None,
                         long_size: int = LONG_SIZE) -> List[NetEvent]:
    """Parse routing-socket messages (one datagram, or a sysctl-style concatenation).

    RTM_NEWADDR/RTM_DELADDR become NEWADDR/DELADDR (``ifindex`` from ifam_index,
    ``address`` from the RTA_IFA sockaddr, ``ifname`` from the RTA_IFP
    sockaddr_dl); RTM_IFINFO becomes NEWLINK (ifm_index); RTM_IFANNOUNCE becomes
    NEWLINK (IFAN_ARRIVAL) or DELLINK (IFAN_DEPARTURE) with ifan_index and
    ifan_name.  Route messages and other types are skipped by their length, as
    are messages whose version is not RTM_VERSION.  Damaged input ends the parse
    and is described in ``problems``; never raises.
    """
    buf = memoryview(bytes(data))
    events: List[NetEvent] = []
    offset = 0
    while offset < len(buf):
        if offset + RT_HEADER.size > len(buf):
            _problem(problems, f"{len(buf) - offset} trailing bytes at {offset}")
            break
        msglen, version, mtype = RT_HEADER.unpack_from(buf, offset)
        if msglen < RT_HEADER.size or offset + msglen > len(buf):
            _problem(problems, f"message at {offset}: msglen {msglen} does not fit "
                               f"the {len(buf)}-byte buffer")
            break
        if version != RTM_VERSION:
            _problem(problems, f"message at {offset}: version {version}, expected {RTM_VERSION}")
        else:
            event = _bsd_message(mtype, buf, offset, offset + msglen, long_size, problems)
            if event is not None:
                events.append(event)
        offset += msglen
    return events


# --- event sources -------------------------------------------------------------------------

class EventSource(Protocol):
    """A kernel socket that reports link and address changes."""

    name: str

    def available(self) -> bool:
        """Whether this OS can offer the socket at all (no socket is opened)."""

    def open(self) -> socket.socket:
        """A bound, subscribed socket; raises OSError when the kernel refuses."""

    def parse(self, data: bytes, problems: Optional[List[str]] = None) -> List[NetEvent]:
        """Pure parse of one datagram."""

    def from_kernel(self, address: object) -> bool:
        """Whether a datagram's source address is the kernel's."""


class RtnetlinkSource:
    """Linux: ``AF_NETLINK``/``NETLINK_ROUTE`` bound to RTMGRP_LINK | RTMGRP_IPV4_IFADDR |
    RTMGRP_IPV6_IFADDR (include/uapi/linux/rtnetlink.h)."""

    name = "rtnetlink"

    def __init__(self, platform: Optional[str] = None, rcvbuf: int = 1 << 20) -> None:
        self.platform = platform if platform is not None else sys.platform
        self.rcvbuf = rcvbuf

    def available(self) -> bool:
        return self.platform.startswith("linux") and hasattr(socket, "AF_NETLINK")

    def open(self) -> socket.socket:
        if not self.available():
            raise OSError(errno.EAFNOSUPPORT, "rtnetlink exists only on Linux")
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            try:  # a bigger buffer makes ENOBUFS rarer; the kernel caps it at rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            except OSError:
                pass
            sock.bind((0, RTNETLINK_GROUPS))
        except OSError:
            sock.close()
            raise
        return sock

    def parse(self, data: bytes, problems: Optional[List[str]] = None) -> List[NetEvent]:
        return parse_rtnetlink(data, problems)

    def from_kernel(self, address: object) -> bool:
        # (nl_pid, nl_groups): the kernel sends with port id 0.  Only root can send
        # to rtnetlink groups anyway; this also drops unicast noise.
        return isinstance(address, tuple) and len(address) >= 1 and address[0] == 0


class RouteSocketSource:
    """FreeBSD: ``socket(PF_ROUTE, SOCK_RAW, 0)``, all address families.

    Unavailable anywhere else (Linux defines ``socket.AF_ROUTE`` as an alias of
    AF_NETLINK, so the platform, not the constant, decides)."""

    name = "routing socket"

    def __init__(self, platform: Optional[str] = None) -> None:
        self.platform = platform if platform is not None else sys.platform

    def available(self) -> bool:
        return self.platform.startswith("freebsd")

    def open(self) -> socket.socket:
        if not self.available():
            raise OSError(errno.EAFNOSUPPORT, "the PF_ROUTE routing socket exists only on FreeBSD")
        family = getattr(socket, "AF_ROUTE", PF_ROUTE)
        return socket.socket(family, socket.SOCK_RAW, 0)

    def parse(self, data: bytes, problems: Optional[List[str]] = None) -> List[NetEvent]:
        return parse_route_messages(data, problems)

    def from_kernel(self, address: object) -> bool:
        return True  # every routing-socket message is the kernel's report


def select_event_source(os_name: str) -> Optional[EventSource]:
    """The event source for an OS (``platform.system()`` or ``sys.platform`` form),
    or None where there is none and the caller must poll."""
    name = os_name.lower()
    if name.startswith("linux"):
        return RtnetlinkSource(platform=name)
    if name.startswith("freebsd"):
        return RouteSocketSource(platform=name)
    return None


# --- coalescing ----------------------------------------------------------------------------

class Coalescer:
    """Turns a burst of events into one notification.

    The first event opens a window of ``window`` seconds; everything that arrives
    before it closes is merged, and when it closes one notification goes out:
    RESYNC if any event in the window asked for it, NET otherwise.  A fixed
    window (not "wait for quiet") bounds the delay even under a steady stream.
    Pure: the caller passes the time.
    """

    def __init__(self, window: float = DEFAULT_WINDOW) -> None:
        if window < 0:
            raise ValueError("the coalescing window cannot be negative")
        self.window = window
        self._pending: Optional[str] = None
        self._opened = 0.0

    @property
    def pending(self) -> Optional[str]:
        return self._pending

    def add(self, kind: str, now: float) -> None:
        if self._pending is None:
            self._pending, self._opened = kind, now
        elif kind == RESYNC:
            self._pending = RESYNC

    def timeout(self, now: float) -> Optional[float]:
        """Seconds until the open window closes; None when nothing is pending."""
        if self._pending is None:
            return None
        return max(0.0, self._opened + self.window - now)

    def due(self, now: float) -> Optional[str]:
        """The notification to send now, if the window has closed (then reset)."""
        if self._pending is None or now < self._opened + self.window:
            return None
        kind, self._pending = self._pending, None
        return kind


# --- the watcher ---------------------------------------------------------------------------

class NetworkEvents:
    """Watches the kernel for link and address changes on one reader thread.

    ``start(notify)`` opens the source's socket and returns True when events will
    flow, False when no source exists on this OS or the kernel refused the socket
    (the caller then polls and says so).  The thread calls ``notify(NET)`` at most
    once per coalescing window, ``notify(RESYNC)`` after the receive buffer
    overran (ENOBUFS) or a message could not be parsed.  ``notify`` runs on the
    reader thread: keep it short and thread-safe (a ``queue.Queue.put``).
    ``stop()`` wakes the thread through a socketpair and joins it.
    """

    def __init__(self, source: Optional[EventSource] = None, window: float = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.monotonic,
                 os_name: Optional[str] = None) -> None:
        self.source = source if source is not None else select_event_source(
            os_name if os_name is not None else sys.platform)
        self.coalescer = Coalescer(window)
        self.clock = clock
        self._notify: Optional[Callable[[str], None]] = None
        self._sock: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._warned: Set[str] = set()
        self.notifications = 0
        self.messages = 0

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else "none"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, notify: Callable[[str], None]) -> bool:
        """Open the socket and start the reader; False (and a log line) if impossible."""
        if self.running:
            return True
        if self.source is None or not self.source.available():
            log.info("no network event source (%s) on %s; network changes are polled",
                     self.name, getattr(self.source, "platform", sys.platform))
            return False
        try:
            sock = self.source.open()
        except OSError as exc:
            log.warning("cannot open the %s (%s); network changes are polled", self.source.name, exc)
            return False
        sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sock = sock
        self._notify = notify
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="xenguest-netevents", daemon=True)
        self._thread.start()
        log.info("listening to the %s for network changes (coalescing window %.0f ms)",
                 self.source.name, self.coalescer.window * 1000)
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """End the reader thread promptly and close the sockets (idempotent)."""
        self._stopping.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the network event reader did not stop within %.1fs", timeout)
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._sock = self._wake_r = self._wake_w = None

    # --- the reader thread ---------------------------------------------------------------

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message + " (reported once)", *args)

    def _fire(self, kind: str) -> None:
        self.notifications += 1
        try:
            if self._notify is not None:
                self._notify(kind)
        except Exception:  # the consumer's bug must not kill the reader
            log.exception("network event callback failed")

    def _drain(self, sock: socket.socket) -> bool:
        """Read what is queued; False when the socket is broken for good."""
        assert self.source is not None
        for _ in range(DRAIN_LIMIT):
            try:
                data, address = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped messages: what we know may be stale.
                    log.info("%s overrun (ENOBUFS): full re-collect", self.source.name)
                    self.coalescer.add(RESYNC, self.clock())
                    continue
                if self._stopping.is_set():
                    return False
                log.error("reading the %s failed (%s); network changes now rely on the "
                          "safety sweep", self.source.name, exc)
                self._fire(RESYNC)
                return False
            if not self.source.from_kernel(address):
                continue
            self.messages += 1
            problems: List[str] = []
            try:
                events = self.source.parse(data, problems)
            except Exception:  # parsers never raise; a bug there must not end the thread
                log.exception("parsing a %s message failed", self.source.name)
                events, problems = [], ["parser error"]
            if problems:
                self._warn_once("parse", "unreadable %s message: %s; full re-collect",
                                self.source.name, problems[0])
                self.coalescer.add(RESYNC, self.clock())
            for event in events:
                if event.kind == OVERRUN:
                    self.coalescer.add(RESYNC, self.clock())
                elif event.kind in CHANGE_KINDS:
                    log.debug("network event %s", event)
                    self.coalescer.add(NET, self.clock())
        return True

    def _run(self) -> None:
        sock, wake = self._sock, self._wake_r
        if sock is None or wake is None:
            return
        selector = selectors.DefaultSelector()
        try:
            selector.register(sock, selectors.EVENT_READ, "kernel")
            selector.register(wake, selectors.EVENT_READ, "wake")
            alive = True
            while alive and not self._stopping.is_set():
                ready = selector.select(self.coalescer.timeout(self.clock()))
                if self._stopping.is_set():
                    break
                for key, _mask in ready:
                    if key.data == "kernel":
                        alive = self._drain(sock)
                kind = self.coalescer.due(self.clock())
                if kind is not None:
                    self._fire(kind)
        except Exception:  # never let the thread die silently
            log.exception("the network event reader stopped")
        finally:
            selector.close()
