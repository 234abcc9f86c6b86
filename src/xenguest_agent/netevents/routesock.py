"""FreeBSD: the routing socket, reduced to "an interface or address changed".

Every routing-socket message starts with {u_short msglen; u_char version;
u_char type} (sys/net/route.h); RTM_VERSION is 5.  Only the types matter to the
agent; the sizes of their fixed headers (amd64, FreeBSD 13 and 14: sys/net/route.h,
sys/net/if.h) are checked so a damaged message asks for a full re-collect:

  struct ifa_msghdr (RTM_NEWADDR 0xc, RTM_DELADDR 0xd): 20 bytes;
  struct if_msghdr (RTM_IFINFO 0xe): 16 bytes + struct if_data (152, fixed-size
    since FreeBSD 11) = 168 bytes;
  struct if_announcemsghdr (RTM_IFANNOUNCE 0x11): 24 bytes.

Route messages (RTM_ADD...) and other types are skipped by their length.  The
addresses that follow the headers are not decoded: what changed is re-read.

Lost messages: a full receive buffer drops messages silently unless the socket
has ``SO_RERROR`` (sys/sys/socket.h: 0x00020000 at level SOL_SOCKET 0xffff;
FreeBSD commit 7045b1603bdf, review D26652, on main since late 2020, so in
stable/13 and 14).  With it, a failed append to the receive buffer calls
soroverflow() (sys/kern/uipc_socket.c), which records ENOBUFS; the next receive
returns it once and the reader turns it into RESYNC, as ENOBUFS on rtnetlink.
A kernel without the option refuses it (ENOPROTOOPT): logged, and the socket
is used anyway (the safety sweep covers what it may lose).
"""

from __future__ import annotations

import errno
import socket
import struct
import sys

from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

NET = "net"

log = get_logger(__name__)

PF_ROUTE = 17  # sys/sys/socket.h: PF_ROUTE == AF_ROUTE == 17
RTM_VERSION = 5
RTM_NEWADDR = 0xC
RTM_DELADDR = 0xD
RTM_IFINFO = 0xE
RTM_IFANNOUNCE = 0x11

#: sys/sys/socket.h (FreeBSD's values, not the build host's)
FREEBSD_SOL_SOCKET = 0xFFFF
SO_RERROR = 0x00020000

RT_HEADER = struct.Struct("=HBB")
IFA_MSGHDR_SIZE = 20
IF_MSGHDR_SIZE = 16 + 152
IF_ANNOUNCEMSGHDR_SIZE = 24

#: the smallest valid message of each type the agent reacts to
MINIMUM = {RTM_NEWADDR: IFA_MSGHDR_SIZE, RTM_DELADDR: IFA_MSGHDR_SIZE,
           RTM_IFINFO: IF_MSGHDR_SIZE, RTM_IFANNOUNCE: IF_ANNOUNCEMSGHDR_SIZE}


def classify(data: bytes, problems: list[str]) -> str | None:
    """NET when one of the messages in ``data`` (one datagram, or a sysctl-style
    concatenation) says an interface or an address changed; None otherwise.
    Damage (a length that does not fit, a header too short for its type, another
    RTM_VERSION) is described in ``problems``; never raises."""
    verdict: str | None = None
    buf = memoryview(data)
    offset = 0
    while offset < len(buf):
        if offset + RT_HEADER.size > len(buf):
            problems.append(f"{len(buf) - offset} trailing bytes at {offset}")
            break
        msglen, version, mtype = RT_HEADER.unpack_from(buf, offset)
        if msglen < RT_HEADER.size or offset + msglen > len(buf):
            problems.append(f"message at {offset}: msglen {msglen} does not fit "
                            f"the {len(buf)}-byte buffer")
            break
        if version != RTM_VERSION:
            problems.append(f"message at {offset}: version {version}, expected {RTM_VERSION}")
        elif mtype in MINIMUM:
            if msglen < MINIMUM[mtype]:
                problems.append(f"message type {mtype:#x} at {offset}: {msglen} bytes, "
                                f"its header needs {MINIMUM[mtype]}")
            else:
                verdict = NET
        offset += msglen
    return verdict


class RouteSocketSource:
    """FreeBSD: ``socket(PF_ROUTE, SOCK_RAW, 0)``, all address families, with
    ``SO_RERROR`` so an overflow is reported instead of ignored.

    Unavailable anywhere else (Linux defines ``socket.AF_ROUTE`` as an alias of
    AF_NETLINK, so the platform, not the constant, decides)."""

    name = "routing socket"

    def __init__(self, platform: str | None = None,
                 factory: Callable[[int, int, int], socket.socket] = socket.socket) -> None:
        self.platform = platform if platform is not None else sys.platform
        self.factory = factory

    def available(self) -> bool:
        return self.platform.startswith("freebsd")

    def open(self) -> socket.socket:
        if not self.available():
            raise OSError(errno.EAFNOSUPPORT, "the PF_ROUTE routing socket exists only on FreeBSD")
        sock = self.factory(getattr(socket, "AF_ROUTE", PF_ROUTE), socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(FREEBSD_SOL_SOCKET, SO_RERROR, 1)
        except OSError as exc:
            log.warning("the routing socket refused SO_RERROR (%s): lost messages go unnoticed "
                        "until the safety sweep", exc)
        return sock

    def classify(self, data: bytes, problems: list[str]) -> str | None:
        return classify(data, problems)

    def from_kernel(self, address: object) -> bool:
        return True  # every routing-socket message is the kernel's report
