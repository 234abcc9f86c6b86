"""Linux rtnetlink: one message walker for the event socket and the address dump.

Two users share the walker (:func:`messages`) and the attribute walker
(:func:`attributes`):

* the event source (:class:`RtnetlinkSource`) only needs "a link or an address
  changed" and "messages were lost", so :func:`classify` reads message types and
  never decodes a field;
* the live address source (:func:`dump_addresses`, used by
  :class:`xenguest_agent.backends.addresses.NetlinkAddresses`) sends one
  RTM_GETLINK and one RTM_GETADDR dump request and decodes names by interface
  index and addresses with their flags.

Values from the UAPI headers (include/uapi/linux/, as /usr/include/linux/):
  netlink.h:   struct nlmsghdr {u32 len; u16 type; u16 flags; u32 seq; u32 pid};
               NLMSG_ALIGNTO 4; NLMSG_NOOP 1, NLMSG_ERROR 2, NLMSG_DONE 3,
               NLMSG_OVERRUN 4; NLM_F_REQUEST 1, NLM_F_MULTI 2, NLM_F_DUMP_INTR 0x10,
               NLM_F_DUMP 0x300; struct nlmsgerr {int error; ...}; NLA_TYPE_MASK.
  rtnetlink.h: RTM_NEWLINK 16, RTM_DELLINK 17, RTM_GETLINK 18, RTM_NEWADDR 20,
               RTM_DELADDR 21, RTM_GETADDR 22; RTMGRP_LINK 1, RTMGRP_IPV4_IFADDR
               0x10, RTMGRP_IPV6_IFADDR 0x100; struct rtattr {u16 len; u16 type};
               struct ifinfomsg {u8 family; u8 pad; u16 type; int index; u32 flags;
               u32 change}.
  if_addr.h:   struct ifaddrmsg {u8 family; u8 prefixlen; u8 flags; u8 scope;
               u32 index}; IFA_ADDRESS 1, IFA_LOCAL 2, IFA_LABEL 3, IFA_FLAGS 8;
               IFA_F_OPTIMISTIC 0x04, IFA_F_DADFAILED 0x08, IFA_F_TENTATIVE 0x40.
  if_link.h:   IFLA_IFNAME 3.
Netlink uses host byte order ("=" below).
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time
from collections.abc import Iterator

from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

NET = "net"
RESYNC = "resync"

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTNETLINK_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

IFLA_IFNAME = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

LINUX_AF_INET = 2
LINUX_AF_INET6 = 10

NLMSGHDR = struct.Struct("=IHHII")
NLMSGERR = struct.Struct("=i")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")

#: A dump reply datagram is at most 32 KiB (net/netlink/af_netlink.c caps
#: max_recvmsg_len); twice that leaves room and MSG_TRUNC catches the rest.
RECV_SIZE = 65536

_CHANGES = frozenset({RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR})
_BODY = {RTM_NEWLINK: IFINFOMSG.size, RTM_DELLINK: IFINFOMSG.size,
         RTM_NEWADDR: IFADDRMSG.size, RTM_DELADDR: IFADDRMSG.size}


def align(length: int) -> int:
    """NLMSG_ALIGN and RTA_ALIGN: round up to 4 bytes."""
    return (length + 3) & ~3


@dataclass(frozen=True)
class Message:
    """One netlink message: header fields and its payload (after the nlmsghdr)."""

    type: int
    flags: int
    seq: int
    body: memoryview


def messages(data: bytes, problems: list[str]) -> Iterator[Message]:
    """The messages of one datagram, in order.  Damage (a length that overruns the
    datagram, a header cut short) ends the walk and is described in ``problems``;
    never raises."""
    buf = memoryview(data)
    offset = 0
    while offset < len(buf):
        if offset + NLMSGHDR.size > len(buf):
            problems.append(f"{len(buf) - offset} trailing bytes at {offset}: "
                            "shorter than struct nlmsghdr")
            return
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSGHDR.size or offset + length > len(buf):
            problems.append(f"nlmsghdr at {offset}: length {length} does not fit "
                            f"the {len(buf)}-byte datagram")
            return
        yield Message(mtype, flags, seq, buf[offset + NLMSGHDR.size:offset + length])
        offset += align(length)


def attributes(body: memoryview, offset: int, problems: list[str]) -> dict[int, memoryview]:
    """The rtattrs of a message body from ``offset`` on (the first of each type)."""
    found: dict[int, memoryview] = {}
    end = len(body)
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(body, offset)
        if length < RTATTR.size or offset + length > end:
            problems.append(f"rtattr at {offset}: length {length} overruns its message")
            break
        found.setdefault(kind & NLA_TYPE_MASK, body[offset + RTATTR.size:offset + length])
        offset += align(length)
    return found


# --- the event socket -------------------------------------------------------------------------

def classify(data: bytes, problems: list[str]) -> str | None:
    """What one multicast datagram means to the agent: NET when a link or an address
    changed, RESYNC when the kernel says messages were lost (NLMSG_OVERRUN), None
    when nothing of interest.  Damage is described in ``problems`` (the caller
    resyncs); fields are never decoded: what changed is re-read by the collectors."""
    verdict: str | None = None
    for message in messages(data, problems):
        if message.type == NLMSG_OVERRUN:
            return RESYNC
        if message.type in _CHANGES:
            if len(message.body) < _BODY[message.type]:
                problems.append(f"message type {message.type}: {len(message.body)}-byte body")
            else:
                verdict = NET
    return verdict


class RtnetlinkSource:
    """Linux: ``AF_NETLINK``/``NETLINK_ROUTE`` bound to RTMGRP_LINK | RTMGRP_IPV4_IFADDR |
    RTMGRP_IPV6_IFADDR.  A receive-buffer overrun is reported by the kernel as
    ENOBUFS on the next read (net/netlink/af_netlink.c, netlink_overrun)."""

    name = "rtnetlink"

    def __init__(self, platform: str | None = None, rcvbuf: int = 1 << 20) -> None:
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

    def classify(self, data: bytes, problems: list[str]) -> str | None:
        return classify(data, problems)

    def from_kernel(self, address: object) -> bool:
        # (nl_pid, nl_groups): the kernel sends with port id 0.
        return isinstance(address, tuple) and len(address) >= 1 and address[0] == 0


# --- the address dump -------------------------------------------------------------------------

@dataclass(frozen=True)
class IfAddress:
    """One address from an RTM_NEWADDR message: ``family`` 4 or 6, ``packed`` its
    network-order bytes, ``flags`` the IFA_F_* bits (IFA_FLAGS when present)."""

    index: int
    family: int
    packed: bytes
    flags: int

    def usable(self) -> bool:
        """Whether the kernel would use it as a source address: not while duplicate
        address detection runs (tentative), unless optimistic (RFC 4429), and never
        after DAD failed.  net/ipv6/addrconf.c __ipv6_dev_get_saddr skips
        ``IFA_F_TENTATIVE`` without ``IFA_F_OPTIMISTIC``; addrconf_dad_failure
        marks ``IFA_F_DADFAILED``.  The kernel re-announces the address
        (RTM_NEWADDR) when DAD completes, so it is published then."""
        if self.flags & IFA_F_DADFAILED:
            return False
        return not (self.flags & IFA_F_TENTATIVE and not self.flags & IFA_F_OPTIMISTIC)


def decode_address(body: memoryview, problems: list[str]) -> IfAddress | None:
    """An RTM_NEWADDR body.  IFA_LOCAL is the local address when present; IFA_ADDRESS
    is the peer on point-to-point links and the address otherwise
    (net/ipv4/devinet.c inet_fill_ifaddr, net/ipv6/addrconf.c inet6_fill_ifaddr).
    IFA_LABEL (``eth0:1``) is ignored: the address belongs to ``index``."""
    if len(body) < IFADDRMSG.size:
        problems.append(f"RTM_NEWADDR: {len(body)}-byte body")
        return None
    family_num, _prefix, flags, _scope, index = IFADDRMSG.unpack_from(body, 0)
    size = {LINUX_AF_INET: 4, LINUX_AF_INET6: 16}.get(family_num)
    if size is None:
        return None
    attrs = attributes(body, align(IFADDRMSG.size), problems)
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None or len(raw) < size:
        return None
    extended = attrs.get(IFA_FLAGS)
    if extended is not None and len(extended) >= U32.size:
        (flags,) = U32.unpack_from(extended, 0)
    return IfAddress(index, 4 if size == 4 else 6, bytes(raw[:size]), flags)


def decode_link(body: memoryview, problems: list[str]) -> tuple[int, bytes] | None:
    """(ifindex, IFLA_IFNAME as bytes) of an RTM_NEWLINK body: the kernel only
    forbids '/', ':' and white space in names (net/core/dev.c dev_valid_name),
    so a name need not be text."""
    if len(body) < IFINFOMSG.size:
        problems.append(f"RTM_NEWLINK: {len(body)}-byte body")
        return None
    index = IFINFOMSG.unpack_from(body, 0)[2]
    name = attributes(body, align(IFINFOMSG.size), problems).get(IFLA_IFNAME)
    if name is None:
        return None
    return index, bytes(name).split(b"\0", 1)[0]


class DumpError(Exception):
    """A dump request failed (error reply, timeout, truncation, damage)."""


class DumpInterrupted(DumpError):
    """The table changed during the dump (NLM_F_DUMP_INTR): ask again."""


def _request(sock: socket.socket, mtype: int, body: bytes, seq: int) -> None:
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    sock.sendto(header + body, (0, 0))


def _replies(sock: socket.socket, seq: int, deadline: float,
             clock: Callable[[], float]) -> Iterator[Message]:
    """The reply messages of dump ``seq`` until NLMSG_DONE."""
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise DumpError("no complete reply before the deadline")
        sock.settimeout(remaining)
        try:
            data, _ancillary, flags, _address = sock.recvmsg(RECV_SIZE)
        except socket.timeout as exc:
            raise DumpError("no complete reply before the deadline") from exc
        if flags & socket.MSG_TRUNC:
            raise DumpError(f"a reply datagram was longer than {RECV_SIZE} bytes")
        problems: list[str] = []
        for message in messages(data, problems):
            if message.seq != seq:
                continue
            if message.flags & NLM_F_DUMP_INTR:
                raise DumpInterrupted("the kernel's table changed during the dump")
            if message.type in (NLMSG_DONE, NLMSG_ERROR):
                code = NLMSGERR.unpack_from(message.body, 0)[0] if len(message.body) >= 4 else 0
                if code < 0:
                    raise DumpError(f"the kernel refused the dump: {errno.errorcode.get(-code, -code)}")
                return
            yield message
        if problems:
            raise DumpError(f"unreadable reply: {problems[0]}")


def _dump_once(open_socket: Callable[[], socket.socket], deadline: float,
               clock: Callable[[], float]) -> tuple[dict[int, bytes], list[IfAddress], list[str]]:
    problems: list[str] = []
    names: dict[int, bytes] = {}
    found: list[IfAddress] = []
    with open_socket() as sock:
        _request(sock, RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0), 1)
        for message in _replies(sock, 1, deadline, clock):
            if message.type == RTM_NEWLINK:
                link = decode_link(message.body, problems)
                if link is not None:
                    names[link[0]] = link[1]
        _request(sock, RTM_GETADDR, IFADDRMSG.pack(0, 0, 0, 0, 0), 2)
        for message in _replies(sock, 2, deadline, clock):
            if message.type == RTM_NEWADDR:
                address = decode_address(message.body, problems)
                if address is not None:
                    found.append(address)
    return names, found, problems


def dump_addresses(open_socket: Callable[[], socket.socket], timeout: float = 2.0,
                   attempts: int = 3, clock: Callable[[], float] = time.monotonic,
                   ) -> tuple[dict[int, bytes], list[IfAddress], list[str]]:
    """Interface names by index (RTM_GETLINK) and every address (RTM_GETADDR,
    AF_UNSPEC: both families in one request), on one socket from ``open_socket``
    that is always closed.  ``timeout`` bounds each attempt; a dump the kernel
    marks interrupted is asked again, up to ``attempts`` times.  Returns (names,
    addresses, problems); raises :class:`DumpError` or OSError otherwise."""
    for _ in range(attempts - 1):
        try:
            return _dump_once(open_socket, clock() + timeout, clock)
        except DumpInterrupted:
            continue
    return _dump_once(open_socket, clock() + timeout, clock)


def open_dump_socket() -> socket.socket:
    """An unbound NETLINK_ROUTE socket for requests (the kernel assigns the port)."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
