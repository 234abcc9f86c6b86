"""rc.d/xenguest_agent run unmodified under models of FreeBSD's rc.subr, daemon(8), limits(1),
ps(1) and sysctl(8) (tests/support/freebsd_rcroot/, run by tests/support/freebsd_rc.py in a
chroot with dash as /bin/sh).

Expected behaviour is FreeBSD's, from freebsd/freebsd-src:
- libexec/rc/rc.subr run_rc_command: ${name}_program replaces $command; the rcvar check and its
  "Cannot '<verb>' ..." message (stdout, status 0); "already running? (pid=N)." (stderr, 1);
  start = "limits -C <login class> ${name}_limits $command $rc_flags $command_args"; status and
  stop find the process with check_pidfile/_find_processes (pidfile + procname); stop sends
  SIGTERM and waits (wait_for_pids); "one" forces the rcvar, "quiet" drops the message;
- usr.sbin/daemon/daemon.c: the supervisor's title setproctitle("%s[%d]", title, child), its
  -P/-p pid files, and SIGTERM handling (13.x: forward and exit at once; 14: forward and wait);
- bin/ps/fmt.c fmt_argv: how that title reads in ps ("daemon: <title>[<pid>] (daemon)");
- usr.bin/limits/limits.c: unknown login class reported, limits applied, command exec'd;
- sys/kern/subr_param.c vm_guest_sysctl_names: the values of kern.vm_guest.
Each scenario runs against both modelled revisions: rc.subr at releng/13 (ea40e879) with the
13.x daemon(8), and rc.subr main (0227451) with the 14 daemon(8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.freebsd_rc import FreeBSDRoot, alive
from xenguest_agent import cli

SCRIPT = Path(__file__).resolve().parent.parent / "rc.d" / "xenguest_agent"
PIDFILE = "var/run/xenguest_agent.pid"
VARIANTS = [pytest.param(("releng13", "releng13"), id="13"), pytest.param(("main", "14"), id="14")]
CANNOT_START = ("Cannot 'start' xenguest_agent. Set xenguest_agent_enable to YES in "
                "/etc/rc.conf or use 'onestart' instead of 'start'.\n")


@pytest.fixture(params=VARIANTS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FreeBSDRoot]:
    rc_subr, daemon = request.param
    root = FreeBSDRoot(tmp_path / "root", SCRIPT, rc_subr=rc_subr, daemon=daemon)
    yield root
    root.kill_all()


def supervisor(world: FreeBSDRoot) -> int:
    """The pid daemon(8) wrote with -P, once it has written it."""
    world.wait_for(lambda: (world.read(PIDFILE) or "").strip().isdigit(), "daemon(8)'s pid file")
    return int(world.read(PIDFILE) or "")


def the_agent(world: FreeBSDRoot) -> int:
    world.wait_for(lambda: len(world.agents()) == 1, "the agent to start")
    (pid,) = world.agents()
    return pid


def ps_command(world: FreeBSDRoot, pid: int) -> str:
    done = world.run("/bin/ps", "-ww", "-o", "command=", "-p", str(pid))
    return done.stdout.strip()


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_syntax(shell: str) -> None:
    path = shutil.which(shell)
    assert path is not None, f"{shell} is needed"
    argv = [path, "-n", str(SCRIPT)] if shell == "dash" else [path, "--posix", "-n", str(SCRIPT)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_header_follows_the_porters_handbook() -> None:
    # Porter's Handbook, "Starting and Stopping Services (rc Scripts)": REQUIRE: LOGIN unless
    # there is a reason to start earlier; KEYWORD: shutdown to be stopped at shutdown; nojail
    # for a service that cannot work in a jail (no /dev/xen/xenstore there; libexec/rc/rc
    # skips "nojail" scripts when security.jail.jailed is 1).
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    lines = text.splitlines()
    assert "# PROVIDE: xenguest_agent" in lines
    assert "# REQUIRE: LOGIN" in lines
    keywords = next(line for line in lines if line.startswith("# KEYWORD:")).split()[2:]
    assert sorted(keywords) == ["nojail", "shutdown"]
    assert os.access(SCRIPT, os.X_OK)


def test_sets_no_variable_rcsubr_reserves() -> None:
    # rc.subr check_namevarlist: ${name}_<suffix> for these suffixes belongs to rc.subr (and
    # run_rc_command also reads _login_class, _limits, _cpuset, _umask, _env_file,
    # _oomprotect).  The script may only give _flags its empty default.
    reserved = ["program", "chroot", "chdir", "env", "flags", "fib", "nice", "user", "group",
                "groups", "prepend", "setup", "login_class", "limits", "cpuset", "umask",
                "env_file", "oomprotect"]
    text = SCRIPT.read_text()
    for suffix in reserved:
        variable = f"xenguest_agent_{suffix}"
        assignments = [line for line in text.splitlines()
                       if not line.lstrip().startswith("#") and (f"{variable}=" in line)]
        allowed = [': ${xenguest_agent_flags=""}'] if suffix == "flags" else []
        assert assignments == allowed, variable


def test_rcsubr_model_replaces_command_with_name_program(world: FreeBSDRoot) -> None:
    # The rule that broke the old script: ${name}_program (here from rc.conf, as rc.subr(8)
    # documents it) replaces $command, so daemon(8)'s options go to the agent, which refuses
    # them, and rc.subr says "failed to start".
    world.rc_conf('xenguest_agent_program="/usr/local/bin/xenguest-agent"\n')
    done = world.service("start")
    assert done.returncode == 1
    assert "error: argument command: invalid choice: '-" in done.stderr
    assert done.stderr.endswith("WARNING: failed to start xenguest_agent\n")
    assert world.agents() == {}


def test_start_status_second_start_stop(world: FreeBSDRoot) -> None:
    (world.root / ".model/agent-stop-delay").write_text("1\n")  # the agent takes time to exit
    done = world.service("start")
    assert (done.returncode, done.stdout, done.stderr) == (0, "Starting xenguest_agent.\n", "")
    daemon_pid = supervisor(world)
    agent_pid = the_agent(world)
    run = world.agents()[agent_pid]
    assert run["ppid"] == daemon_pid
    argv = run["argv"]
    assert argv == ["run", "--os", "freebsd"]
    args = cli._parser().parse_args(argv)
    assert (args.command, args.os, args.config) == ("run", "freebsd", None)
    # daemon.c: setproctitle("%s[%d]", title, pid); fmt.c appends the command name "daemon".
    assert ps_command(world, daemon_pid) == f"daemon: xenguest_agent[{agent_pid}] (daemon)"
    assert (world.read("var/run/xenguest_agent_agent.pid") or "").strip() == str(agent_pid)
    world.wait_for(lambda: "running as pid" in (world.read("var/log/messages") or ""), "syslog")
    assert (f"xenguest_agent[{daemon_pid}]: xenguest-agent stand-in: running as pid {agent_pid}"
            in (world.read("var/log/messages") or ""))

    done = world.service("status")
    assert (done.returncode, done.stdout) == (0, f"xenguest_agent is running as pid {daemon_pid}.\n")

    done = world.service("start")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"xenguest_agent already running?  (pid={daemon_pid}).\n"
    assert list(world.agents()) == [agent_pid]

    done = world.service("stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Stopping xenguest_agent.\nWaiting for PIDS: ")
    # stop returns only when both are gone, on 13.x too, where daemon(8) exits first
    assert not alive(daemon_pid) and not alive(agent_pid)
    assert world.read(PIDFILE) is None
    done = world.service("status")
    assert (done.returncode, done.stdout) == (1, "xenguest_agent is not running.\n")
    done = world.service("stop")
    assert done.returncode == 1
    assert done.stderr == "xenguest_agent not running? (check /var/run/xenguest_agent.pid).\n"


def test_restart_leaves_one_agent(world: FreeBSDRoot) -> None:
    (world.root / ".model/agent-stop-delay").write_text("1\n")
    assert world.service("start").returncode == 0
    first = the_agent(world)
    old_daemon = supervisor(world)
    done = world.service("restart")
    assert done.returncode == 0, done.stderr
    assert not alive(first) and not alive(old_daemon)
    world.wait_for(lambda: len(world.agents()) == 2, "the new agent")
    (second,) = set(world.agents()) - {first}
    assert alive(second)
    assert world.agents()[second]["ppid"] == supervisor(world) != old_daemon


def test_onestart_onestop_when_disabled(world: FreeBSDRoot) -> None:
    world.rc_conf('xenguest_agent_enable="NO"\n')
    done = world.service("start")
    assert (done.returncode, done.stdout, done.stderr) == (0, CANNOT_START, "")
    assert world.agents() == {}

    assert world.service("onestart").returncode == 0
    daemon_pid = supervisor(world)
    agent_pid = the_agent(world)
    done = world.service("status")
    if world.read(".model/rc.subr-variant") == "releng13\n":
        # releng/13 checks the rcvar for status too
        assert (done.returncode, done.stdout) == (0, CANNOT_START.replace("start", "status"))
    else:
        assert done.stdout == f"xenguest_agent is running as pid {daemon_pid}.\n"
    done = world.service("onestatus")
    assert (done.returncode, done.stdout) == (0, f"xenguest_agent is running as pid {daemon_pid}.\n")

    done = world.service("onestop")
    assert done.returncode == 0, done.stderr
    assert not alive(daemon_pid) and not alive(agent_pid)


def test_quietstart_when_disabled_says_nothing(world: FreeBSDRoot) -> None:
    world.rc_conf('xenguest_agent_enable="NO"\n')
    done = world.service("quietstart")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert world.agents() == {}


def test_flags_and_config_from_rc_conf_reach_the_agent(world: FreeBSDRoot) -> None:
    config = world.root / "usr/local/etc/xenguest-agent/prod.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("log_level: info\n")
    world.rc_conf('xenguest_agent_config="/usr/local/etc/xenguest-agent/prod.yaml"\n'
                  'xenguest_agent_flags="--log-level debug"\n')
    assert world.service("start").returncode == 0
    agent_pid = the_agent(world)
    argv = world.agents()[agent_pid]["argv"]
    assert argv == ["run", "--os", "freebsd", "--config",
                    "/usr/local/etc/xenguest-agent/prod.yaml", "--log-level", "debug"]
    args = cli._parser().parse_args(argv)
    assert (args.config, args.log_level) == ("/usr/local/etc/xenguest-agent/prod.yaml", "debug")
    # and daemon(8)'s options are still its own: it wrote both pid files
    assert (world.read("var/run/xenguest_agent_agent.pid") or "").strip().isdigit()
    assert supervisor(world) > 0


def test_missing_config_file_stops_start(world: FreeBSDRoot) -> None:
    world.rc_conf('xenguest_agent_config="/usr/local/etc/xenguest-agent/missing.yaml"\n')
    done = world.service("start")
    assert done.returncode == 1
    assert "WARNING: /usr/local/etc/xenguest-agent/missing.yaml is not readable." in done.stderr
    assert "WARNING: failed precmd routine for xenguest_agent" in done.stderr
    assert world.agents() == {}


def test_limits_and_login_class_go_through_limits(world: FreeBSDRoot) -> None:
    world.rc_conf('xenguest_agent_limits="-n 512"\nxenguest_agent_login_class="nosuch"\n')
    done = world.service("start")
    assert done.returncode == 0
    assert "login class 'nosuch' non-existent, using default" in done.stderr
    agent_pid = the_agent(world)
    assert world.agents()[agent_pid]["nofile"] == "512"


def test_stale_pidfile_of_another_process_is_not_the_agent(world: FreeBSDRoot) -> None:
    # check_pidfile: the pid must be a process whose command matches procname ("daemon").
    (world.root / PIDFILE).write_text(f"{os.getpid()}\n")
    done = world.service("status")
    assert (done.returncode, done.stdout) == (1, "xenguest_agent is not running.\n")
    assert world.service("start").returncode == 0
    assert supervisor(world) != os.getpid()
    assert alive(the_agent(world))


@pytest.mark.parametrize("vm_guest", ["none", "generic", "kvm", "bhyve", "hv", "vmware"])
def test_not_enabled_off_xen(world: FreeBSDRoot, vm_guest: str) -> None:
    world.sysctl("kern.vm_guest", vm_guest)
    done = world.service("start")
    assert (done.returncode, done.stdout) == (0, CANNOT_START)
    assert world.agents() == {}
    assert 'xenguest_agent_enable="NO"' in world.service("rcvar").stdout
    assert world.service("enabled").returncode == 1


def test_not_enabled_without_kern_vm_guest(world: FreeBSDRoot) -> None:
    (world.root / ".model/sysctl/kern.vm_guest").unlink()
    done = world.service("start")
    assert (done.returncode, done.stdout) == (0, CANNOT_START)


def test_enabled_by_default_on_xen(world: FreeBSDRoot) -> None:
    done = world.service("rcvar")
    assert done.stdout.splitlines()[:3] == ["# xenguest_agent : Xen guest agent", "#",
                                            'xenguest_agent_enable="YES"']
    assert world.service("enabled").returncode == 0
    assert world.service("start").returncode == 0
    assert alive(the_agent(world))


def test_rc_conf_overrides_the_default_both_ways(world: FreeBSDRoot) -> None:
    world.rc_conf('xenguest_agent_enable="NO"\n')
    assert world.service("start").stdout == CANNOT_START
    world.sysctl("kern.vm_guest", "kvm")
    world.rc_conf('xenguest_agent_enable="YES"\n')
    assert world.service("start").returncode == 0
    assert alive(the_agent(world))


def test_executable_from_rc_conf(world: FreeBSDRoot) -> None:
    elsewhere = world.root / "opt/agent/bin/xenguest-agent"
    elsewhere.parent.mkdir(parents=True)
    shutil.copy2(world.root / "usr/local/bin/xenguest-agent", elsewhere)
    world.rc_conf('xenguest_agent_executable="/opt/agent/bin/xenguest-agent"\n')
    assert world.service("start").returncode == 0
    agent_pid = the_agent(world)
    cmdline = Path(f"/proc/{agent_pid}/cmdline").read_text().split("\0")
    assert cmdline[:2] == ["/bin/sh", "/opt/agent/bin/xenguest-agent"]


def test_missing_executable_stops_start(world: FreeBSDRoot) -> None:
    world.rc_conf('xenguest_agent_executable="/opt/none/xenguest-agent"\n')
    done = world.service("start")
    assert done.returncode == 1
    assert "/opt/none/xenguest-agent is not executable" in done.stderr
    assert "WARNING: failed precmd routine for xenguest_agent" in done.stderr
    assert world.read(PIDFILE) is None


def test_boot_and_shutdown(world: FreeBSDRoot) -> None:
    # libexec/rc/rc at autoboot: autoboot=yes, rc_fast=yes, load_rc_config, then each script by
    # run_rc_script with "faststart"; libexec/rc/rc.shutdown: the "shutdown" keyword scripts
    # with "faststop".  Nothing in rc.conf: the Xen default decides.
    boot = ("autoboot=yes; rc_fast=yes; . /etc/rc.subr; load_rc_config; "
            "run_rc_script /usr/local/etc/rc.d/xenguest_agent faststart")
    done = world.run("/bin/sh", "-c", boot)
    assert (done.returncode, done.stdout, done.stderr) == (0, "Starting xenguest_agent.\n", "")
    daemon_pid = supervisor(world)
    agent_pid = the_agent(world)
    shutdown = (". /etc/rc.subr; load_rc_config; "
                "run_rc_script /usr/local/etc/rc.d/xenguest_agent faststop")
    done = world.run("/bin/sh", "-c", shutdown)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Stopping xenguest_agent.\n")
    assert not alive(daemon_pid) and not alive(agent_pid)


def test_faststart_while_running_is_stopped_by_daemons_pid_file_lock(world: FreeBSDRoot) -> None:
    # "fast" skips rc.subr's pid check (rc_fast); daemon(8)'s pidfile_open then finds the pid
    # files locked by the running supervisor and exits 3 before forking.
    assert world.service("start").returncode == 0
    daemon_pid = supervisor(world)
    agent_pid = the_agent(world)
    done = world.service("faststart")
    assert done.returncode == 1
    assert "daemon: process already running, pid: " in done.stderr
    assert done.stderr.endswith("WARNING: failed to start xenguest_agent\n")
    assert list(world.agents()) == [agent_pid]
    assert supervisor(world) == daemon_pid and alive(daemon_pid)
