"""Telling a systemd shutdown (poweroff, reboot, halt) from a plain stop of the agent's unit.

The listings below have the shape systemd prints them in: `systemctl list-jobs --no-legend` is a
table of job id, unit, job type and job state, one job a row, nothing else
(systemd/systemd src/systemctl/systemctl-list-jobs.c, output_jobs_list: table_new("job", "unit",
"type", "state"), the header and the "N jobs listed." line only with the legend).  `systemctl
poweroff` starts poweroff.target (systemctl(1), "poweroff": like `systemctl start poweroff.target
--job-mode=replace-irreversibly`), likewise reboot/halt/kexec; the target's job waits until the
units ordered before it, the agent's among them, have stopped (bootup(7), shutdown chart)."""

import os

import pytest

from xenguest_agent.host import CommandError, CommandResult
from xenguest_agent.shutdownstate import LIST_JOBS, parse_list_jobs, system_shutdown_kind


class Runner:
    def __init__(self, stdout="", returncode=0, stderr="", error=None):
        self.stdout, self.returncode, self.stderr, self.error = stdout, returncode, stderr, error
        self.calls = []

    def __call__(self, argv, timeout=5.0):
        self.calls.append((tuple(argv), timeout))
        if self.error:
            raise self.error
        return CommandResult(tuple(argv), self.returncode, self.stdout, self.stderr)


# The whole queue (unfiltered `systemctl list-jobs --no-legend --full`) as systemd 252 of Debian 12
# showed it while it stopped the agent for an `xl shutdown`: captured by the system test's pre-shutdown
# hook (tests/system/domu/systemd/xgs-hook) from the guest's console.  The agent's own stop job is
# running, poweroff.target's start job waits behind it, with shutdown.target, final.target and
# umount.target; names are escaped the systemd way (\x2d).
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "systemd", "list-jobs-poweroff.txt")


def rows(unit, job_type="start", state="waiting", job=688):
    return "%d %-30s %-5s %s\n" % (job, unit, job_type, state)


@pytest.mark.parametrize("unit,kind", [
    ("poweroff.target", "poweroff"),
    ("reboot.target", "reboot"),
    ("halt.target", "halt"),
    # systemd.special(7): kexec.target reboots into a new kernel, soft-reboot.target restarts
    # userspace; for the agent both are reboots (the guest comes back).
    ("kexec.target", "reboot"),
    ("soft-reboot.target", "reboot"),
])
def test_each_shutdown_target_is_told_apart(unit, kind):
    assert system_shutdown_kind(Runner(rows(unit))) == kind


def test_the_whole_queue_of_a_real_poweroff():
    with open(FIXTURE) as f:
        text = f.read()
    assert "xenguest-agent.service" in text and "shutdown.target" in text
    assert parse_list_jobs(text) == "poweroff"
    # The same queue had it been a reboot: only the target's row differs.
    assert parse_list_jobs(text.replace("poweroff.target", "reboot.target")) == "reboot"


def test_plain_stop_no_shutdown_job_is_none():
    # `systemctl stop xenguest-agent`: the only job is our stop; filtered by the targets, the
    # listing is empty (--no-legend prints no "No jobs running.").
    assert system_shutdown_kind(Runner("")) is None
    assert parse_list_jobs(rows("xenguest-agent.service", "stop", "running", 702)) is None


def test_a_start_job_of_an_ordinary_unit_or_a_non_start_job_of_a_target_is_not_a_shutdown():
    assert parse_list_jobs(rows("shutdown.target")) is None  # every shutdown has it; says not which
    assert parse_list_jobs(rows("reboot.target", "stop")) is None
    assert parse_list_jobs(rows("rescue.target")) is None


def test_legend_lines_if_any_are_ignored():
    # Without --no-legend systemctl adds a header and a count; neither is a job row.
    text = "JOB UNIT            TYPE  STATE\n" + rows("reboot.target") + "\n1 jobs listed.\n"
    assert parse_list_jobs(text) == "reboot"
    assert parse_list_jobs("No jobs running.\n") is None


def test_asks_systemd_for_the_shutdown_targets_only_with_a_short_timeout():
    runner = Runner("")
    system_shutdown_kind(runner, timeout=2.5)
    (argv, timeout), = runner.calls
    assert argv == LIST_JOBS
    assert argv[:2] == ("systemctl", "list-jobs") and "--no-legend" in argv
    assert {"poweroff.target", "reboot.target", "halt.target"} <= set(argv)
    assert timeout == 2.5


def test_no_systemd_means_no_shutdown_hooks():
    # systemctl on a system not booted with systemd exits 1 ("System has not been booted with
    # systemd as init system (PID 1). Can't operate."); a missing systemctl or a timeout raises.
    assert system_shutdown_kind(Runner(returncode=1, stderr="System has not been booted with "
                                       "systemd as init system (PID 1). Can't operate.")) is None
    assert system_shutdown_kind(Runner(error=CommandError("systemctl: not found"))) is None
