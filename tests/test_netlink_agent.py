"""The daemon driven by live rtnetlink events, in a network namespace, against
the real xenstored: an address added or removed, and a NIC hot-plugged and
unplugged, reach XenStore without any polling (the memory tick and the safety
sweep are set far beyond the test's waits, so only an event can explain it)."""

import os
import signal
import subprocess
import sys

import pytest

from support.waiting import spawn_logged, wait_for

HOME = "/local/domain/0"


def ip(ns, *args):
    done = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.fail(f"ip -n {ns} {' '.join(args)}: {done.stderr.strip()}", pytrace=False)


@pytest.fixture
def live_agent(netns, xenstored, tmp_path):
    ip(netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ip(netns, "link", "set", "v0", "up")
    config = tmp_path / "config.yaml"
    config.write_text("interval: 600\nmemory:\n  min_interval: 600\n"
                      "network:\n  exclude: [lo, v1, v3]\n  static_vifs: {v0: 0, v2: 1}\n")
    log = tmp_path / "agent.log"
    proc = spawn_logged(["ip", "netns", "exec", netns, sys.executable, "-m", "xenguest_agent",
                         "run", "--xenstore", xenstored.spec, "--config", str(config),
                         "--log-level", "debug"], log)
    assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1", timeout=10), log.read_text()
    proc.log = log
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, log.read_text()[-3000:]


def test_address_changes_arrive_by_event(live_agent, netns, xenstored):
    assert "rtnetlink events" in live_agent.log.read_text()
    ip(netns, "addr", "add", "10.77.0.5/24", "dev", "v0")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.77.0.5", timeout=5), \
        live_agent.log.read_text()[-3000:]
    # another subnet: deleting a primary address also drops its subnet's secondaries
    ip(netns, "addr", "add", "10.78.0.6/24", "dev", "v0")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/1") == "10.78.0.6", timeout=5)
    ip(netns, "addr", "del", "10.77.0.5/24", "dev", "v0")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") is None, timeout=5)
    assert xenstored.read(f"{HOME}/attr/vif/0/ipv4/1") == "10.78.0.6"  # kept its index


def test_hotplugged_nic_appears_and_its_keys_are_swept(live_agent, netns, xenstored):
    ip(netns, "link", "add", "v2", "type", "veth", "peer", "name", "v3")
    ip(netns, "link", "set", "v2", "up")
    ip(netns, "addr", "add", "10.88.0.2/24", "dev", "v2")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/1/ipv4/0") == "10.88.0.2", timeout=5)
    ip(netns, "link", "del", "v2")
    # one DIRECTORY request (a recursive dump can race the agent's removal)
    assert wait_for(lambda: "1" not in xenstored.ls(f"{HOME}/attr/vif"), timeout=5), \
        xenstored.ls(f"{HOME}/attr/vif")
    assert xenstored.read(f"{HOME}/attr/vif/1/ipv4/0") is None


def test_odd_interfaces_never_stop_publishing(live_agent, netns, xenstored):
    """Issue 9 item 6: a non-UTF-8 interface name (net/core/dev.c dev_valid_name accepts any
    byte but '/', ':' and white space) and a labelled IPv4 alias (IFA_LABEL only; its
    ifa_index is v0's, net/ipv4/devinet.c inet_fill_ifaddr) are both ordinary to the kernel."""
    ip(netns, "link", "add", os.fsdecode(b"n\xff\xfe"), "type", "veth", "peer", "name", "v3")
    ip(netns, "addr", "add", "10.66.0.9/24", "dev", "v0", "label", "v0:vip")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.66.0.9", timeout=5), \
        live_agent.log.read_text()[-3000:]
    ip(netns, "addr", "add", "10.66.1.9/24", "dev", "v0")
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/1") == "10.66.1.9", timeout=5), \
        live_agent.log.read_text()[-3000:]
