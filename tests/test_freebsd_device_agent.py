"""The real CLI as a FreeBSD guest agent (``run --os freebsd --root <fixture tree>``) talking to the
real xenstored through the model of FreeBSD's /dev/xen/xenstore (tests/support/freebsd_device.py,
the rules of freebsd/freebsd-src sys/dev/xen/xenstore/xenstore_dev.c ``xs_dev_write``): the
daemon with its watches, a control request and a resume, as dom0 over xenstored's socket and as an
unprivileged guest domain over its ring. The device must never have had to refuse anything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from support.freebsd_device import FreeBSDXenstoreDevice
from support.freebsd_kernel import FreeBSDControl
from support.toolstack import GuestDomain
from support.waiting import leaves, script, wait_for
from xenguest_agent.xenstore import XenStore

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "freebsd"
TREE = "14-one-nic"
#: FreeBSD's kernel performs control/shutdown requests but writes no control/feature-* key
#: (sys/dev/xen/control/control.c advertises nothing): the agent advertises them.
AGENT_FEATURES = {"control/feature-poweroff": "1", "control/feature-reboot": "1",
                  "control/feature-suspend": "1"}


@pytest.fixture
def device_factory() -> Iterator[Callable[[str], FreeBSDXenstoreDevice]]:
    devices: List[FreeBSDXenstoreDevice] = []

    def make(upstream: str) -> FreeBSDXenstoreDevice:
        device = FreeBSDXenstoreDevice(upstream).start()
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.close()


def expected_tree(tree: str = TREE) -> Dict[str, str]:
    expected = json.loads((FIXTURES / tree / "expected.json").read_text())
    expected.update(AGENT_FEATURES)
    return expected


class FreeBSDAgent:
    """``xenguest-agent run --os freebsd --root <tree>`` on the device's socket."""

    def __init__(self, device: FreeBSDXenstoreDevice, home: str, read: Callable[[str], object],
                 tmp_path: Path, etc: Path, mode: str = "auto") -> None:
        """``etc``: a trusted directory (the config names a command run as root, so it and
        the hooks must be root's alone: not under /tmp)."""
        self.device = device
        self.home = home
        self._read = read
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        poweroff = script(etc / "fake-poweroff", f"echo poweroff >> {self.marks}/actions\n")
        for event in ("post-resume", "post-migrate"):
            script(etc / "hooks" / event / "10-record", f"echo \"$1\" >> {self.marks}/hooks\n")
        config = etc / "config.yaml"
        config.write_text(f"poll_interval: 1\ncontrol:\n  mode: {mode}\n  grace: 0.3\n"
                          f"  hooks_dir: {etc / 'hooks'}\n  commands:\n    poweroff: [{poweroff}]\n")
        self.log = tmp_path / "agent.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xenguest_agent", "run", "--xenstore", device.spec,
                 "--root", str(FIXTURES / TREE), "--os", "freebsd", "--config", str(config),
                 "--log-level", "debug"], stderr=log)

    def read(self, relative: str) -> object:
        return self._read(f"{self.home}/{relative}")

    def lines(self, name: str) -> List[str]:
        path = self.marks / name
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(10) == 0, self.log.read_text()[-3000:]


class Agents(List["FreeBSDAgent"]):
    """The agents a test started (stopped at teardown) and their trusted directory."""

    def __init__(self, etc: Path) -> None:
        super().__init__()
        self.etc = etc


@pytest.fixture
def agents(trusted_tmp: Path) -> Iterator[Agents]:
    started = Agents(trusted_tmp / "etc")
    yield started
    for agent in started:
        agent.stop()


def dom0_request(xenstored, path: str, reason: str) -> None:
    """What xenopsd's Domain.shutdown does: rm + write in one transaction."""
    store = XenStore(xenstored.spec)
    store.connect()
    try:
        def work(tx):
            tx.rm(path)
            tx.write(path, reason)
        store.transact(work)
    finally:
        store.close()


def test_daemon_sees_a_shutdown_request_through_freebsds_device(xenstored, device_factory,
                                                                agents, tmp_path) -> None:
    """Two watches sharing one token: FreeBSD's xs_dev_write refuses the second XS_WATCH with
    EINVAL (xs_dev_find_watch), so a token reused for domid/unique-domain-id left the first
    publish incomplete and no control/shutdown watch: the request below was never seen."""
    home = "/local/domain/0"
    xenstored.write(f"{home}/domid", "5")
    device = device_factory(str(xenstored.socket_path))
    agent = FreeBSDAgent(device, home, xenstored.read, tmp_path, agents.etc)
    agents.append(agent)
    assert wait_for(lambda: agent.read("data/updated") == "1", timeout=10), \
        agent.log.read_text()[-3000:]
    dom0_request(xenstored, f"{home}/control/shutdown", "poweroff")
    assert wait_for(lambda: xenstored.read(f"{home}/control/shutdown") == "", timeout=5), \
        agent.log.read_text()[-3000:]
    assert wait_for(lambda: agent.lines("actions") == ["poweroff"])
    log = agent.log.read_text()
    assert "first publish incomplete" not in log
    assert device.refusals == [] and device.violations == []
    assert leaves(xenstored.dump(home)).items() >= {
        k: v for k, v in expected_tree().items() if k != "data/updated"}.items()


def guest_agent(guest: GuestDomain, device_factory, agents, tmp_path: Path,
                mode: str = "auto") -> FreeBSDAgent:
    device = device_factory(str(guest.bridge.socket_path))
    agent = FreeBSDAgent(device, guest.home, guest.xenstored.read, tmp_path, agents.etc, mode)
    agents.append(agent)
    assert wait_for(lambda: agent.read("data/updated") == "1", timeout=10), \
        agent.log.read_text()[-3000:]
    return agent


def guest_tree(agent: FreeBSDAgent, guest: GuestDomain) -> Dict[str, str]:
    tree = leaves(guest.xenstored.dump(guest.home))
    return {k: tree[k] for k in expected_tree() if k in tree}


def test_guest_domain_publishes_the_fixture_and_the_kernel_takes_the_request(
        guest_domain_factory, device_factory, agents, tmp_path) -> None:
    """As domain 5 over its ring, with FreeBSD's kernel watching control/shutdown on the same
    ring (support.toolstack KERNELS["freebsd"]): the kernel acknowledges, the agent does not act."""
    guest = guest_domain_factory(kernel="freebsd")
    agent = guest_agent(guest, device_factory, agents, tmp_path)
    assert wait_for(lambda: guest_tree(agent, guest) == expected_tree(), timeout=5), \
        guest_tree(agent, guest)
    guest.toolstack.request_shutdown("poweroff")
    assert guest.toolstack.wait_for_ack(timeout=5)
    assert wait_for(lambda: guest.kernel is not None and guest.kernel.taken() == ["poweroff"])
    # the agent saw the request or only its acknowledgement; either way it says so and acts not
    assert wait_for(lambda: "acknowledged by the guest kernel" in agent.log.read_text()
                    or "control/shutdown is acknowledged" in agent.log.read_text()), \
        agent.log.read_text()[-3000:]
    assert agent.lines("actions") == []
    assert agent.device.refusals == [] and agent.device.violations == []


def test_guest_domain_without_a_kernel_watcher_gets_the_agents_fallback(
        guest_domain_factory, device_factory, agents, tmp_path) -> None:
    guest = guest_domain_factory(kernel="none")
    agent = guest_agent(guest, device_factory, agents, tmp_path)
    guest.toolstack.request_shutdown("poweroff")
    assert guest.toolstack.wait_for_ack(timeout=5), agent.log.read_text()[-3000:]
    assert wait_for(lambda: agent.lines("actions") == ["poweroff"])
    assert agent.device.refusals == [] and agent.device.violations == []


def test_migration_brings_every_key_back_and_runs_the_hooks(guest_domain_factory, device_factory,
                                                           agents, tmp_path) -> None:
    guest = guest_domain_factory(kernel="freebsd")
    agent = guest_agent(guest, device_factory, agents, tmp_path)
    assert wait_for(lambda: guest_tree(agent, guest) == expected_tree(), timeout=5)
    guest.toolstack.simulate_migration()
    assert wait_for(lambda: guest_tree(agent, guest) == expected_tree(), timeout=5), \
        agent.log.read_text()[-3000:]
    assert wait_for(lambda: agent.lines("hooks") == ["post-resume"])
    assert agent.device.refusals == [] and agent.device.violations == []


def test_suspend_resume_in_place_keeps_the_tree_and_the_control_watch(
        guest_domain_factory, device_factory, agents, tmp_path) -> None:
    guest = guest_domain_factory(kernel="none")
    agent = guest_agent(guest, device_factory, agents, tmp_path)
    assert wait_for(lambda: guest_tree(agent, guest) == expected_tree(), timeout=5)
    guest.toolstack.simulate_suspend_resume()
    # nothing to wait for: the request below proves the control watch survived the resume
    guest.toolstack.request_shutdown("poweroff")
    assert guest.toolstack.wait_for_ack(timeout=5), agent.log.read_text()[-3000:]
    assert wait_for(lambda: agent.lines("actions") == ["poweroff"])
    assert guest_tree(agent, guest) == expected_tree()
    assert agent.device.refusals == [] and agent.device.violations == []


@pytest.fixture
def freebsd_kernels() -> Iterator[List[FreeBSDControl]]:
    started: List[FreeBSDControl] = []
    yield started
    for kernel in started:
        kernel.stop()


@pytest.mark.parametrize("request_value,taken", [("halt", ["poweroff"]),
                                                  ("poweroff;touch /tmp/x", [])])
def test_freebsds_own_control_handler_acknowledges_first_and_the_agent_never_acts(
        guest_domain_factory, device_factory, agents, freebsd_kernels, tmp_path,
        request_value: str, taken: List[str]) -> None:
    """With FreeBSD's xctrl_on_watch_event (support.freebsd_kernel: "" written before the lookup,
    "halt" performed as poweroff, unknown values acknowledged and ignored) the agent in auto mode
    sees the acknowledgement and runs nothing, whatever the value."""
    guest = guest_domain_factory(kernel="none")
    kernel = FreeBSDControl(guest.bridge).start()
    freebsd_kernels.append(kernel)
    agent = guest_agent(guest, device_factory, agents, tmp_path)
    guest.toolstack.request_shutdown(request_value)
    assert guest.toolstack.wait_for_ack(timeout=5), agent.log.read_text()[-3000:]
    assert wait_for(lambda: kernel.acknowledged == [request_value])
    assert kernel.taken() == taken
    assert wait_for(lambda: "acknowledged" in agent.log.read_text()
                    or "refusing unknown control/shutdown value" in agent.log.read_text()), \
        agent.log.read_text()[-3000:]
    assert agent.lines("actions") == []
    assert agent.device.refusals == [] and agent.device.violations == []
