"""More behaviours that cross XenStore, on the real xenstored: VIF ids and SR-IOV
VFs found by MAC from the toolstack's device keys, resume detected from a clock
jump, and the pyxs Monitor defect the adapter avoids."""

import subprocess
import sys
import threading

from support.guestroot import GuestRoot
from support.waiting import wait_for
from xenguest_agent.agent import Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.daemon import Daemon
from xenguest_agent.host import Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore

HOME = "/local/domain/0"


def make_agent(guest, config=None):
    host = Host(str(guest.root))
    return Agent(LinuxBackend(host, CapturedAddresses(host)), config or Config())


def test_vif_and_sriov_found_by_mac_in_the_toolstacks_keys(xenstored, tmp_path):
    guest = GuestRoot(tmp_path / "guest")
    # a NIC whose kernel does not say which VIF it is, and an SR-IOV VF
    guest.nic("ens4", None, "00:16:3e:aa:bb:03", ["10.3.0.7"])
    guest.nic("ens5", None, "02:11:22:33:44:55", ["10.5.0.9", "2001:db8::9"])
    xenstored.write(f"{HOME}/device/vif/3/mac", "00:16:3E:AA:BB:03")
    xenstored.write(f"{HOME}/xenserver/device/net-sriov-vf/1/mac", "02:11:22:33:44:55")
    store = XenStore(xenstored.spec)
    store.connect()
    try:
        make_agent(guest).publish(store, Publisher(store))
    finally:
        store.close()
    assert xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.2"  # eth0, from sysfs
    assert xenstored.read(f"{HOME}/attr/vif/3/ipv4/0") == "10.3.0.7"
    assert xenstored.read(f"{HOME}/xenserver/attr/net-sriov-vf/1/ipv4/0") == "10.5.0.9"
    assert xenstored.read(f"{HOME}/xenserver/attr/net-sriov-vf/1/ipv6/0") == "2001:db8::9"


def test_clock_jump_means_resume_republish_and_hooks(xenstored, tmp_path, trusted_tmp):
    guest = GuestRoot(tmp_path / "guest")
    out = tmp_path / "resumed"
    hook = trusted_tmp / "hooks" / "post-resume" / "10-note"
    hook.parent.mkdir(parents=True)
    hook.write_text(f"#!/bin/sh\necho \"$XENGUEST_EVENT $XENGUEST_NEW_DOMID\" > {out}\n")
    hook.chmod(0o755)
    from xenguest_agent.hooks import Hooks

    suspended = [0.0]
    config = Config(poll_interval=0.1)
    store = XenStore(xenstored.spec)
    store.connect()
    xenstored.write(f"{HOME}/domid", "4")
    daemon = Daemon(make_agent(guest, config), store, Publisher(store), config,
                    hooks=Hooks(str(trusted_tmp / "hooks"), 30.0), suspended=lambda: suspended[0])
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1")
        xenstored.rm(f"{HOME}/attr")  # a checkpoint restore in place: same domid, keys lost
        suspended[0] = 30.0  # CLOCK_BOOTTIME ran 30 s ahead of CLOCK_MONOTONIC
        assert wait_for(lambda: xenstored.read(f"{HOME}/attr/vif/0/ipv4/0") == "10.0.0.2", timeout=3)
        assert wait_for(lambda: out.exists() and out.read_text() == "post-resume 4\n")
        assert daemon.resumes == 1
    finally:
        daemon.stop()
        thread.join(5)
        store.close()


SPIN = r"""
import sys, time
from pyxs import Client
with Client(unix_socket_path=sys.argv[1]) as client:
    monitor = client.monitor()
    monitor.watch(b"/local/domain/0/data", b"t")
    time.sleep(0.2)                       # the registration event is queued by now
    monitor.unwatch(b"/local/domain/0/data", b"t")
    print("waiting", flush=True)
    next(monitor.wait())                  # dirname('/') == '/': never returns
"""


def test_pyxs_monitor_spins_on_an_event_it_no_longer_watches(xenstored):
    """The defect the adapter avoids by not using Monitor.wait (xenstore.py)."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN, str(xenstored.socket_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        import psutil
        process = psutil.Process(proc.pid)
        before = sum(process.cpu_times()[:2])
        # a process blocked in wait() never burns a second of CPU; a spinning one does, however
        # loaded the machine is (no wall-clock limit: only the overall guard)
        assert wait_for(lambda: sum(process.cpu_times()[:2]) - before >= 1.0, timeout=60, step=0.1)
        assert proc.poll() is None  # still inside wait()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
