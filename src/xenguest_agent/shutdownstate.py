"""Is systemd taking the system down, and into what?  Asked on the daemon's stop path.

On Linux the kernel answers ``control/shutdown`` itself (``drivers/xen/manage.c``:
``shutdown_handler`` acknowledges the request, then ``do_poweroff``/``do_reboot`` call
``orderly_poweroff``/``orderly_reboot``, which run ``/sbin/poweroff`` or ``/sbin/reboot``:
on a systemd guest, ``systemctl``).  The agent learns of the shutdown only when systemd stops
its unit as part of it.  At that moment the shutdown is a queued job of PID 1: ``systemctl
poweroff`` starts ``poweroff.target``, ``reboot`` starts ``reboot.target`` and so on
(systemctl(1), "System Commands"; bootup(7), the "System Manager Shutdown" chart;
systemd.special(7) for the targets), and that job stays queued, in state ``waiting``, until
every unit ordered before it has stopped, ours included.  A plain ``systemctl stop`` of the
agent queues no such job.

``systemctl list-jobs`` prints one row per job: id, unit, job type, job state
(systemd ``src/systemctl/systemctl-list-jobs.c``: ``output_jobs_list`` builds the
``job unit type state`` table; ``--no-legend`` drops the header and the "N jobs listed." /
"No jobs running." lines).  Unit names given as arguments filter the rows
(``verb_list_jobs``: ``output_show_job`` fnmatches the job's unit name).
"""

from __future__ import annotations

from xenguest_agent.control import HOOK_FOR
from xenguest_agent.hooks import Hooks
from xenguest_agent.host import CommandError, Runner
from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

log = get_logger(__name__)

#: systemd.special(7): the targets a shutdown starts, and what the machine does at the end.
#: kexec and soft-reboot come back up (a new kernel, or a new userspace): both are reboots.
SHUTDOWN_TARGETS = {
    "poweroff.target": "poweroff",
    "reboot.target": "reboot",
    "halt.target": "halt",
    "kexec.target": "reboot",
    "soft-reboot.target": "reboot",
}

LIST_JOBS = ("systemctl", "list-jobs", "--no-legend", "--no-pager", "--full") + tuple(SHUTDOWN_TARGETS)

#: PID 1 answers at once even in the middle of a shutdown; keep the stop path short if it does not.
TIMEOUT = 3.0


def parse_list_jobs(text: str) -> Optional[str]:
    """The kind of shutdown a ``systemctl list-jobs --no-legend`` listing shows, or None.

    Only a ``start`` job of a shutdown target counts; the first one listed wins (systemd queues
    one: starting a shutdown target replaces the other jobs, bootup(7))."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit() and fields[2] == "start":
            kind = SHUTDOWN_TARGETS.get(fields[1])
            if kind is not None:
                return kind
    return None


def system_shutdown_kind(run: Runner, timeout: float = TIMEOUT) -> Optional[str]:
    """"poweroff", "reboot", "halt", or None when systemd is not shutting the system down.

    None too when it cannot be told (no systemctl, systemd not PID 1, a timeout): the stop path
    then behaves as on a plain ``systemctl stop``, which is the safe side (no hook runs)."""
    try:
        result = run(LIST_JOBS, timeout)
    except CommandError as exc:
        log.info("cannot ask systemd whether the system is shutting down: %s", exc)
        return None
    if result.returncode != 0:
        log.info("systemctl list-jobs exited %d: %s", result.returncode,
                 (result.stderr or result.stdout).strip()[:200])
        return None
    return parse_list_jobs(result.stdout)


#: How long the stop path waits for the shutdown hooks: below the unit's TimeoutStopSec
#: (40 s, systemd/xenguest-agent.service), after which systemd would kill the cgroup.
HOOKS_BUDGET = 35.0


def run_shutdown_hooks(hooks: Hooks, kind: Optional[str], served: Optional[str],
                       budget: float = HOOKS_BUDGET) -> bool:
    """Stopped because the system is going down (``kind``, from :func:`system_shutdown_kind`):
    run its pre-shutdown or pre-reboot hooks, unless the agent already ran them for the
    toolstack's request (``served``, Control.served_shutdown).  True when hooks were started.

    Linux acknowledges control/shutdown itself and starts the orderly poweroff or reboot
    (drivers/xen/manage.c), so the agent usually learns of it only here, when systemd stops
    the unit during that shutdown.  The hooks run as everywhere else (off the caller, in
    their own process groups, each with its timeout); the whole wait is bounded by
    ``budget``, after which what still runs is killed."""
    if kind is None:
        return False
    event = HOOK_FOR[kind]
    started = served is None or HOOK_FOR[served] != event
    if started:
        log.info("stopped for a system %s: running the %s hooks", kind, event)
        hooks.start(event, {"request": kind})
    else:  # they may still be running: the stop must not cut them short
        log.info("stopped for a system %s: its %s hooks were started for the %s request",
                 kind, event, served)
    if not hooks.wait_all(budget):
        log.warning("%s hooks still running after %.0fs at stop: killed", event, budget)
        hooks.cancel_all()
    return started
