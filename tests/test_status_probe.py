"""What ``status`` reads from the guest (xenguest_agent.guestprobe), on fixture trees.

Domain type: torvalds/linux ``drivers/xen/sys-hypervisor.c`` ``guest_type_show`` prints "PV"
(XEN_PV_DOMAIN), "PVH" or "HVM" (XEN_HVM_DOMAIN, by ``xen_pvh_domain()``), "Xen" (Arm native),
each with a newline.  Other agents: xenserver/xe-guest-utilities starts ``xe-daemon -p
/var/run/xe-daemon.pid`` from ``xe-linux-distribution.service`` (a shell script in older and
FreeBSD versions: ``/bin/sh /usr/local/sbin/xe-daemon -p ...``); xen-guest-agent runs as
``xen-guest-agent``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenguest_agent import guestprobe
from xenguest_agent.host import Host


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def process(root: Path, pid: int, comm: str, *argv: str) -> None:
    write(root, f"proc/{pid}/comm", comm + "\n")
    write(root, f"proc/{pid}/cmdline", "".join(a + "\0" for a in argv))


@pytest.mark.parametrize("content, kind", [("PV\n", "pv"), ("PVH\n", "pvh"), ("HVM\n", "hvm"),
                                           ("Xen\n", "unknown")])
def test_linux_domain_type(tmp_path: Path, content: str, kind: str) -> None:
    write(tmp_path, "sys/hypervisor/guest_type", content)
    found = guestprobe.domain_type(Host(str(tmp_path)), "linux")
    assert found.kind == kind
    assert repr(content.strip()) in found.source


def test_domain_type_unknown_without_the_file_and_on_freebsd(tmp_path: Path) -> None:
    assert guestprobe.domain_type(Host(str(tmp_path)), "linux").kind == "unknown"
    write(tmp_path, "sys/hypervisor/guest_type", "HVM\n")  # not FreeBSD's: never read there
    freebsd = guestprobe.domain_type(Host(str(tmp_path)), "freebsd")
    assert freebsd.kind == "unknown" and "FreeBSD" in freebsd.source


def test_no_other_agent(tmp_path: Path) -> None:
    process(tmp_path, 1, "systemd", "/sbin/init")
    process(tmp_path, 200, "python3", "/usr/bin/python3", "/usr/sbin/xenguest-agent", "run")
    assert guestprobe.other_agents(Host(str(tmp_path))) == ()


def test_xe_daemon_binary_script_and_xen_guest_agent(tmp_path: Path) -> None:
    process(tmp_path, 300, "xe-daemon", "/usr/sbin/xe-daemon", "-p", "/var/run/xe-daemon.pid")
    process(tmp_path, 301, "sh", "/bin/sh", "/usr/local/sbin/xe-daemon", "-p", "/var/run/xe-daemon.pid")
    process(tmp_path, 302, "xen-guest-agent", "/usr/bin/xen-guest-agent")
    found = guestprobe.other_agents(Host(str(tmp_path)))
    assert [(a.name, a.pid, a.running) for a in found] == [
        ("xe-daemon", 300, True), ("xe-daemon", 301, True), ("xen-guest-agent", 302, True)]


def test_xe_daemon_installed_but_not_running(tmp_path: Path) -> None:
    write(tmp_path, "var/run/xe-daemon.pid", "999\n")
    found = guestprobe.other_agents(Host(str(tmp_path)))
    assert [(a.name, a.running) for a in found] == [("xe-daemon", False)]
    assert "/var/run/xe-daemon.pid" in found[0].evidence
    other = tmp_path / "unit"
    write(other, "etc/systemd/system/multi-user.target.wants/xe-linux-distribution.service", "")
    found = guestprobe.other_agents(Host(str(other)))
    assert [(a.name, a.running) for a in found] == [("xe-daemon", False)]


def test_pid_alive_checks_the_command_line(tmp_path: Path) -> None:
    process(tmp_path, 200, "python3", "/usr/bin/python3", "-m", "xenguest_agent", "run")
    process(tmp_path, 201, "sshd", "/usr/sbin/sshd")  # a reused pid is not the daemon
    host = Host(str(tmp_path))
    assert guestprobe.pid_alive(host, 200) is True
    assert guestprobe.pid_alive(host, 201) is False
    assert guestprobe.pid_alive(host, 202) is False


def test_pid_alive_on_the_live_system() -> None:
    # this process runs pytest, not the agent: its command line is checked, not only its pid
    assert guestprobe.pid_alive(Host("/"), os.getpid(), marker="pytest") is True
    assert guestprobe.pid_alive(Host("/"), os.getpid(), marker="no-such-marker-xyz") is False
