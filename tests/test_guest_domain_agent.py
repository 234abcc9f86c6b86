"""The agent as a real unprivileged guest domain: Debian's xenstored enforces
permissions and quotas on it, a guest-side ring bridge carries its requests,
and a xenopsd-like toolstack asks for shutdowns and migrates it (see
tests/support/toolstack.py).  The agent is the real CLI in a subprocess."""

import json
import os
import random
import signal
import sys
import time

import pytest

from support.expectations import check_guestroot_tree
from support.guestroot import GuestRoot
from support.waiting import GUARD, leaves, script, spawn_logged, wait_for
from xenguest_agent import cli


class Agent:
    """The CLI daemon connected through the guest's ring bridge."""

    def __init__(self, guest, tmp_path, mode="auto", grace=0.3, poll=1, etc=None):
        self.guest = guest
        self.root = GuestRoot(tmp_path / "guest")
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        etc = etc or tmp_path / "etc"  # hooks run only from a trusted directory chain
        poweroff = script(etc / "fake-poweroff", f"echo poweroff >> {self.marks}/actions\n")
        for event in ("post-resume", "post-migrate"):
            script(etc / "hooks" / event / "10-record",
                   f"echo \"$1 $XENGUEST_OLD_UNIQUE_DOMAIN_ID $XENGUEST_UNIQUE_DOMAIN_ID\""
                   f" >> {self.marks}/hooks\n")
        config = etc / "config.yaml"  # it names commands run as root: a trusted chain
        config.write_text(f"poll_interval: {poll}\ncontrol:\n  mode: {mode}\n  grace: {grace}\n"
                          f"  hooks_dir: {etc / 'hooks'}\n  commands:\n    poweroff: [{poweroff}]\n")
        self.log = tmp_path / "agent.log"
        self.argv = [sys.executable, "-m", "xenguest_agent", "run", "--xenstore", guest.spec,
                     "--root", str(self.root.root), "--os", "linux", "--config", str(config),
                     "--log-level", "debug"]
        self.proc = None

    def start(self):
        self.proc = spawn_logged(self.argv, self.log, "a")
        assert wait_for(lambda: self.read("data/updated") == "1"), self.log.read_text()[-3000:]
        return self

    def read(self, relative):
        return self.guest.xenstored.read(f"{self.guest.home}/{relative}")

    def tree(self):
        return leaves(self.guest.xenstored.dump(self.guest.home))

    def actions(self):
        path = self.marks / "actions"
        return path.read_text().splitlines() if path.exists() else []

    def hooks(self):
        path = self.marks / "hooks"
        return path.read_text().splitlines() if path.exists() else []

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def make_agent(tmp_path, trusted_tmp):
    agents = []

    def make(guest, **options):
        agent = Agent(guest, tmp_path, etc=trusted_tmp / "etc", **options)
        agents.append(agent)
        return agent.start()

    yield make
    for agent in agents:
        if agent.alive():
            assert agent.stop() == 0, agent.log.read_text()[-3000:]


def expected_keys(agent, capsys):
    assert cli.main(["show", "--root", str(agent.root.root), "--os", "linux", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_keys_land_in_the_guests_home_exactly(guest_domain, make_agent, capsys):
    agent = make_agent(guest_domain)
    tree = agent.tree()
    # hand-built from GuestRoot's files and read through the xapi model; the guest's home also
    # holds what the toolstack and kernel wrote (domid, device/, control/...): only ours here
    ours = {k: v for k, v in tree.items() if k.startswith(("attr/", "data/", "feature/"))
            or k == "control/feature-balloon"}
    check_guestroot_tree(ours)
    expected = expected_keys(agent, capsys)
    assert {k: tree[k] for k in expected} == expected
    assert guest_domain.home == "/local/domain/5"
    # nothing of the agent's outside its home
    assert guest_domain.xenstored.read("/local/domain/0/data/updated") is None


def test_node_quota_degrades_gracefully(guest_domain_factory, make_agent, tmp_path, trusted_tmp):
    guest = guest_domain_factory(quota_nodes=38)
    agent = Agent(guest, tmp_path, etc=trusted_tmp / "etc")
    agent.proc = spawn_logged(agent.argv, agent.log, "a")
    assert wait_for(lambda: "refused to write" in agent.log.read_text())
    # still serving after the refusals: a SIGHUP is answered with a full republish
    agent.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "SIGHUP: full republish" in agent.log.read_text())
    assert agent.alive()
    log = agent.log.read_text()
    assert "No space left on device" in log or "ENOSPC" in log
    assert agent.read("attr/PVAddons/MajorVersion") == "1"  # 1.0.0; what fits is published
    refusals = [line for line in log.splitlines() if "refused to write" in line]
    assert len(refusals) == len(set(refusals))  # each refused key logged once
    assert agent.stop() == 0


def test_read_only_control_is_tolerated(guest_domain_factory, make_agent):
    guest = guest_domain_factory(control_writable=False)
    agent = make_agent(guest)
    assert agent.read("data/os_distro") == "debian"
    assert agent.read("attr/vif/0/ipv4/0") == "10.0.0.2"
    assert agent.read("control/feature-balloon") is None
    assert "refused to write control/feature-balloon" in agent.log.read_text()


def test_writing_outside_the_home_is_refused(guest_domain):
    from xenguest_agent.xenstore import XenStore, XenStoreError
    store = XenStore(guest_domain.spec)
    store.connect()
    try:
        with pytest.raises(XenStoreError) as caught:
            store.write("/local/domain/0/data/x", "1")
        assert caught.value.errno == 13  # EACCES
    finally:
        store.close()


def test_fallback_acknowledges_and_acts(guest_domain_factory, make_agent):
    # how fast belongs in the benchmark; here only that it happens (xenopsd waits 60 s)
    guest = guest_domain_factory(kernel="none")
    agent = make_agent(guest)
    guest.toolstack.request_shutdown("poweroff")
    assert guest.toolstack.wait_for_ack(timeout=GUARD)
    assert wait_for(lambda: agent.actions() == ["poweroff"])


def test_kernel_mode_leaves_it_to_the_kernel(guest_domain_factory, make_agent):
    guest = guest_domain_factory(kernel="linux")
    agent = make_agent(guest)
    guest.toolstack.request_shutdown("poweroff")
    assert guest.toolstack.wait_for_ack(timeout=GUARD)
    # observed: the agent has seen the acknowledgement (whether or not it saw the request first),
    # after which it never acts on that request (control.py on_event clears it)
    assert wait_for(lambda: "acknowledged by the guest kernel" in agent.log.read_text()
                    or "control/shutdown is acknowledged" in agent.log.read_text())
    assert guest.kernel.taken() == ["poweroff"]
    assert "carrying out" not in agent.log.read_text()  # control.py _take_over's line
    assert agent.actions() == []  # the kernel acknowledged first: the agent did nothing


def test_migration_every_key_back(guest_domain_factory, make_agent, capsys):
    guest = guest_domain_factory(kernel="linux")
    agent = make_agent(guest)
    before = agent.tree()
    assert before["control/feature-poweroff"] == "1"  # the kernel's, at boot
    old_uid = guest.toolstack.unique_domain_id
    new_uid = guest.toolstack.simulate_migration()
    assert new_uid != old_uid
    expected = expected_keys(agent, capsys)
    assert wait_for(lambda: all(agent.read(k) == v for k, v in expected.items()))
    # and independently of `show`: the hand-built keys, read as xapi would
    tree = agent.tree()
    check_guestroot_tree({k: v for k, v in tree.items() if k.startswith(("attr/", "data/", "feature/"))
                          or k == "control/feature-balloon"})
    # the kernel does not write its feature flags again; the agent does
    assert wait_for(lambda: agent.read("control/feature-poweroff") == "1")
    assert agent.read("control/feature-suspend") == "1"
    assert wait_for(lambda: agent.hooks() == [f"post-resume {old_uid} {new_uid}"])


def test_suspend_resume_in_place_keeps_everything(guest_domain, make_agent):
    agent = make_agent(guest_domain)
    before = agent.tree()
    guest_domain.toolstack.simulate_suspend_resume()
    agent.root.set_addresses("eth0", ["10.0.0.2", "10.0.0.9"])
    assert wait_for(lambda: agent.read("attr/vif/0/ipv4/1") == "10.0.0.9")
    after = agent.tree()
    assert {k: v for k, v in after.items() if k in before} == before
    assert agent.alive()


def test_a_hundred_random_faults_leave_the_agent_running_and_the_tree_complete(
        guest_domain_factory, make_agent, capsys):
    """Suspend/resume (in-flight transactions fail with EAGAIN), migration (a
    fresh tree), permission flips (EACCES), conflicting writes by the toolstack
    and quota pressure, while the guest's facts keep changing."""
    guest = guest_domain_factory(kernel="linux", quota_nodes=120)
    agent = make_agent(guest, poll=1)  # the floor of poll_interval
    rng = random.Random(20261123)
    toolstack, home, xs = guest.toolstack, guest.home, guest.xenstored
    counts = {}
    for step in range(100):
        fault = rng.choice(["suspend", "migrate", "chmod", "conflict", "quota", "facts"])
        counts[fault] = counts.get(fault, 0) + 1
        agent.root.set_addresses("eth0", [f"10.0.{step % 250}.{n + 1}" for n in range(rng.randint(1, 6))])
        if fault == "suspend":
            toolstack.simulate_suspend_resume()
        elif fault == "migrate":
            toolstack.simulate_migration()
        elif fault == "chmod":
            xs.chmod(f"{home}/attr", "n0", f"r{guest.domid}", recursive=True)
            time.sleep(rng.uniform(0, 0.1))
            xs.chmod(f"{home}/attr", f"n{guest.domid}", recursive=True)
        elif fault == "conflict":
            for _ in range(5):
                xs.write(f"{home}/data/os_name", "rewritten by someone else")
        elif fault == "quota":
            for n in range(60):  # the guest owns data/: these nodes count against its quota
                xs.cli("xenstore-write", f"{home}/data/filler{n}", "x", check=False)
            time.sleep(rng.uniform(0, 0.1))
            xs.rm(f"{home}/data/filler0")
            for n in range(60):
                xs.cli("xenstore-rm", f"{home}/data/filler{n}", check=False)
        time.sleep(rng.uniform(0, 0.05))
        assert agent.alive(), f"agent died at step {step} ({fault}):\n{agent.log.read_text()[-3000:]}"
    # settle: a final change of facts, then everything must be there and right
    agent.root.set_addresses("eth0", ["10.0.0.2"])
    os.kill(agent.proc.pid, signal.SIGHUP)  # a full republish also repairs keys others overwrote
    expected = expected_keys(agent, capsys)
    assert wait_for(lambda: all(agent.read(k) == v for k, v in expected.items())), \
        (counts, {k: (agent.read(k), v) for k, v in expected.items() if agent.read(k) != v})
    assert agent.alive()
    assert sum(counts.values()) == 100


def test_an_unreadable_feature_flag_before_start_stops_nothing(guest_domain_factory, make_agent):
    """Issue 9 item 7: control/feature-poweroff readable by dom0 alone when the agent starts.
    The EACCES on that one read left no key published and no control/shutdown watch; now
    everything else is published and a shutdown request is still seen and carried out."""
    guest = guest_domain_factory(kernel="none", extra_keys={"control/feature-poweroff": "1"})
    dom0 = guest.toolstack.client
    dom0.set_perms(f"{guest.home}/control/feature-poweroff", ["n0"])  # no access for the guest
    agent = make_agent(guest)
    assert agent.read("data/os_distro") == "debian"
    assert agent.read("attr/vif/0/ipv4/0") == "10.0.0.2"
    guest.toolstack.request_shutdown("poweroff")
    assert guest.toolstack.wait_for_ack(timeout=GUARD)
    assert wait_for(lambda: agent.actions() == ["poweroff"])
    assert agent.alive()
