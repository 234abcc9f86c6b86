"""rc.d/xenguest_agent: valid sh, and under a minimal rc.subr stand-in
(tests/fixtures/freebsd/rc.subr-standin) it enables itself on Xen guests only, builds the
daemon(8) command line the agent's own parser accepts, keeps ${name}_flags away from daemon(8)'s
options, and reports status from the supervisor's pidfile."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional

import pytest

from xenguest_agent import cli

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "rc.d" / "xenguest_agent"
STANDIN = Path(__file__).resolve().parent / "fixtures" / "freebsd" / "rc.subr-standin"
DAEMON = ["/usr/sbin/daemon", "-r", "-P", "/var/run/xenguest_agent.pid", "-S", "-T", "xenguest_agent"]
AGENT = ["/usr/local/bin/xenguest-agent", "run", "--os", "freebsd"]
SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_syntax(shell: str) -> None:
    argv = [shell, "-n", str(SCRIPT)] if shell != "bash" else [shell, "--posix", "-n", str(SCRIPT)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_rc_subr_header() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    for line in ("# PROVIDE: xenguest_agent", "# KEYWORD: shutdown", 'name="xenguest_agent"',
                 'rcvar="xenguest_agent_enable"', 'load_rc_config $name', 'run_rc_command "$1"'):
        assert line in text
    assert os.access(SCRIPT, os.X_OK)


def run_script(tmp_path: Path, verb: str, vm_guest: str = "xen", rc_conf: Optional[str] = None,
               rc_root: Optional[Path] = None) -> subprocess.CompletedProcess:
    text = SCRIPT.read_text()
    assert text.count(". /etc/rc.subr\n") == 1
    script = tmp_path / "xenguest_agent"
    script.write_text(text.replace(". /etc/rc.subr\n", f". {STANDIN}\n"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "VM_GUEST": vm_guest}
    if rc_conf is not None:
        conf = tmp_path / "rc.conf"
        conf.write_text(rc_conf)
        env["RC_CONF"] = str(conf)
    if rc_root is not None:
        env["RC_ROOT"] = str(rc_root)
    return subprocess.run(["sh", str(script), verb], capture_output=True, text=True, env=env,
                          timeout=30, check=False)


def started(done: subprocess.CompletedProcess) -> List[str]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "would run:", done.stdout
    return lines[1:]


def test_enabled_by_default_on_xen(tmp_path: Path) -> None:
    argv = started(run_script(tmp_path, "start", vm_guest="xen"))
    assert argv == DAEMON + AGENT
    # what daemon(8) starts is a command line the agent itself accepts
    args = cli._parser().parse_args(argv[len(DAEMON) + 1:])
    assert (args.command, args.os, args.config) == ("run", "freebsd", None)
    assert run_script(tmp_path, "rcvar").stdout.strip() == "xenguest_agent_enable=YES"


@pytest.mark.parametrize("vm_guest", ["none", "kvm", "bhyve", ""])
def test_disabled_by_default_elsewhere(tmp_path: Path, vm_guest: str) -> None:
    done = run_script(tmp_path, "start", vm_guest=vm_guest)
    assert done.returncode != 0
    assert "Set xenguest_agent_enable to YES" in done.stderr
    assert run_script(tmp_path, "rcvar", vm_guest=vm_guest).stdout.strip() == "xenguest_agent_enable=NO"


def test_rc_conf_overrides_the_default_both_ways(tmp_path: Path) -> None:
    assert run_script(tmp_path, "start", "xen", 'xenguest_agent_enable="NO"\n').returncode != 0
    assert started(run_script(tmp_path, "start", "none", 'xenguest_agent_enable="YES"\n')) == DAEMON + AGENT


def test_config_and_flags_go_to_the_agent_not_to_daemon(tmp_path: Path) -> None:
    conf = ('xenguest_agent_config="/usr/local/etc/xenguest-agent/prod.yaml"\n'
            'xenguest_agent_flags="--log-level debug"\n'
            'xenguest_agent_program="/opt/agent/bin/xenguest-agent"\n')
    argv = started(run_script(tmp_path, "start", "xen", conf))
    assert argv == DAEMON + ["/opt/agent/bin/xenguest-agent", "run", "--os", "freebsd", "--config",
                             "/usr/local/etc/xenguest-agent/prod.yaml", "--log-level", "debug"]
    args = cli._parser().parse_args(argv[len(DAEMON) + 1:])
    assert (args.config, args.log_level) == ("/usr/local/etc/xenguest-agent/prod.yaml", "debug")


def test_status_follows_the_supervisor_pidfile(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = run_script(tmp_path, "status", rc_root=root)
    assert done.returncode == 1 and done.stdout.strip() == "xenguest_agent is not running."
    pidfile = root / "var" / "run" / "xenguest_agent.pid"
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{os.getpid()}\n")  # a live process stands in for daemon(8)
    done = run_script(tmp_path, "status", rc_root=root)
    assert done.returncode == 0
    assert done.stdout.strip() == f"xenguest_agent is running as pid {os.getpid()}."
