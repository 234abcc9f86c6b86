"""Live: the real kernel's uevents reach the hot-plug socket and parser; forged ones do not.

No CPU or memory block is touched: inside a fresh network namespace a veth pair is created
(``register_netdevice`` -> ``device_add`` sends ``add`` for /devices/virtual/net/<name> in
subsystem net; lib/kobject_uevent.c ``kobject_uevent_net_broadcast`` delivers a network
device's uevents to its own namespace only), then ``add`` is written to its ``uevent`` file
(drivers/base/core.c ``uevent_store`` -> ``kobject_synth_uevent``: a synthetic event that
carries ``SYNTH_UUID``).  A user-space process in the namespace also sends a forged CPU ``add``
to group 1 (root may: the family lacks NL_CFG_F_NONROOT_SEND): a second, unfiltered
listener proves it was delivered, and the agent's reader must drop it (sender port id not 0).
Needs root and iproute2 (``netns`` fixture in conftest.py): without them it fails, never skips.
"""

from __future__ import annotations

import pytest

from support.nschild import NamespaceChild, run

CHILD = r"""
import select, socket, sys
from xenguest_agent.hotplug import NETLINK_KOBJECT_UEVENT, open_uevent_socket, read_uevents

ours = open_uevent_socket()
ours.setblocking(False)
raw = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
raw.bind((0, 1))
forger = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
path = "/devices/system/cpu/cpu99"
forger.sendto(f"add@{path}\0ACTION=add\0DEVPATH={path}\0SUBSYSTEM=cpu\0SEQNUM=1\0".encode(), (0, 1))
data, (pid, _groups) = raw.recvfrom(65536)
print("forged-delivered", pid, data.split(b"\0")[0].decode(), flush=True)
print("ready", flush=True)
poller = select.poll()
poller.register(ours.fileno(), select.POLLIN)
poller.register(sys.stdin.fileno(), select.POLLIN)
while True:
    ready = [fd for fd, _ in poller.poll()]
    if ours.fileno() in ready:
        problems = []
        events, overrun = read_uevents(ours, problems)
        for event in events:
            print("event", event.action, event.subsystem, event.devpath,
                  "synth" if event.get("SYNTH_UUID") is not None else "kernel", flush=True)
        for problem in problems:
            print("problem", problem, flush=True)
    if sys.stdin.fileno() in ready:
        break
for sock in (ours, raw, forger):
    sock.close()
print("stopped", flush=True)
"""


class Child(NamespaceChild):
    what = "the listener"

    def __init__(self, ns: str) -> None:
        super().__init__(ns, CHILD, timeout=30.0)

    def close(self) -> None:
        self.kill()

    def until(self, wanted: str, seen: list[str]) -> None:
        """Collect lines into ``seen`` until one equals ``wanted`` (fails on eof)."""
        while True:
            line = self.expect()
            seen.append(line)
            if line == wanted:
                return
            if line == "eof":
                assert self.proc.stderr is not None
                pytest.fail(f"listener ended early: {self.proc.stderr.read()}", pytrace=False)


def test_kernel_uevents_reach_the_reader_and_forged_ones_do_not(netns: str) -> None:
    child = Child(netns)
    seen: list[str] = []
    try:
        child.until("ready", seen)
        forged = seen[0].split()
        assert forged[0] == "forged-delivered" and int(forged[1]) != 0
        assert forged[2] == "add@/devices/system/cpu/cpu99"

        run("ip", "-n", netns, "link", "add", "hpv0", "type", "veth", "peer", "name", "hpv1")
        child.until("event add net /devices/virtual/net/hpv0 kernel", seen)

        run("ip", "netns", "exec", netns, "sh", "-c", "echo add > /sys/class/net/hpv0/uevent")
        child.until("event add net /devices/virtual/net/hpv0 synth", seen)

        run("ip", "-n", netns, "link", "del", "hpv0")
        child.until("event remove net /devices/virtual/net/hpv0 kernel", seen)
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        child.until("stopped", seen)
        assert child.proc.wait(timeout=30) == 0
    finally:
        child.close()
    events = [line for line in seen if line.startswith(("event", "problem"))]
    assert not [line for line in events if "cpu99" in line or line.startswith("problem")]
    assert "event add net /devices/virtual/net/hpv1 kernel" in events
