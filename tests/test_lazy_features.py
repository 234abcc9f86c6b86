"""Features an idle guest does not use are not loaded until used (issue 14, idle RSS and
start-up): the static IP parsing/planning/applying modules (and ipaddress, uuid, shlex),
the hot-plug modules.  Each test starts the real daemon against the real xenstored with
``-X importtime`` (CPython's command line documentation: one ``import time:`` line on stderr
per module, when it is first imported) and reads what it had imported once the first publish
was done and its loop was running (systemd's READY=1, then the loop's first WATCHDOG=1:
sdnotify.py, daemon.py); then asks for the feature and checks it still works.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.guestroot import GuestRoot
from support.waiting import spawn_logged, wait_for

HOME = "/local/domain/0"
SUPPORT = Path(__file__).resolve().parent / "support"

#: Loaded only when a static IP request arrives (or, for the hot-plug ones, on a live Linux
#: guest's hot-plug thread): never by an idle daemon on a captured tree.
STATIC_IP_ONLY = ("xenguest_agent.staticip.manager", "xenguest_agent.staticip.setting",
                  "xenguest_agent.staticip.plan", "xenguest_agent.staticip.linux",
                  "xenguest_agent.staticip.freebsd", "ipaddress", "uuid", "shlex")
HOTPLUG_ONLY = ("xenguest_agent.hotplug", "xenguest_agent.hotplug_rules")


def imported(log: Path) -> set[str]:
    """The modules named by ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = set()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def notify_socket(tmp_path: Path) -> tuple[socket.socket, dict[str, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="30000000")
    return sock, env


def until_idle(sock: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> None:
    """READY=1 (after the first publish), then the loop's own first WATCHDOG=1; fails with
    the daemon's log if it exits first."""
    seen: list[str] = []

    def received() -> bool:
        assert proc.poll() is None, f"the daemon exited {proc.returncode}: " \
            f"{log.read_text(errors='replace')[-3000:]}"
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            return False
        return True

    for wanted in ("READY=1", "WATCHDOG=1"):
        assert wait_for(lambda w=wanted: received() and seen[-1] == w, timeout=60, step=0), seen


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_an_idle_daemon_has_not_loaded_static_ip_or_hotplug_code(xenstored, tmp_path):
    """`xenguest-agent run` on a guest tree: before the change, daemon.py imported the static
    IP driver (and with it manager, setting, plan, linux, freebsd: ipaddress, uuid, shlex)
    and hotplug.py (and hotplug_rules) at start, for type annotations only."""
    guest = GuestRoot(tmp_path / "guest")
    sock, env = notify_socket(tmp_path)
    log = tmp_path / "agent.log"
    proc = spawn_logged([sys.executable, "-X", "importtime", "-m", "xenguest_agent", "run",
                         "--xenstore", xenstored.spec, "--root", str(guest.root), "--os", "linux",
                         "--log-level", "warning"], log, env=env)
    try:
        until_idle(sock, proc, log)
        assert xenstored.read(f"{HOME}/data/updated") == "1"
        names = imported(log)
        assert "xenguest_agent.daemon" in names  # the record is there and complete
        assert not names & set(STATIC_IP_ONLY + HOTPLUG_ONLY), sorted(
            names & set(STATIC_IP_ONLY + HOTPLUG_ONLY))
    finally:
        stop(proc)
        sock.close()


@pytest.fixture
def static_ip_daemon(xenstored, tmp_path):
    """The daemon with static IP on (as `run` builds it on a live guest), on a guest tree where
    systemd-networkd is the network system (staticip/probe.py ``detect``: the bus socket,
    /run/systemd/netif/state, networkctl); commands are recorded, not run."""
    guest = GuestRoot(tmp_path / "guest")
    for path in ("run/dbus/system_bus_socket", "run/systemd/netif/state", "usr/bin/networkctl"):
        guest.file(path, "")
    sock, env = notify_socket(tmp_path)
    log = tmp_path / "agent.log"
    commands = tmp_path / "commands"
    proc = spawn_logged([sys.executable, "-X", "importtime", str(SUPPORT / "staticip_daemon.py"),
                         xenstored.spec, str(guest.root), str(commands)], log, env=env)
    proc.guest, proc.log, proc.commands = guest, log, commands  # type: ignore[attr-defined]
    try:
        until_idle(sock, proc, log)
        yield proc
    finally:
        stop(proc)
        sock.close()


def test_static_ip_is_advertised_and_watched_without_loading_its_code(static_ip_daemon,
                                                                      xenstored):
    """Advertised (xapi's assert_has_feature_static_ip_setting reads the flag) and watched,
    while the modules that parse, plan and apply a setting are not loaded; the first request
    loads them and is applied as before: systemd.network(5) file, networkctl reload and
    reconfigure (staticip/linux.py Networkd), request removed and error-code 0 written back
    (xenserver/win-xenguestagent FeatureStaticIpSetting.cs onFeature)."""
    proc = static_ip_daemon
    assert xenstored.read(f"{HOME}/control/feature-static-ip-setting") == "1"
    names = imported(proc.log)
    assert "xenguest_agent.staticip.driver" in names
    assert not names & set(STATIC_IP_ONLY), sorted(names & set(STATIC_IP_ONLY))
    assert not proc.commands.exists()

    # xenopsd's keys for a VIF configured with a static IPv4 address (xen-api
    # ocaml/xenopsd/xc/xenops_server_xen.ml xenstore_of_static_ip_setting), enabled last
    base = f"{HOME}/xenserver/device/vif/0/static-ip-setting"
    for key, value in (("mac", "00:16:3e:00:00:01"), ("error-code", "0"), ("error-msg", ""),
                       ("address", "192.0.2.10/24"), ("gateway", "192.0.2.1"),
                       ("enabled", "1")):
        xenstored.write(f"{base}/{key}", value)
    assert wait_for(lambda: xenstored.read(f"{base}/enabled") is None, timeout=60), \
        proc.log.read_text()[-3000:]
    assert xenstored.read(f"{base}/error-code") == "0"
    network = proc.guest.root / "etc/systemd/network/05-xenguest-agent-eth0.network"
    text = network.read_text()
    assert "Address=192.0.2.10/24\n" in text and "Gateway=192.0.2.1\n" in text
    assert proc.commands.read_text().splitlines() == ["networkctl reload",
                                                      "networkctl reconfigure eth0"]
    assert {"xenguest_agent.staticip.manager", "xenguest_agent.staticip.setting",
            "ipaddress"} <= imported(proc.log)


def test_the_plugs_nothing_specified_request_loads_no_address_parsing(static_ip_daemon,
                                                                      xenstored):
    """xenopsd writes ``enabled``/``enabled6`` ``0`` at every VIF plug (nothing specified),
    so every boot brings one request: it is answered (request removed, nothing configured,
    no command) without ipaddress, uuid or shlex."""
    proc = static_ip_daemon
    base = f"{HOME}/xenserver/device/vif/0/static-ip-setting"
    for key, value in (("mac", "00:16:3e:00:00:01"), ("error-code", "0"), ("error-msg", ""),
                       ("enabled6", "0"), ("enabled", "0")):
        xenstored.write(f"{base}/{key}", value)
    assert wait_for(lambda: xenstored.read(f"{base}/enabled") is None
                    and xenstored.read(f"{base}/enabled6") is None, timeout=60), \
        proc.log.read_text()[-3000:]
    assert xenstored.read(f"{base}/error-code") == "0"
    assert not proc.commands.exists()
    assert not (proc.guest.root / "etc/systemd/network").exists()
    names = imported(proc.log)
    assert "xenguest_agent.staticip.manager" in names
    assert not names & {"ipaddress", "uuid", "shlex"}, sorted(names & {"ipaddress", "uuid", "shlex"})
