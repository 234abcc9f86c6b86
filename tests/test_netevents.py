"""Network change events: the rtnetlink and routing-socket classifiers, the shared netlink
walker and the RTM_GETADDR dump decoder, coalescing, the poll interface, and live rtnetlink
runs inside a network namespace.

Netlink datagrams are built here with struct from the UAPI layouts (include/uapi/linux/
netlink.h, rtnetlink.h, if_addr.h, if_link.h); the FreeBSD classifier is fed
tests/fixtures/routesock/ (built by build.py there, from the FreeBSD headers).  The live tests
need root and iproute2's ``ip netns``: without them they fail, they never skip.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from support.nschild import NamespaceChild, run
from xenguest_agent.netevents import NET, RESYNC, Coalescer, NetworkEvents, select_event_source
from xenguest_agent.netevents import routesock as rs
from xenguest_agent.netevents import rtnetlink as rt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "routesock"


# --- building netlink datagrams ------------------------------------------------------------

def align4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def rtattr(kind: int, payload: bytes) -> bytes:
    return align4(struct.pack("=HH", 4 + len(payload), kind) + payload)


def nlmsg(mtype: int, payload: bytes, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    return align4(struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, pid) + payload)


def ifinfomsg(index: int, *attrs: bytes, flags: int = 0x1) -> bytes:
    return struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF) + b"".join(attrs)


def ifaddrmsg(family: int, prefix: int, index: int, *attrs: bytes, flags: int = 0) -> bytes:
    return struct.pack("=BBBBI", family, prefix, flags, 0, index) + b"".join(attrs)


V4 = socket.inet_aton
AF_INET, AF_INET6 = 2, 10
IFA_LABEL = 3


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def newaddr_v4(index: int, local: str, peer: Optional[str] = None, label: str = "",
               seq: int = 0, flags: int = 0) -> bytes:
    attrs = [rtattr(rt.IFA_ADDRESS, V4(peer or local)), rtattr(rt.IFA_LOCAL, V4(local))]
    if label:
        attrs.append(rtattr(IFA_LABEL, label.encode() + b"\0"))
    return nlmsg(rt.RTM_NEWADDR, ifaddrmsg(AF_INET, 24, index, *attrs), flags=flags, seq=seq)


def newlink(index: int, name: bytes, seq: int = 0, flags: int = 0) -> bytes:
    return nlmsg(rt.RTM_NEWLINK, ifinfomsg(index, rtattr(rt.IFLA_IFNAME, name + b"\0")),
                 flags=flags, seq=seq)


def classify(data: bytes) -> Tuple[Optional[str], List[str]]:
    problems: List[str] = []
    return rt.classify(data, problems), problems


# --- rtnetlink: what a multicast datagram means --------------------------------------------

def test_rtnetlink_link_and_address_messages_mean_net() -> None:
    for mtype in (rt.RTM_NEWLINK, rt.RTM_DELLINK):
        assert classify(nlmsg(mtype, ifinfomsg(7))) == (NET, [])
    for mtype in (rt.RTM_NEWADDR, rt.RTM_DELADDR):
        assert classify(nlmsg(mtype, ifaddrmsg(AF_INET6, 64, 3))) == (NET, [])


def test_rtnetlink_overrun_means_resync_and_other_types_nothing() -> None:
    route = nlmsg(24, b"\0" * 12)  # RTM_NEWROUTE: not subscribed, ignored
    assert classify(route) == (None, [])
    assert classify(nlmsg(rt.NLMSG_NOOP, b"")) == (None, [])
    assert classify(newaddr_v4(1, "10.0.0.1") + nlmsg(rt.NLMSG_OVERRUN, b""))[0] == RESYNC


def test_rtnetlink_damage_is_described() -> None:
    first, second = newaddr_v4(1, "10.1.0.1"), newaddr_v4(1, "10.1.0.2")
    for cut in range(1, len(second)):
        kind, problems = classify(first + second[:cut])
        assert kind == NET and problems, cut  # what came before still counts
    for length in (0, 1, 15):  # zero and short lengths cannot loop
        assert classify(struct.pack("=IHHII", length, 16, 0, 0, 0))[1]
    kind, problems = classify(nlmsg(rt.RTM_NEWLINK, b"\0" * 8))  # shorter than ifinfomsg
    assert kind is None and "8-byte body" in problems[0]


def test_classifiers_never_raise_on_garbage() -> None:
    rng = random.Random(4)
    valid_linux = newaddr_v4(2, "10.3.0.1", label="eth0") + newlink(2, b"eth0")
    valid_bsd = (FIXTURES / "sequence.bin").read_bytes()
    for _ in range(3000):
        for parse, valid in ((rt.classify, valid_linux), (rs.classify, valid_bsd)):
            if rng.random() < 0.3:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 96)))
            else:
                buf = bytearray(valid[:rng.randrange(0, len(valid) + 1)])
                for _ in range(rng.randrange(1, 6)):
                    if buf:
                        buf[rng.randrange(len(buf))] = rng.getrandbits(8)
                data = bytes(buf)
            assert parse(data, []) in (None, NET, RESYNC)


# --- the shared walker and the dump decoders ------------------------------------------------

def decode(data: bytes) -> Optional[rt.IfAddress]:
    problems: List[str] = []
    (message,) = list(rt.messages(data, problems))
    return rt.decode_address(message.body, problems)


def test_address_prefers_ifa_local_and_ignores_the_label() -> None:
    # point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL the local address
    # (net/ipv4/devinet.c inet_fill_ifaddr); the label names no interface
    got = decode(newaddr_v4(2, "10.0.0.1", peer="10.0.0.2", label="eth0:1"))
    assert got == rt.IfAddress(2, 4, V4("10.0.0.1"), 0)


def test_ipv6_address_only_and_ipv6_peer() -> None:
    only = nlmsg(rt.RTM_NEWADDR, ifaddrmsg(AF_INET6, 64, 3, rtattr(rt.IFA_ADDRESS, v6("2001:db8::7"))))
    assert decode(only) == rt.IfAddress(3, 6, v6("2001:db8::7"), 0)
    # net/ipv6/addrconf.c inet6_fill_ifaddr: with a peer, IFA_LOCAL is ours, IFA_ADDRESS the peer
    peer = nlmsg(rt.RTM_NEWADDR, ifaddrmsg(AF_INET6, 128, 3, rtattr(rt.IFA_LOCAL, v6("2001:db8::1")),
                                           rtattr(rt.IFA_ADDRESS, v6("2001:db8::2"))))
    assert decode(peer) == rt.IfAddress(3, 6, v6("2001:db8::1"), 0)


def test_ifa_flags_attribute_overrides_the_byte() -> None:
    # IFA_FLAGS (u32) carries flags that do not fit ifa_flags (include/uapi/linux/if_addr.h)
    body = ifaddrmsg(AF_INET6, 64, 3, rtattr(rt.IFA_ADDRESS, v6("2001:db8::9")),
                     rtattr(rt.IFA_FLAGS, struct.pack("=I", 0x840)), flags=0x00)
    assert decode(nlmsg(rt.RTM_NEWADDR, body)) == rt.IfAddress(3, 6, v6("2001:db8::9"), 0x840)


@pytest.mark.parametrize("flags, usable", [
    (0x00, True),
    (0x80, True),                 # IFA_F_PERMANENT
    (0x20, True),                 # IFA_F_DEPRECATED: still assigned, still answers
    (0x40, False),                # IFA_F_TENTATIVE: DAD running, not yet assigned
    (0x40 | 0x04, True),          # tentative but IFA_F_OPTIMISTIC (RFC 4429): usable
    (0x40 | 0x08, False),         # IFA_F_DADFAILED: a duplicate of another host's address
    (0x08, False),
])
def test_tentative_and_dadfailed_addresses_are_not_reported(flags: int, usable: bool) -> None:
    # net/ipv6/addrconf.c __ipv6_dev_get_saddr skips tentative, non-optimistic addresses;
    # addrconf_dad_failure marks IFA_F_DADFAILED (values: include/uapi/linux/if_addr.h)
    assert rt.IfAddress(1, 6, v6("2001:db8::1"), flags).usable() is usable


def test_link_names_are_bytes_with_nested_flag_bits_masked() -> None:
    problems: List[str] = []
    name = struct.pack("=HH", 4 + 4, rt.IFLA_IFNAME | 0x8000) + b"n\xff\xfe\0"  # NLA_F_NESTED set
    (message,) = list(rt.messages(nlmsg(rt.RTM_NEWLINK, ifinfomsg(5, name)), problems))
    assert rt.decode_link(message.body, problems) == (5, b"n\xff\xfe") and problems == []


def test_attribute_overrunning_its_message() -> None:
    bad = struct.pack("=HH", 40, rt.IFA_LOCAL) + V4("10.2.0.1")  # claims 40 bytes
    problems: List[str] = []
    (message,) = list(rt.messages(nlmsg(rt.RTM_NEWADDR, ifaddrmsg(AF_INET, 24, 4, bad)), problems))
    assert rt.decode_address(message.body, problems) is None
    assert "overruns" in problems[0]


# --- the dump, with a fake socket at the seam ------------------------------------------------

class DumpSocket:
    """Answers RTM_GETLINK/RTM_GETADDR requests with scripted datagrams (one list per request)."""

    def __init__(self, replies: List[List[bytes]], truncate: bool = False) -> None:
        self.replies = replies
        self.pending: List[bytes] = []
        self.sent: List[Tuple[int, int, int]] = []
        self.timeouts: List[Optional[float]] = []
        self.truncate = truncate
        self.closed = False

    def __enter__(self) -> "DumpSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def sendto(self, data: bytes, address: object) -> int:
        _length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        self.sent.append((mtype, flags, seq))
        self.pending = self.replies.pop(0) if self.replies else []
        return len(data)

    def settimeout(self, value: Optional[float]) -> None:
        self.timeouts.append(value)

    def recvmsg(self, size: int) -> Tuple[bytes, list, int, object]:
        if not self.pending:
            raise socket.timeout("timed out")
        return self.pending.pop(0), [], socket.MSG_TRUNC if self.truncate else 0, (0, 0)


def dump_script(intr: bool = False) -> List[List[bytes]]:
    multi = rt.NLM_F_MULTI | (rt.NLM_F_DUMP_INTR if intr else 0)
    links = [newlink(1, b"lo", 1, multi) + newlink(2, b"eth0", 1, multi),
             nlmsg(rt.NLMSG_DONE, struct.pack("=i", 0), multi, seq=1)]
    addrs = [newaddr_v4(2, "192.0.2.4", seq=2, flags=multi)
             + newaddr_v4(2, "192.0.2.99", seq=7, flags=multi)  # another request's: ignored
             + nlmsg(rt.NLMSG_DONE, struct.pack("=i", 0), multi, seq=2)]
    return [links, addrs]


def test_dump_asks_links_then_addresses_with_deadlines_and_closes() -> None:
    fake = DumpSocket(dump_script())
    names, found, problems = rt.dump_addresses(lambda: fake, timeout=2.0)  # type: ignore[arg-type,return-value]
    assert names == {1: b"lo", 2: b"eth0"} and problems == []
    assert found == [rt.IfAddress(2, 4, V4("192.0.2.4"), 0)]
    request = rt.NLM_F_REQUEST | rt.NLM_F_DUMP
    assert fake.sent == [(rt.RTM_GETLINK, request, 1), (rt.RTM_GETADDR, request, 2)]
    assert fake.timeouts and all(t is not None and 0 < t <= 2.0 for t in fake.timeouts)
    assert fake.closed


def test_interrupted_dump_is_asked_again() -> None:
    sockets = [DumpSocket(dump_script(intr=True)), DumpSocket(dump_script())]
    names, found, _ = rt.dump_addresses(lambda: sockets.pop(0), timeout=2.0)  # type: ignore[arg-type,return-value]
    assert names[2] == b"eth0" and len(found) == 1 and sockets == []
    always = [DumpSocket(dump_script(intr=True)) for _ in range(3)]
    with pytest.raises(rt.DumpInterrupted):
        rt.dump_addresses(lambda: always.pop(0), timeout=2.0, attempts=3)  # type: ignore[arg-type,return-value]


def test_dump_failures_raise_and_close() -> None:
    refused = DumpSocket([[nlmsg(rt.NLMSG_ERROR, struct.pack("=i", -errno.EPERM), seq=1)]])
    with pytest.raises(rt.DumpError, match="EPERM"):
        rt.dump_addresses(lambda: refused)  # type: ignore[arg-type,return-value]
    silent = DumpSocket([[]])
    with pytest.raises(rt.DumpError, match="deadline"):
        rt.dump_addresses(lambda: silent)  # type: ignore[arg-type,return-value]
    cut = DumpSocket(dump_script(), truncate=True)
    with pytest.raises(rt.DumpError, match="longer"):
        rt.dump_addresses(lambda: cut)  # type: ignore[arg-type,return-value]
    assert refused.closed and silent.closed and cut.closed


# --- FreeBSD: the routing socket ------------------------------------------------------------

def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_routesock_fixtures_match_their_builder() -> None:
    spec = importlib.util.spec_from_file_location("routesock_build", FIXTURES / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    built = build.fixtures()
    assert sorted(built) == sorted(p.name for p in FIXTURES.glob("*.bin"))
    for name, data in built.items():
        assert fixture(name) == data, f"{name} differs from build.py; regenerate it"


@pytest.mark.parametrize("name, expected", [
    ("newaddr_inet.bin", NET), ("deladdr_inet6.bin", NET), ("newaddr_inet6_linklocal.bin", NET),
    ("ifinfo_up.bin", NET), ("ifannounce_arrival.bin", NET), ("ifannounce_departure.bin", NET),
    ("sequence.bin", NET),
    ("route_add.bin", None),  # a route message: skipped by its length
])
def test_routesock_messages(name: str, expected: Optional[str]) -> None:
    problems: List[str] = []
    assert rs.classify(fixture(name), problems) == expected
    assert problems == []


def test_routesock_header_sizes_follow_the_c_layouts() -> None:
    msglen, version, mtype = struct.unpack_from("<HBB", fixture("newaddr_inet.bin"))
    assert (msglen, version, mtype) == (len(fixture("newaddr_inet.bin")), 5, rs.RTM_NEWADDR)
    assert len(fixture("ifinfo_up.bin")) == rs.IF_MSGHDR_SIZE == 168
    assert len(fixture("ifannounce_arrival.bin")) == rs.IF_ANNOUNCEMSGHDR_SIZE == 24


def test_routesock_damage() -> None:
    problems: List[str] = []
    assert rs.classify(fixture("truncated.bin"), problems) is None
    assert "does not fit" in problems[0]
    short = bytearray(fixture("ifannounce_arrival.bin")[:20])
    struct.pack_into("<H", short, 0, 20)  # a 20-byte RTM_IFANNOUNCE: its header needs 24
    problems = []
    assert rs.classify(bytes(short), problems) is None and "needs 24" in problems[0]
    other = bytearray(fixture("ifannounce_arrival.bin"))
    other[2] = 4
    problems = []
    assert rs.classify(bytes(other) + fixture("route_add.bin"), problems) is None
    assert "version 4" in problems[0]


class RouteSocket:
    """A stand-in for FreeBSD's PF_ROUTE socket: records options, replays receive results."""

    def __init__(self, family: int, kind: int, proto: int) -> None:
        self.args = (family, kind, proto)
        self.options: List[Tuple[int, int, int]] = []
        self.results: List[object] = []
        self.refuse: Optional[int] = None
        self.closed = False

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.refuse is not None:
            raise OSError(self.refuse, os.strerror(self.refuse))
        self.options.append((level, option, value))

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1 if self.closed else 1000

    def recvfrom(self, size: int) -> Tuple[bytes, object]:
        if not self.results:
            raise BlockingIOError(errno.EAGAIN, "would block")
        result = self.results.pop(0)
        if isinstance(result, int):
            raise OSError(result, os.strerror(result))
        assert isinstance(result, bytes)
        return result, None

    def close(self) -> None:
        self.closed = True


def test_routing_socket_asks_for_so_rerror_and_enobufs_means_resync() -> None:
    # sys/sys/socket.h: SOL_SOCKET 0xffff, SO_RERROR 0x00020000; with it an overflow is
    # returned as ENOBUFS by the next receive (sys/kern/uipc_socket.c soreceive_generic)
    made: List[RouteSocket] = []

    def factory(family: int, kind: int, proto: int) -> RouteSocket:
        made.append(RouteSocket(family, kind, proto))
        return made[-1]

    source = rs.RouteSocketSource(platform="freebsd14", factory=factory)  # type: ignore[arg-type]
    events = NetworkEvents(source, window=0.05)
    assert events.open()
    (sock,) = made
    assert sock.args[1:] == (socket.SOCK_RAW, 0)
    assert sock.options == [(0xFFFF, 0x00020000, 1)]
    sock.results = [errno.ENOBUFS, fixture("newaddr_inet.bin")]
    assert events.read_ready(10.0) is None and events.deadline() == pytest.approx(10.05)
    assert events.read_ready(10.05) == RESYNC
    sock.results = [fixture("ifinfo_up.bin")]  # still reading after the overflow
    assert events.read_ready(11.0) is None and events.read_ready(11.05) == NET
    events.close()
    assert sock.closed and events.fileno() == -1


def test_routing_socket_without_so_rerror_still_works(caplog: pytest.LogCaptureFixture) -> None:
    made: List[RouteSocket] = []

    def factory(family: int, kind: int, proto: int) -> RouteSocket:
        made.append(RouteSocket(family, kind, proto))
        made[-1].refuse = errno.ENOPROTOOPT
        return made[-1]

    source = rs.RouteSocketSource(platform="freebsd13", factory=factory)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        assert NetworkEvents(source).open()
    assert any("SO_RERROR" in r.getMessage() for r in caplog.records)


# --- sources --------------------------------------------------------------------------------

def test_select_event_source() -> None:
    assert isinstance(select_event_source("Linux"), rt.RtnetlinkSource)
    assert isinstance(select_event_source("linux"), rt.RtnetlinkSource)
    assert isinstance(select_event_source("FreeBSD"), rs.RouteSocketSource)
    assert isinstance(select_event_source("freebsd14"), rs.RouteSocketSource)
    assert select_event_source("Darwin") is None
    assert select_event_source("sunos5") is None


def test_routing_socket_is_unavailable_on_linux() -> None:
    source = rs.RouteSocketSource(platform="linux")
    assert not source.available()
    with pytest.raises(OSError):
        source.open()
    assert NetworkEvents(source).open() is False
    assert rs.RouteSocketSource(platform="freebsd14").available()


def test_no_source_means_polling() -> None:
    watcher = NetworkEvents(os_name="sunos5")
    assert watcher.source is None and watcher.name == "none"
    assert watcher.open() is False and watcher.fileno() == -1
    assert watcher.read_ready(0.0) is None and watcher.deadline() is None
    watcher.close()


def test_import_has_no_side_effects() -> None:
    code = ("import threading, gc, socket, sys\n"
            "import xenguest_agent.netevents\n"
            "assert threading.active_count() == 1\n"
            "assert not [o for o in gc.get_objects() if isinstance(o, socket.socket)]\n"
            "assert 'xenguest_agent.netevents.routesock' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- coalescing ---------------------------------------------------------------------------

def test_coalescer_merges_a_burst_into_one() -> None:
    c = Coalescer(0.05)
    assert c.deadline() is None and c.due(0.0) is None
    for i in range(20):
        c.add(NET, 10.0 + i * 0.001)
    assert c.due(10.049) is None
    assert c.deadline() == pytest.approx(10.05)
    assert c.due(10.05) == NET
    assert c.due(10.06) is None and c.deadline() is None


def test_coalescer_window_is_fixed_not_extended() -> None:
    c = Coalescer(0.05)
    fired = []
    for step in range(100):  # a steady stream every 10 ms for a second
        now = step * 0.01
        c.add(NET, now)
        if c.due(now):
            fired.append(now)
    assert 15 <= len(fired) <= 20  # bounded delay: one per window, not starved


def test_coalescer_resync_wins() -> None:
    c = Coalescer(0.05)
    c.add(NET, 0.0)
    c.add(RESYNC, 0.01)
    c.add(NET, 0.02)
    assert c.due(0.05) == RESYNC
    c.add(RESYNC, 1.0)
    c.add(NET, 1.01)
    assert c.due(1.05) == RESYNC


def test_coalescer_zero_window_and_validation() -> None:
    c = Coalescer(0.0)
    c.add(NET, 5.0)
    assert c.deadline() == 5.0 and c.due(5.0) == NET
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            Coalescer(bad)


# --- the poll interface with a fake source ------------------------------------------------

class FlakySocket(socket.socket):
    """A datagram socket whose recvfrom raises queued errors first."""

    errors: List[int]

    def recvfrom(self, size: int, flags: int = 0) -> Tuple[bytes, object]:  # type: ignore[override]
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return super().recvfrom(size, flags)


class FakeSource:
    """Datagrams written to ``feed`` arrive as kernel messages: b"net", b"bad", b"boom",
    anything else is of no interest."""

    name = "fake"

    def __init__(self) -> None:
        self.feed: Optional[socket.socket] = None
        self.sock: Optional[FlakySocket] = None
        self.refuse = False

    def available(self) -> bool:
        return True

    def open(self) -> socket.socket:
        if self.refuse:
            raise OSError(errno.EPERM, "not allowed")
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.feed is not None:  # a restart: the previous pair's reader end is the watcher's
            self.feed.close()
        self.feed = a
        self.sock = FlakySocket(socket.AF_UNIX, socket.SOCK_DGRAM, 0, fileno=b.detach())
        self.sock.errors = []
        return self.sock

    def classify(self, data: bytes, problems: List[str]) -> Optional[str]:
        if data == b"bad":
            problems.append("bad datagram")
            return None
        if data == b"boom":
            raise RuntimeError("parser bug")
        return NET if data == b"net" else None

    def from_kernel(self, address: object) -> bool:
        return True


@pytest.fixture
def fake() -> Iterator[Tuple[NetworkEvents, FakeSource]]:
    source = FakeSource()
    events = NetworkEvents(source, window=0.05)
    assert events.open()
    assert source.feed is not None
    yield events, source
    events.close()
    source.feed.close()


def readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def test_poll_interface_coalesces_a_burst(fake: Tuple[NetworkEvents, FakeSource]) -> None:
    events, source = fake
    assert source.feed is not None
    assert not readable(events.fileno()) and events.deadline() is None
    for _ in range(20):
        source.feed.send(b"net")
    assert readable(events.fileno())
    assert events.read_ready(100.0) is None          # drained, window opened at 100.0
    assert not readable(events.fileno())
    assert events.deadline() == pytest.approx(100.05)
    assert events.read_ready(100.04) is None         # the loop woke early: nothing due
    assert events.read_ready(100.05) == NET          # the deadline: one notification
    assert events.deadline() is None and events.read_ready(101.0) is None
    source.feed.send(b"noise")
    assert events.read_ready(102.0) is None and events.deadline() is None


def test_poll_interface_enobufs_is_resync(fake: Tuple[NetworkEvents, FakeSource]) -> None:
    events, source = fake
    assert source.sock is not None and source.feed is not None
    source.sock.errors.append(errno.ENOBUFS)
    source.feed.send(b"net")
    assert events.read_ready(1.0) is None and events.read_ready(1.05) == RESYNC
    source.feed.send(b"net")  # the socket keeps working after an overrun
    assert events.read_ready(2.0) is None and events.read_ready(2.05) == NET


def test_poll_interface_bad_input_is_resync_logged_once(
        fake: Tuple[NetworkEvents, FakeSource], caplog: pytest.LogCaptureFixture) -> None:
    events, source = fake
    assert source.feed is not None
    for data in (b"bad", b"boom", b"bad"):
        source.feed.send(data)
    assert events.read_ready(1.0) is None and events.read_ready(1.05) == RESYNC
    source.feed.send(b"bad")
    assert events.read_ready(2.0) is None and events.read_ready(2.05) == RESYNC
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1


def test_poll_interface_broken_socket_is_closed_with_resync(
        fake: Tuple[NetworkEvents, FakeSource]) -> None:
    events, source = fake
    assert source.sock is not None and source.feed is not None
    source.feed.send(b"net")
    assert events.read_ready(1.0) is None  # a window is open...
    source.sock.errors.append(errno.EIO)
    source.feed.send(b"net")
    assert events.read_ready(1.01) == RESYNC  # ...and the failure answers at once
    assert events.fileno() == -1 and source.sock.fileno() == -1
    assert events.deadline() is None and events.read_ready(5.0) is None


def test_poll_interface_drains_in_bounded_steps(fake: Tuple[NetworkEvents, FakeSource]) -> None:
    from xenguest_agent.netevents.source import DRAIN_LIMIT
    events, source = fake
    assert source.feed is not None
    for _ in range(DRAIN_LIMIT + 5):
        source.feed.send(b"noise")
    events.read_ready(1.0)
    assert readable(events.fileno())  # the rest waits for the next turn of the loop
    events.read_ready(1.0)
    assert not readable(events.fileno())


def test_open_reports_a_refused_socket() -> None:
    source = FakeSource()
    source.refuse = True
    assert NetworkEvents(source).open() is False


# --- live: rtnetlink in a network namespace, read by a poll loop -----------------------------

CHILD = """
import os, select, sys, time
from xenguest_agent.netevents import NetworkEvents
from xenguest_agent.netevents.rtnetlink import RtnetlinkSource
source = RtnetlinkSource(rcvbuf=int(sys.argv[2])) if len(sys.argv) > 2 else None
events = NetworkEvents(source, window=float(sys.argv[1]))
print("started", events.open(), events.name, flush=True)
poller = select.poll()
poller.register(events.fileno(), select.POLLIN)
poller.register(sys.stdin.fileno(), select.POLLIN)

def notify():
    kind = events.read_ready(time.monotonic())
    if kind is not None:
        print(kind, flush=True)

def sync():
    # everything the kernel queued before this request: drain it, let the open window
    # close (the coalescer's own deadline), then say so
    while True:
        fd = events.fileno()
        queued = fd >= 0 and bool(select.select([fd], [], [], 0)[0])
        deadline = events.deadline()
        if not queued and deadline is None:
            break
        if not queued:
            wait = max(0.0, deadline - time.monotonic())
            select.select([fd] if fd >= 0 else [], [], [], wait)
        notify()
    print("synced", flush=True)

while True:
    deadline = events.deadline()
    timeout = None if deadline is None else max(0, (deadline - time.monotonic()) * 1000)
    ready = [fd for fd, _ in poller.poll(timeout)]
    if sys.stdin.fileno() in ready:
        data = os.read(sys.stdin.fileno(), 1024)
        if not data:
            break
        for _ in range(data.count(b"\\n")):
            sync()
        continue
    notify()
events.close()
print("stopped", flush=True)
"""


class Child(NamespaceChild):
    """A poll loop over NetworkEvents inside the namespace, one stdout line per notification."""

    what = "the watcher"

    def __init__(self, ns: str, window: float, rcvbuf: Optional[int] = None) -> None:
        extra = [str(rcvbuf)] if rcvbuf is not None else []
        super().__init__(ns, CHILD, [str(window), *extra])

    def started(self) -> None:
        line = self.expect()
        if line != "started True rtnetlink":
            self.kill()
            assert self.proc.stderr is not None
            pytest.fail(f"the watcher did not start: {line} {self.proc.stderr.read()}", pytrace=False)

    def sync(self) -> List[str]:
        """The notifications for everything done before this call, and no later ones: the
        kernel queues rtnetlink messages before the request that caused them returns
        (rtnl_notify), so the child, asked on stdin, drains its socket, lets its window close
        and answers "synced" after them.  Replaces "until none arrives for a while"."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("sync\n")
        self.proc.stdin.flush()
        got = []
        while True:
            line = self.expect()
            if line == "synced":
                return got
            if line == "eof":
                pytest.fail(f"the watcher ended; it had sent {got}", pytrace=False)
            got.append(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.settle_until("stopped")
        assert self.proc.wait(timeout=20) == 0
        assert self.proc.stderr is not None
        assert "ResourceWarning" not in self.proc.stderr.read()

    def settle_until(self, word: str) -> bool:
        while True:
            line = self.expect()
            if line in (word, "eof"):
                return line == word


def notified(lines: List[str]) -> bool:
    """At least one notification, each a plain "something changed"."""
    return bool(lines) and set(lines) == {NET}


class Stopped:
    """The watcher stopped (SIGSTOP) while the block runs: whatever the kernel sends meanwhile
    is queued before the watcher reads any of it.  'ip netns exec' execs the command, so the
    child's pid is the Python watcher's."""

    def __init__(self, child: Child) -> None:
        self.pid = child.proc.pid

    def __enter__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def test_live_rtnetlink_in_a_namespace(netns: str) -> None:
    child = Child(netns, window=0.05)
    try:
        child.started()
        ns = ["ip", "-n", netns]
        run(*ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        assert notified(child.sync()), "no notification for a new veth pair"
        for i in range(1, 6):
            run(*ns, "addr", "add", f"10.77.0.{i}/24", "dev", "v0")
            assert notified(child.sync()), "no notification for an added address"
        run(*ns, "link", "set", "v0", "up")
        assert notified(child.sync()), "no notification for a link going up"
        # a burst the watcher finds queued all at once: one window, one notification (how
        # messages spread over time are merged is the Coalescer tests' business, on a fake clock)
        batch = "".join(f"addr add 10.77.1.{i}/24 dev v0\n" for i in range(1, 21))
        with Stopped(child):
            subprocess.run([*ns, "-batch", "-"], input=batch, text=True, check=True, timeout=30)
        assert child.sync() == [NET], "a burst of 20 changes must be coalesced into one"
        run(*ns, "addr", "del", "10.77.0.1/24", "dev", "v0")
        assert notified(child.sync()), "no notification for a removed address"
        run(*ns, "link", "del", "v0")
        assert notified(child.sync()), "no notification for a removed link"
        child.close()
    finally:
        child.kill()


def test_live_rtnetlink_without_window(netns: str) -> None:
    child = Child(netns, window=0.0)
    try:
        child.started()
        run("ip", "-n", netns, "link", "add", "w0", "type", "veth", "peer", "name", "w1")
        assert notified(child.sync())
        for i in range(1, 6):
            run("ip", "-n", netns, "addr", "add", f"10.78.0.{i}/24", "dev", "w0")
            assert notified(child.sync())
        child.close()
    finally:
        child.kill()


def test_live_rtnetlink_overrun_asks_for_resync(netns: str) -> None:
    """A stopped reader with a tiny receive buffer misses messages: ENOBUFS -> "resync"."""
    child = Child(netns, window=0.05, rcvbuf=1024)
    try:
        child.started()
        batch = "".join(f"addr add 10.79.{i // 250}.{i % 250 + 1}/16 dev lo\n" for i in range(300))
        with Stopped(child):
            subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True,
                           timeout=30)
        assert RESYNC in child.sync()
        run("ip", "-n", netns, "addr", "add", "10.80.0.1/24", "dev", "lo")
        assert notified(child.sync())  # still listening after the overrun
        child.close()
    finally:
        child.kill()
