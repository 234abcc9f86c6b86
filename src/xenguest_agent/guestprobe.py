"""What ``status`` learns from the guest itself (through :class:`~xenguest_agent.host.Host`,
so tests point it at fixture trees): the domain type, other guest agents, a live pid.

Domain type: Linux's ``/sys/hypervisor/guest_type`` (torvalds/linux
``drivers/xen/sys-hypervisor.c`` ``guest_type_show``: "PV" for a PV domain, "PVH" or "HVM" for
an HVM-container domain, "Xen" for an Arm native one; the file exists since Linux 4.12).
FreeBSD has no sysctl naming the mode (``kern.vm_guest`` says only "xen"), so there, and on
older kernels, the type is "unknown" and ``status`` judges as xapi would for HVM, the
strictest case.

Other agents, which would overwrite the same keys:
* XenServer's xe-guest-utilities: the ``xe-daemon`` process (a Go binary, or a shell script
  in older and FreeBSD versions, where the name is the script argument), started by the
  systemd unit ``xe-linux-distribution.service`` with ``-p /var/run/xe-daemon.pid``
  (xenserver/xe-guest-utilities ``mk/xe-linux-distribution.service``,
  ``mk/xe-linux-distribution.init``).
* The Xen Project's xen-guest-agent: the ``xen-guest-agent`` process.
"""

from __future__ import annotations

import os

from xenguest_agent.host import Host
from xenguest_agent.records import dataclass

GUEST_TYPE_FILE = "/sys/hypervisor/guest_type"
_GUEST_TYPES = {"PV": "pv", "PVH": "pvh", "HVM": "hvm"}

XE_DAEMON = "xe-daemon"
XEN_GUEST_AGENT = "xen-guest-agent"
XE_DAEMON_PID_FILES = ("/var/run/xe-daemon.pid", "/run/xe-daemon.pid")
XE_UNIT = "xe-linux-distribution.service"
XE_UNIT_WANTS = "/etc/systemd/system/multi-user.target.wants/" + XE_UNIT
#: more processes than any guest has; the scan stops there
MAX_PROCESSES = 1 << 16


@dataclass(frozen=True)
class DomainType:
    """``kind``: one of xapi_ops.DOMAIN_TYPES; ``source``: where it came from, or why not."""

    kind: str
    source: str


@dataclass(frozen=True)
class OtherAgent:
    """Another agent: ``running`` when a process was found (it publishes), else only installed."""

    name: str
    pid: int | None
    evidence: str

    @property
    def running(self) -> bool:
        return self.pid is not None


def domain_type(host: Host, os_name: str) -> DomainType:
    if os_name == "freebsd":
        return DomainType("unknown", "FreeBSD does not tell the guest its mode (kern.vm_guest is 'xen')")
    text = host.read_line(GUEST_TYPE_FILE)
    if text is None:
        return DomainType("unknown", f"{GUEST_TYPE_FILE} missing (kernel before 4.12, or not Xen)")
    kind = _GUEST_TYPES.get(text)
    if kind is None:
        return DomainType("unknown", f"{GUEST_TYPE_FILE} says {text!r}")
    return DomainType(kind, f"{GUEST_TYPE_FILE} says {text!r}")


def _cmdline(host: Host, pid: str) -> tuple[str, ...]:
    raw = host.read_text(f"/proc/{pid}/cmdline", limit=4096) or ""
    return tuple(arg for arg in raw.split("\0") if arg)


def _agent_of(comm: str, argv: tuple[str, ...]) -> str | None:
    """Which agent a process is: its name, or (for an interpreter running a script) the
    base name of the script."""
    names = {comm} | {os.path.basename(arg) for arg in argv[:2]}
    for agent in (XE_DAEMON, XEN_GUEST_AGENT):
        if agent in names:
            return agent
    return None


def processes(host: Host) -> list[tuple[int, str, tuple[str, ...]]]:
    """(pid, comm, argv) of every process /proc shows under the root (bounded)."""
    found = []
    for entry in host.listdir("/proc")[:MAX_PROCESSES]:
        if entry.isdigit():
            comm = host.read_line(f"/proc/{entry}/comm") or ""
            found.append((int(entry), comm, _cmdline(host, entry)))
    return found


def other_agents(host: Host) -> tuple[OtherAgent, ...]:
    """The other agents running (by process) or installed (by pid file or enabled unit)."""
    found: list[OtherAgent] = []
    for pid, comm, argv in processes(host):
        name = _agent_of(comm, argv)
        if name is not None:
            found.append(OtherAgent(name, pid, f"process {pid} ({' '.join(argv) or comm})"))
    if not any(a.name == XE_DAEMON for a in found):
        for pid_file in XE_DAEMON_PID_FILES:
            text = host.read_line(pid_file)
            if text:
                found.append(OtherAgent(XE_DAEMON, None, f"{pid_file} names pid {text}, not running"))
                break
        else:
            if host.exists(XE_UNIT_WANTS):
                found.append(OtherAgent(XE_DAEMON, None, f"{XE_UNIT} enabled, not running"))
    return tuple(found)


def pid_alive(host: Host, pid: int, marker: str = "xenguest") -> bool:
    """Whether ``pid`` is a running process whose command line mentions ``marker`` (so a
    reused pid is not taken for the daemon).  Without /proc (FreeBSD's is usually not
    mounted) on the live system, a signal 0 answers whether the pid exists at all."""
    if host.exists("/proc/self") or not host.is_live:
        argv = _cmdline(host, str(pid))
        return any(marker in arg for arg in argv)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
