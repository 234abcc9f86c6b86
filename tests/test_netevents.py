"""Network change events: rtnetlink and routing-socket parsers, coalescing, the reader thread,
and a live rtnetlink run inside a network namespace.

The Linux parser is fed datagrams built here with struct from the UAPI layouts; the FreeBSD
parser is fed tests/fixtures/routesock/ (built by build.py there, from the FreeBSD headers).
The live test needs root and iproute2's ``ip netns``: without them it fails, it never skips.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import queue
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from xenguest_agent import netevents as ne
from xenguest_agent.netevents import (
    DELADDR, DELLINK, ERROR, NET, NEWADDR, NEWLINK, OVERRUN, RESYNC, Coalescer, NetEvent,
    NetworkEvents, RouteSocketSource, RtnetlinkSource, parse_route_messages, parse_rtnetlink,
    select_event_source,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "routesock"


# --- building netlink datagrams (include/uapi/linux/netlink.h, rtnetlink.h, if_addr.h) ----

def align4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def rtattr(kind: int, payload: bytes) -> bytes:
    return align4(struct.pack("=HH", 4 + len(payload), kind) + payload)


def nlmsg(mtype: int, payload: bytes, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    return align4(struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, pid) + payload)


def ifinfomsg(index: int, *attrs: bytes, flags: int = 0x1) -> bytes:
    return struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF) + b"".join(attrs)


def ifaddrmsg(family: int, prefix: int, index: int, *attrs: bytes) -> bytes:
    return struct.pack("=BBBBI", family, prefix, 0, 0, index) + b"".join(attrs)


V4 = socket.inet_aton
AF_INET, AF_INET6 = 2, 10


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def newaddr_v4(index: int, local: str, peer: Optional[str] = None, label: str = "") -> bytes:
    attrs = [rtattr(ne.IFA_ADDRESS, V4(peer or local)), rtattr(ne.IFA_LOCAL, V4(local))]
    if label:
        attrs.append(rtattr(3, label.encode() + b"\0"))  # IFA_LABEL
    return nlmsg(ne.RTM_NEWADDR, ifaddrmsg(AF_INET, 24, index, *attrs))


# --- Linux parser --------------------------------------------------------------------------

def test_rtnetlink_newaddr_ipv4_prefers_ifa_local() -> None:
    data = newaddr_v4(2, "10.0.0.1", peer="10.0.0.2", label="eth0")
    assert parse_rtnetlink(data) == [NetEvent(NEWADDR, 2, None, "10.0.0.1", "inet")]


def test_rtnetlink_deladdr_ipv6_address_only() -> None:
    data = nlmsg(ne.RTM_DELADDR, ifaddrmsg(AF_INET6, 64, 3,
                                           rtattr(ne.IFA_ADDRESS, v6("2001:db8::7"))))
    assert parse_rtnetlink(data) == [NetEvent(DELADDR, 3, None, "2001:db8::7", "inet6")]


def test_rtnetlink_links_with_unaligned_attributes() -> None:
    mac = rtattr(1, bytes.fromhex("020000000001"))        # IFLA_ADDRESS: 10 bytes -> 12
    name = rtattr(ne.IFLA_IFNAME, b"veth0\0")             # 10 bytes -> 12
    mtu = rtattr(4, struct.pack("=I", 1500))               # IFLA_MTU
    new = nlmsg(ne.RTM_NEWLINK, ifinfomsg(7, mac, name, mtu))
    gone = nlmsg(ne.RTM_DELLINK, ifinfomsg(7, rtattr(ne.IFLA_IFNAME, b"veth0\0")))
    assert parse_rtnetlink(new + gone) == [NetEvent(NEWLINK, 7, "veth0"), NetEvent(DELLINK, 7, "veth0")]


def test_rtnetlink_nested_flag_bits_are_masked() -> None:
    name = struct.pack("=HH", 4 + 4, ne.IFLA_IFNAME | 0x8000) + b"lo0\0"  # NLA_F_NESTED set
    assert parse_rtnetlink(nlmsg(ne.RTM_NEWLINK, ifinfomsg(1, name)))[0].ifname == "lo0"


def test_rtnetlink_multipart_dump_ends_at_done() -> None:
    multi = ne.NLM_F_MULTI
    data = (nlmsg(ne.RTM_NEWLINK, ifinfomsg(1, rtattr(ne.IFLA_IFNAME, b"lo\0")), multi, seq=9)
            + nlmsg(ne.RTM_NEWLINK, ifinfomsg(2, rtattr(ne.IFLA_IFNAME, b"eth0\0")), multi, seq=9)
            + nlmsg(ne.NLMSG_NOOP, b"")
            + newaddr_v4(2, "192.0.2.4")
            + nlmsg(ne.NLMSG_DONE, struct.pack("=i", 0), multi, seq=9)
            + newaddr_v4(2, "192.0.2.99"))  # after DONE: not part of this dump
    problems: List[str] = []
    assert parse_rtnetlink(data, problems) == [
        NetEvent(NEWLINK, 1, "lo"), NetEvent(NEWLINK, 2, "eth0"),
        NetEvent(NEWADDR, 2, None, "192.0.2.4", "inet")]
    assert problems == []


def test_rtnetlink_error_and_ack() -> None:
    request = struct.pack("=IHHII", 20, 18, 0x5, 1, 0)  # the echoed request header
    failure = nlmsg(ne.NLMSG_ERROR, struct.pack("=i", -errno.ENODEV) + request)
    ack = nlmsg(ne.NLMSG_ERROR, struct.pack("=i", 0) + request)
    assert parse_rtnetlink(ack + failure) == [NetEvent(ERROR, error=errno.ENODEV)]


def test_rtnetlink_overrun_and_unknown_types() -> None:
    route = nlmsg(24, b"\0" * 12)  # RTM_NEWROUTE: not subscribed, ignored
    assert parse_rtnetlink(route + nlmsg(ne.NLMSG_OVERRUN, b"")) == [NetEvent(OVERRUN)]


def test_rtnetlink_truncated_datagram_keeps_what_came_before() -> None:
    first = newaddr_v4(1, "10.1.0.1")
    second = newaddr_v4(1, "10.1.0.2")
    for cut in range(1, len(second)):
        problems: List[str] = []
        assert parse_rtnetlink(first + second[:cut], problems) == [
            NetEvent(NEWADDR, 1, None, "10.1.0.1", "inet")]
        assert problems, cut


def test_rtnetlink_attribute_overrunning_its_message() -> None:
    bad_attr = struct.pack("=HH", 40, ne.IFA_LOCAL) + V4("10.2.0.1")  # claims 40 bytes
    data = nlmsg(ne.RTM_NEWADDR, ifaddrmsg(AF_INET, 24, 4, bad_attr))
    problems: List[str] = []
    assert parse_rtnetlink(data, problems) == [NetEvent(NEWADDR, 4, None, None, "inet")]
    assert "overruns" in problems[0]


def test_rtnetlink_zero_and_short_lengths_cannot_loop() -> None:
    for length in (0, 1, 15):
        problems: List[str] = []
        assert parse_rtnetlink(struct.pack("=IHHII", length, 16, 0, 0, 0), problems) == []
        assert problems


def test_rtnetlink_short_bodies() -> None:
    problems: List[str] = []
    data = nlmsg(ne.RTM_NEWLINK, b"\0" * 8) + nlmsg(ne.RTM_NEWADDR, b"\0" * 4) + nlmsg(ne.NLMSG_ERROR, b"")
    assert parse_rtnetlink(data, problems) == []
    assert len(problems) == 3


def test_parsers_never_raise_on_garbage() -> None:
    rng = random.Random(4)
    valid_linux = newaddr_v4(2, "10.3.0.1", label="eth0") + nlmsg(
        ne.RTM_NEWLINK, ifinfomsg(2, rtattr(ne.IFLA_IFNAME, b"eth0\0")))
    valid_bsd = (FIXTURES / "sequence.bin").read_bytes()
    for _ in range(3000):
        for parse, valid in ((parse_rtnetlink, valid_linux), (parse_route_messages, valid_bsd)):
            choice = rng.random()
            if choice < 0.3:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 96)))
            else:
                buf = bytearray(valid[:rng.randrange(0, len(valid) + 1)])
                for _ in range(rng.randrange(1, 6)):
                    if buf:
                        buf[rng.randrange(len(buf))] = rng.getrandbits(8)
                data = bytes(buf)
            events = parse(data, [])
            assert all(isinstance(event, NetEvent) for event in events)


# --- FreeBSD parser on the fixtures --------------------------------------------------------

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
    ("newaddr_inet.bin", NetEvent(NEWADDR, 1, "xn0", "192.0.2.10", "inet")),
    ("deladdr_inet6.bin", NetEvent(DELADDR, 1, "xn0", "2001:db8::5", "inet6")),
    ("newaddr_inet6_linklocal.bin", NetEvent(NEWADDR, 2, "xn1", "fe80::216:3eff:fe5a:b01", "inet6")),
    ("ifinfo_up.bin", NetEvent(NEWLINK, 1)),
    ("ifannounce_arrival.bin", NetEvent(NEWLINK, 3, "xn2")),
    ("ifannounce_departure.bin", NetEvent(DELLINK, 3, "xn2")),
])
def test_routesock_single_messages(name: str, expected: NetEvent) -> None:
    problems: List[str] = []
    assert parse_route_messages(fixture(name), problems, long_size=8) == [expected]
    assert problems == []


def test_routesock_header_sizes_follow_the_c_layouts() -> None:
    data = fixture("newaddr_inet.bin")
    msglen, version, mtype = struct.unpack_from("<HBB", data)
    assert (msglen, version, mtype) == (len(data), 5, ne.RTM_NEWADDR_BSD)
    assert ne.IFA_MSGHDR.size == 20 and ne.IF_ANNOUNCEMSGHDR.size == 24
    assert len(fixture("ifinfo_up.bin")) == ne.IF_MSGHDR.size + ne.IF_DATA_SIZE == 168
    assert [ne.sa_size(n, 8) for n in (0, 1, 8, 16, 28, 54)] == [8, 8, 8, 16, 32, 56]
    assert [ne.sa_size(n, 4) for n in (0, 16, 28, 54)] == [4, 16, 28, 56]


def test_routesock_route_messages_are_skipped() -> None:
    problems: List[str] = []
    assert parse_route_messages(fixture("route_add.bin"), problems, long_size=8) == []
    assert problems == []


def test_routesock_sequence() -> None:
    assert parse_route_messages(fixture("sequence.bin"), long_size=8) == [
        NetEvent(NEWLINK, 3, "xn2"),
        NetEvent(NEWLINK, 1),
        NetEvent(NEWADDR, 1, "xn0", "192.0.2.10", "inet"),
        NetEvent(DELADDR, 1, "xn0", "2001:db8::5", "inet6"),
        NetEvent(DELLINK, 3, "xn2"),
    ]


def test_routesock_truncated() -> None:
    problems: List[str] = []
    data = fixture("ifannounce_arrival.bin") + fixture("truncated.bin")
    assert parse_route_messages(data, problems, long_size=8) == [NetEvent(NEWLINK, 3, "xn2")]
    assert "does not fit" in problems[0]


def test_routesock_sockaddr_overrunning_its_message() -> None:
    data = bytearray(fixture("newaddr_inet.bin"))
    data[20 + 16 + 56] = 200  # the RTA_IFA sockaddr's sa_len
    problems: List[str] = []
    events = parse_route_messages(bytes(data), problems, long_size=8)
    assert events == [NetEvent(NEWADDR, 1, "xn0", None, None)]
    assert "overruns" in problems[0]


def test_routesock_other_version_is_skipped() -> None:
    data = bytearray(fixture("ifannounce_arrival.bin"))
    data[2] = 4
    problems: List[str] = []
    assert parse_route_messages(bytes(data) + fixture("ifannounce_departure.bin"), problems,
                                long_size=8) == [NetEvent(DELLINK, 3, "xn2")]
    assert "version 4" in problems[0]


# --- sources ------------------------------------------------------------------------------

def test_select_event_source() -> None:
    assert isinstance(select_event_source("Linux"), RtnetlinkSource)
    assert isinstance(select_event_source("linux"), RtnetlinkSource)
    assert isinstance(select_event_source("FreeBSD"), RouteSocketSource)
    assert isinstance(select_event_source("freebsd14"), RouteSocketSource)
    assert select_event_source("Darwin") is None
    assert select_event_source("sunos5") is None


def test_routing_socket_is_unavailable_on_linux() -> None:
    source = RouteSocketSource(platform="linux")
    assert not source.available()
    with pytest.raises(OSError):
        source.open()
    assert NetworkEvents(source).start(lambda kind: None) is False
    assert RouteSocketSource(platform="freebsd14").available()


def test_no_source_means_polling() -> None:
    watcher = NetworkEvents(os_name="sunos5")
    assert watcher.source is None and watcher.name == "none"
    assert watcher.start(lambda kind: None) is False
    watcher.stop()


def test_import_has_no_side_effects() -> None:
    code = ("import threading, gc, socket\n"
            "import xenguest_agent.netevents\n"
            "assert threading.active_count() == 1\n"
            "assert not [o for o in gc.get_objects() if isinstance(o, socket.socket)]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- coalescing ---------------------------------------------------------------------------

def test_coalescer_merges_a_burst_into_one() -> None:
    c = Coalescer(0.05)
    assert c.timeout(0.0) is None and c.due(0.0) is None
    for i in range(20):
        c.add(NET, 10.0 + i * 0.001)
    assert c.due(10.049) is None
    assert c.timeout(10.03) == pytest.approx(0.02)
    assert c.due(10.05) == NET
    assert c.due(10.06) is None and c.pending is None


def test_coalescer_window_is_fixed_not_extended() -> None:
    c = Coalescer(0.05)
    fired = []
    for step in range(100):  # a steady stream every 10 ms for a second
        now = step * 0.01
        c.add(NET, now)
        kind = c.due(now)
        if kind:
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
    assert c.timeout(5.0) == 0.0 and c.due(5.0) == NET
    with pytest.raises(ValueError):
        Coalescer(-1)


# --- the reader thread with a fake source -------------------------------------------------

class FlakySocket(socket.socket):
    """A datagram socket whose recvfrom raises queued errors first."""

    errors: List[int]

    def recvfrom(self, size: int, flags: int = 0) -> Tuple[bytes, object]:  # type: ignore[override]
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return super().recvfrom(size, flags)


class FakeSource:
    """Datagrams written to ``feed`` arrive as kernel messages: b"net", b"bad", b"noise"."""

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

    def parse(self, data: bytes, problems: Optional[List[str]] = None) -> List[NetEvent]:
        if data == b"bad" and problems is not None:
            problems.append("bad datagram")
            return []
        if data == b"boom":
            raise RuntimeError("parser bug")
        return [NetEvent(NEWADDR, 1)] if data == b"net" else [NetEvent("OTHER")]

    def from_kernel(self, address: object) -> bool:
        return True


class Recorder:
    def __init__(self) -> None:
        self.events: "queue.Queue[Tuple[str, float]]" = queue.Queue()

    def __call__(self, kind: str) -> None:
        self.events.put((kind, time.monotonic()))

    def collect(self, quiet: float = 0.3, limit: float = 3.0) -> List[str]:
        """Everything notified until nothing arrives for ``quiet`` seconds."""
        got: List[str] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                got.append(self.events.get(timeout=quiet)[0])
            except queue.Empty:
                break
        return got


@pytest.fixture
def fake() -> Iterator[Tuple[NetworkEvents, FakeSource, Recorder]]:
    source = FakeSource()
    watcher = NetworkEvents(source, window=0.05)
    recorder = Recorder()
    yield watcher, source, recorder
    watcher.stop()
    if source.feed is not None:
        source.feed.close()


def test_reader_coalesces_a_burst(fake: Tuple[NetworkEvents, FakeSource, Recorder]) -> None:
    watcher, source, recorder = fake
    assert watcher.start(recorder) is True and watcher.running
    assert source.feed is not None
    for _ in range(20):
        source.feed.send(b"net")
    assert recorder.collect() == [NET]
    assert watcher.messages == 20
    source.feed.send(b"noise")  # a message of no interest: no notification
    assert recorder.collect() == []


def test_reader_latency_is_the_window(fake: Tuple[NetworkEvents, FakeSource, Recorder]) -> None:
    watcher, source, recorder = fake
    watcher.start(recorder)
    assert source.feed is not None
    sent = time.monotonic()
    source.feed.send(b"net")
    kind, at = recorder.events.get(timeout=2)
    assert kind == NET and 0.045 <= at - sent < 0.5


def test_reader_reports_enobufs_as_resync(fake: Tuple[NetworkEvents, FakeSource, Recorder]) -> None:
    watcher, source, recorder = fake
    watcher.start(recorder)
    assert source.sock is not None and source.feed is not None
    source.sock.errors.append(errno.ENOBUFS)
    source.feed.send(b"net")
    assert recorder.collect() == [RESYNC]
    source.feed.send(b"net")  # the socket keeps working after an overrun
    assert recorder.collect() == [NET]


def test_reader_survives_bad_input_and_callback_errors(
        fake: Tuple[NetworkEvents, FakeSource, Recorder], caplog: pytest.LogCaptureFixture) -> None:
    watcher, source, recorder = fake
    calls: List[str] = []

    def notify(kind: str) -> None:
        calls.append(kind)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")
        recorder(kind)

    watcher.start(notify)
    assert source.feed is not None
    for data in (b"bad", b"boom", b"bad"):
        source.feed.send(data)
    time.sleep(0.3)
    assert calls == [RESYNC] and watcher.running
    source.feed.send(b"bad")
    assert recorder.collect() == [RESYNC]
    unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 1  # logged once


def test_reader_gives_up_on_a_broken_socket(fake: Tuple[NetworkEvents, FakeSource, Recorder]) -> None:
    watcher, source, recorder = fake
    watcher.start(recorder)
    assert source.sock is not None and source.feed is not None
    source.sock.errors.append(errno.EIO)
    source.feed.send(b"net")
    assert recorder.events.get(timeout=2)[0] == RESYNC
    deadline = time.monotonic() + 2
    while watcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watcher.running


def test_stop_is_prompt_and_idempotent(fake: Tuple[NetworkEvents, FakeSource, Recorder]) -> None:
    watcher, source, recorder = fake
    watcher.start(recorder)
    time.sleep(0.05)
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 0.5 and not watcher.running
    watcher.stop()
    assert watcher.start(recorder) is True  # restartable
    assert source.feed is not None
    source.feed.send(b"net")
    assert recorder.collect() == [NET]


def test_start_reports_a_refused_socket() -> None:
    source = FakeSource()
    source.refuse = True
    assert NetworkEvents(source).start(lambda kind: None) is False


def test_reader_does_not_spin_when_idle(fake: Tuple[NetworkEvents, FakeSource, Recorder]) -> None:
    watcher, source, recorder = fake
    watcher.start(recorder)
    cpu_before = time.process_time()  # every thread of this process
    time.sleep(0.5)
    assert time.process_time() - cpu_before < 0.05


# --- live: rtnetlink in a network namespace -----------------------------------------------

CHILD = """
import sys, time
from xenguest_agent.netevents import NetworkEvents, RtnetlinkSource
source = RtnetlinkSource(rcvbuf=int(sys.argv[2])) if len(sys.argv) > 2 else None
watcher = NetworkEvents(source, window=float(sys.argv[1]))
ok = watcher.start(lambda kind: print(kind, repr(time.monotonic()), flush=True))
print("started", ok, watcher.name.replace(" ", "-"), flush=True)
sys.stdin.read()
began = time.monotonic()
watcher.stop()
print("stopped", repr(time.monotonic() - began), flush=True)
"""


def run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed: {result.stderr.strip()}", pytrace=False)


class Child:
    """The watcher running inside the namespace, one stdout line per notification."""

    def __init__(self, ns: str, window: float, rcvbuf: Optional[int] = None) -> None:
        extra = [str(rcvbuf)] if rcvbuf is not None else []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, str(window), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[Tuple[str, str]]" = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            self.lines.put((word, rest))
        self.lines.put(("eof", ""))

    def expect(self, timeout: float = 5.0) -> Tuple[str, str]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line from the watcher within {timeout}s", pytrace=False)

    def started(self) -> None:
        """The first line must say the rtnetlink source is live."""
        word, rest = self.expect(20)
        if (word, rest) != ("started", "True rtnetlink"):
            self.kill()
            assert self.proc.stderr is not None
            pytest.fail(f"the watcher did not start: {word} {rest} {self.proc.stderr.read()}",
                        pytrace=False)

    def settle(self, quiet: float = 0.3) -> List[str]:
        got = []
        while True:
            try:
                got.append(self.lines.get(timeout=quiet)[0])
            except queue.Empty:
                return got

    def close(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        word, took = self.expect()
        assert word == "stopped", word
        assert self.proc.wait(timeout=5) == 0
        return float(took)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.reader.join(timeout=5)  # it ends at the child's EOF; then the pipes can be closed
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


def test_live_rtnetlink_in_a_namespace(netns: str) -> None:
    child = Child(netns, window=0.05)
    try:
        child.started()
        ns = ["ip", "-n", netns]

        run(*ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        assert child.expect()[0] == NET, "no notification for a new veth pair"
        child.settle()

        latencies = []
        for i in range(1, 21):
            before = time.monotonic()
            run(*ns, "addr", "add", f"10.77.0.{i}/24", "dev", "v0")
            kind, at = child.expect()
            assert kind == NET
            latencies.append(float(at) - before)
            child.settle(0.12)

        run(*ns, "link", "set", "v0", "up")
        assert child.expect()[0] == NET, "no notification for a link going up"
        child.settle()

        batch = "".join(f"addr add 10.77.1.{i}/24 dev v0\n" for i in range(1, 21))
        before = time.monotonic()
        subprocess.run([*ns, "-batch", "-"], input=batch, text=True, check=True, timeout=30)
        added = time.monotonic() - before
        burst = child.settle(0.5)
        assert burst and set(burst) <= {NET, RESYNC}
        assert len(burst) <= 3, f"20 address adds in {added * 1000:.1f} ms gave {len(burst)} notifications"

        run(*ns, "addr", "del", "10.77.0.1/24", "dev", "v0")
        assert child.expect()[0] == NET, "no notification for a removed address"
        child.settle()
        run(*ns, "link", "del", "v0")
        assert child.expect()[0] == NET, "no notification for a removed link"
        child.settle()

        stop_took = child.close()
        assert stop_took < 1.0
        median = statistics.median(latencies)
        worst = max(latencies)
        print(f"\nrtnetlink in a netns, 50 ms window: 'ip addr add' -> notify median "
              f"{median * 1000:.1f} ms, max {worst * 1000:.1f} ms over {len(latencies)}; "
              f"burst of 20 adds in {added * 1000:.1f} ms -> {len(burst)} notification(s); "
              f"stop took {stop_took * 1000:.1f} ms")
        assert median < 0.2
    finally:
        child.kill()


def test_live_rtnetlink_without_window(netns: str) -> None:
    child = Child(netns, window=0.0)
    try:
        child.started()
        run("ip", "-n", netns, "link", "add", "w0", "type", "veth", "peer", "name", "w1")
        assert child.expect()[0] == NET
        child.settle()
        latencies = []
        for i in range(1, 21):
            before = time.monotonic()
            run("ip", "-n", netns, "addr", "add", f"10.78.0.{i}/24", "dev", "w0")
            kind, at = child.expect()
            assert kind == NET
            latencies.append(float(at) - before)
            child.settle(0.05)
        child.close()
        print(f"\nrtnetlink in a netns, no window: 'ip addr add' -> notify median "
              f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        assert statistics.median(latencies) < 0.1
    finally:
        child.kill()


def test_live_rtnetlink_overrun_asks_for_resync(netns: str) -> None:
    """A stopped reader with a tiny receive buffer misses messages: ENOBUFS -> "resync"."""
    child = Child(netns, window=0.05, rcvbuf=1024)
    try:
        child.started()
        os.kill(child.proc.pid, signal.SIGSTOP)  # 'ip netns exec' execs the command: this is Python
        try:
            batch = "".join(f"addr add 10.79.{i // 250}.{i % 250 + 1}/16 dev lo\n" for i in range(300))
            subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True,
                           timeout=30)
        finally:
            os.kill(child.proc.pid, signal.SIGCONT)
        assert RESYNC in child.settle(0.5)
        run("ip", "-n", netns, "addr", "add", "10.80.0.1/24", "dev", "lo")
        assert child.expect()[0] == NET  # still listening after the overrun
        child.settle()
        child.close()
    finally:
        child.kill()
