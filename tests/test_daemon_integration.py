"""The daemon with everything wired, on the real xenstored: what it published is kept
true without polling (issue 9 item 10), file changes arrive as dnotify events (item 13), and
systemd hears READY, WATCHDOG and STOPPING from the loop itself.

Intervals are set far beyond the waits (poll_interval 600 s), so only an event can
explain a change arriving; waits are failure guards only.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import pytest

from support.guestroot import GuestRoot
from support.waiting import spawn_logged, wait_for

HOME = "/local/domain/0"


@pytest.fixture
def quiet_agent(xenstored, tmp_path):
    """`run` on a synthetic tree, polling only every 10 minutes, with a notify socket."""
    guest = GuestRoot(tmp_path / "guest")
    config = tmp_path / "config.yaml"
    config.write_text("poll_interval: 600\ninterval: 600\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="2000000")
    proc = spawn_logged([sys.executable, "-m", "xenguest_agent", "run", "--xenstore", xenstored.spec,
                         "--root", str(guest.root), "--os", "linux", "--config", str(config),
                         "--log-level", "debug"], tmp_path / "agent.log", env=env)
    proc.guest = guest
    proc.notify = notify
    proc.log = tmp_path / "agent.log"
    assert wait_for(lambda: xenstored.read(f"{HOME}/data/updated") == "1", timeout=30), \
        proc.log.read_text()[-3000:]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()


def messages(sock: socket.socket, until: str, limit: int = 200):
    """Datagrams from the notify socket up to and including one equal to ``until``."""
    got = []
    sock.settimeout(30)
    while len(got) < limit:
        got.append(sock.recv(4096).decode())
        if got[-1] == until:
            return got
    raise AssertionError(f"no {until!r} in {got}")


def test_keys_removed_or_changed_by_another_writer_are_repaired(quiet_agent, xenstored):
    """Issue 9 item 10: keys another writer deletes stayed deleted, garbage stayed.
    Now each is repaired by the watch on what the agent owns, long before any poll."""
    xenstored.rm(f"{HOME}/attr/PVAddons")
    xenstored.write(f"{HOME}/data/os_distro", "tampered")
    xenstored.write(f"{HOME}/attr/vif/9/ipv4/0", "192.0.2.66")  # garbage in an owned tree
    assert wait_for(lambda: xenstored.read(f"{HOME}/attr/PVAddons/MajorVersion") is not None
                    and xenstored.read(f"{HOME}/data/os_distro") == "debian"
                    and xenstored.read(f"{HOME}/attr/vif/9/ipv4/0") is None, timeout=30), \
        quiet_agent.log.read_text()[-3000:]
    # xapi's reading of the repaired tree: tools installed (xapi_pv_driver_version.ml)
    from xenguest_agent.xapi import read_guest
    assert read_guest(xenstored.dump(HOME)).drivers.detected
    assert quiet_agent.poll() is None


def test_own_writes_are_not_taken_for_foreign_ones(quiet_agent, xenstored):
    """The agent's own writes fire its watches too; they must not cause repairs (each would
    re-read the key: a request per write, and a loop of them would never idle).

    Three foreign removals in a row, each waited for: the requests between the second
    repair and the third are exactly the third's, so the second's own writes (which fired
    the agent's watches) caused nothing.  A repair re-reads only the suspect key and
    rewrites it with the two batch markers (data/updated, attr/PVAddons/Installed)."""
    def remove_and_wait(key):
        mark = xenstored.mark()
        xenstored.rm(f"{HOME}/{key}")
        assert wait_for(lambda: xenstored.read(f"{HOME}/{key}") is not None, timeout=30), \
            quiet_agent.log.read_text()[-3000:]
        assert wait_for(lambda: len(writes(mark)) >= 3, timeout=30)
        return mark

    def requests(mark):  # the agent's: relative paths (the test's own tools use absolute ones)
        return [(r.op, r.path) for r in xenstored.trace_requests()[mark:]
                if r.path is not None and not r.path.startswith("/")]

    def writes(mark):
        return sorted(p for op, p in requests(mark) if op == "WRITE")

    remove_and_wait("data/os_uname")
    mark = remove_and_wait("data/os_distro")
    second = requests(mark)
    mark = remove_and_wait("data/os_name")
    third = requests(mark)
    for key, seen in (("data/os_distro", second), ("data/os_name", third)):
        reads = [p for op, p in seen if op in ("READ", "DIRECTORY")]
        assert reads == [key], seen  # the suspect alone, none of our own writes
        assert sorted(p for op, p in seen if op == "WRITE") == sorted(
            [key, "data/updated", "attr/PVAddons/Installed"]), seen
    assert "RM" not in [op for op, _ in third]  # nothing of ours was stale


def test_os_release_and_host_name_changes_arrive_by_file_events(quiet_agent, xenstored):
    """Issue 9 item 13: with network events on, an OS or host name change waited for the
    300 s sweep.  os-release replaced by rename (as package managers do) and the host
    name file rewritten reach XenStore by file events alone (poll_interval is 600 s)."""
    root = quiet_agent.guest.root
    new = root / "etc" / "os-release.new"
    new.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
                   'VERSION_ID="13"\nID=debian\n')
    os.replace(new, root / "etc" / "os-release")
    assert wait_for(lambda: xenstored.read(f"{HOME}/data/os_name") ==
                    "Debian GNU/Linux 13 (trixie)", timeout=30), quiet_agent.log.read_text()[-3000:]


def test_systemd_hears_ready_watchdog_and_stopping(quiet_agent):
    """Type=notify: READY=1 once the first publish is done, WATCHDOG=1 from the loop at half
    WATCHDOG_USEC (sd_watchdog_enabled(3)), STOPPING=1 on SIGTERM (sd_notify(3))."""
    got = messages(quiet_agent.notify, "WATCHDOG=1")
    assert got[0] == "READY=1"
    assert any(m.startswith("STATUS=publishing to unix:") for m in got)
    messages(quiet_agent.notify, "WATCHDOG=1")  # and again, from the idle loop
    quiet_agent.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in messages(quiet_agent.notify, "STOPPING=1")
    assert quiet_agent.wait(30) == 0


def test_a_wedged_loop_stops_the_watchdog_pings(xenstored, tmp_path):
    """The pings come from the loop itself, not from a thread beside it: while one step of
    the loop hangs, no WATCHDOG=1 is sent (so systemd's WatchdogSec restarts a wedged
    daemon), and the pings resume when it returns."""
    from xenguest_agent.agent import Agent
    from xenguest_agent.backends.addresses import CapturedAddresses
    from xenguest_agent.backends.linux import LinuxBackend
    from xenguest_agent.config import Config
    from xenguest_agent.daemon import Daemon
    from xenguest_agent.host import Host
    from xenguest_agent.publisher import Publisher
    from xenguest_agent.sdnotify import Notifier
    from xenguest_agent.xenstore import XenStore

    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    release, wedged = threading.Event(), threading.Event()

    class WedgingAgent(Agent):
        wedge = False

        def publish(self, *args, **kwargs):
            if self.wedge:
                wedged.set()
                release.wait(60)
                self.wedge = False
            return super().publish(*args, **kwargs)

    config = Config(poll_interval=1)
    agent = WedgingAgent(LinuxBackend(host, CapturedAddresses(host)), config)
    store = XenStore(xenstored.spec)
    store.connect()
    daemon = Daemon(agent, store, Publisher(store), config,
                    notifier=Notifier(str(tmp_path / "notify"), watchdog_interval=0.1))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        messages(notify, "WATCHDOG=1")
        agent.wedge = True
        assert wedged.wait(60)
        notify.settimeout(0)
        while True:  # what was sent before the wedge
            try:
                notify.recv(4096)
            except BlockingIOError:
                break
        # wedged: the loop sends nothing (the next datagram can only come after release)
        release_at = threading.Timer(1.0, release.set)
        release_at.start()
        notify.settimeout(30)
        first = notify.recv(4096).decode()
        assert release.is_set(), f"{first!r} sent while the loop was wedged"
        assert first == "WATCHDOG=1" or messages(notify, "WATCHDOG=1")
    finally:
        release.set()
        daemon.stop()
        thread.join(30)
        store.close()
        notify.close()
    assert not thread.is_alive()


def test_the_state_file_follows_the_daemon_for_status(xenstored, tmp_path):
    """The state `xenguest-agent status` reads (statefile.py): connected after the first
    publish, the time of the last publish that changed something, the refusals of the last
    full round, and connected=false while XenStore is away."""
    from xenguest_agent.agent import Agent
    from xenguest_agent.backends.addresses import CapturedAddresses
    from xenguest_agent.backends.linux import LinuxBackend
    from xenguest_agent.config import Config
    from xenguest_agent.daemon import Daemon
    from xenguest_agent.host import Host
    from xenguest_agent.publisher import Publisher
    from xenguest_agent.statefile import StateFile
    from xenguest_agent.xenstore import XenStore

    guest = GuestRoot(tmp_path / "guest")
    host = Host(str(guest.root))
    path = tmp_path / "run" / "state.json"
    state = StateFile(str(path))
    state.update(pid=os.getpid(), connected=False, refused=[])
    config = Config(poll_interval=600, interval=600)
    store = XenStore(xenstored.spec, timeout=1.0)
    store.connect()
    daemon = Daemon(Agent(LinuxBackend(host, CapturedAddresses(host)), config), store,
                    Publisher(store), config, state=state)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: (StateFile.read(str(path)) or {}).get("connected") is True, timeout=30)
        first = StateFile.read(str(path))
        assert first["last_publish"] and first["refused"] == [] and first["pid"] == os.getpid()
        xenstored.kill()
        assert wait_for(lambda: StateFile.read(str(path))["connected"] is False, timeout=30)
        xenstored.start()
        assert wait_for(lambda: StateFile.read(str(path))["connected"] is True, timeout=30)
    finally:
        daemon.stop()
        thread.join(30)
        store.close()
    assert not thread.is_alive()
