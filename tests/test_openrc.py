"""openrc/xenguest-agent, the OpenRC service script for Alpine guests, under OpenRC itself.

Parsing: the script is valid sh and sets what openrc-run(8) reads (command, command_args,
supervisor, pidfile, extra_started_commands, the depend() keywords).

Running: under Debian's own OpenRC (openrc-run, supervise-daemon, librc, libeinfo from the
openrc, librc1 and libeinfo1 packages of the running release).  The packages are not installed:
openrc conflicts with sysv-rc and its postinst migrates /etc/rc?.d into /etc/runlevels, which is
more than a test may do to a developer's machine.  They are fetched with `apt-get download` into
a cache and unpacked into a private root; every command runs chrooted there in a private mount
namespace of a user namespace (the technique of tests/support/freebsd_rc.py), so /etc/init.d,
/etc/conf.d, /run/openrc and /usr/bin/xenguest-agent are the root's, and the host's init is
never touched.  /usr/bin/xenguest-agent is a stand-in that records its argv and the signals it
receives, stays alive until SIGTERM, or exits at once with the status in /agent/exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.freebsd_rc import alive
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "openrc" / "xenguest-agent"
PACKAGES = ("openrc", "librc1", "libeinfo1")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xenguest-agent-openrc"
# Host binaries the OpenRC shell library and the stand-in call (openrc-run.sh, rc-functions.sh,
# supervise-daemon.sh); they run on the host's /usr/lib, bound into the root.
HOST_TOOLS = {"bin/sh": "dash", "usr/bin/cat": "cat", "usr/bin/grep": "grep",
              "usr/bin/sed": "sed", "usr/bin/touch": "touch", "usr/bin/mkdir": "mkdir",
              "usr/bin/rm": "rm", "usr/bin/sleep": "sleep", "usr/bin/env": "env",
              "usr/bin/tr": "tr", "usr/bin/ls": "ls", "usr/bin/logger": "logger"}
ENTER = r"""
set -eu
root=$1; shift
mount --bind /usr/lib "$root/usr/lib"
mount --bind /usr/lib64 "$root/usr/lib64"
mount --bind /usr/lib/x86_64-linux-gnu "$root/lib/x86_64-linux-gnu"
mount --bind /dev/null "$root/dev/null"
mount --rbind /proc "$root/proc"
while [ "$1" != -- ]; do
    mount --bind "$2" "$root/$1"
    shift 2
done
shift
exec chroot "$root" /usr/bin/env -i HOME=/ PATH=/sbin:/bin:/usr/sbin:/usr/bin "$@"
"""
STAND_IN = """#!/bin/sh
# the agent stand-in: one line per run, one per signal
echo "$$ $*" >> /agent/runs
if [ -f /agent/exit ]; then
    read code < /agent/exit
    exit "$code"
fi
trap 'echo "$$ HUP" >> /agent/signals' HUP
trap 'echo "$$ TERM" >> /agent/signals; exit 0' TERM
while :; do
    sleep 1 &
    wait $!
done
"""


def debs() -> list[Path]:
    """The three packages of the running Debian release, downloaded once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = [next(iter(sorted(CACHE.glob(f"{p}_*.deb"))), None) for p in PACKAGES]
    missing = [p for p, f in zip(PACKAGES, found) if f is None]
    if missing:
        done = subprocess.run(["apt-get", "download", *missing], cwd=CACHE,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"apt-get download {missing} failed:\n{done.stderr}"
        found = [next(iter(sorted(CACHE.glob(f"{p}_*.deb"))), None) for p in PACKAGES]
    assert all(found), f"{PACKAGES} not downloaded into {CACHE}"
    return [f for f in found if f is not None]


class OpenRCRoot:
    """A root with Debian's OpenRC, the script under test as /etc/init.d/xenguest-agent."""

    def __init__(self, root: Path, conf_d: str = "", exit_status: int | None = None) -> None:
        self.root = root
        for deb in debs():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        # The root's /lib is OpenRC's (/lib/rc); its multiarch directory is the host's libraries,
        # bound at entry, so librc and libeinfo move to /lib, which ld.so searches as well.
        for lib in (root / "lib/x86_64-linux-gnu").iterdir():
            lib.rename(root / "lib" / lib.name)
        for d in ("usr/lib", "usr/lib64", "usr/bin", "proc", "dev", "run/openrc", "agent",
                  "etc/init.d", "etc/conf.d", "etc/runlevels/sysinit", "etc/runlevels/boot",
                  "etc/runlevels/default", "etc/runlevels/shutdown", "etc/rc.conf.d",
                  "etc/insserv.conf.d", "tmp", "var/log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "dev/null").touch()
        (root / "lib64").symlink_to("usr/lib64")
        # openrc-run refuses to run when OpenRC did not boot the system unless this exists
        # (its own message says to touch it); it is the root's /run, not the host's.
        (root / "run/openrc/softlevel").touch()
        # The state directories openrc(8) creates at boot (librc's RC_SVCDIR layout).
        for state in ("daemons", "exclusive", "failed", "hotplugged", "inactive", "options",
                      "scheduled", "started", "starting", "stopping", "tmp", "wasinactive"):
            (root / "run/openrc" / state).mkdir()
        self.binds: list[str] = []
        for target, tool in HOST_TOOLS.items():
            found = shutil.which(tool, path="/usr/bin:/bin")
            assert found is not None, f"{tool} is needed to run OpenRC and is missing"
            (root / target).touch()
            self.binds += [target, os.path.realpath(found)]
        shutil.copy2(SCRIPT, root / "etc/init.d/xenguest-agent")
        (root / "etc/conf.d/xenguest-agent").write_text(conf_d)
        # Alpine's openrc ships localmount (Debian's does not): a no-op stand-in, so that the
        # script's `need localmount` is resolved by OpenRC's real dependency code.
        localmount = root / "etc/init.d/localmount"
        localmount.write_text("#!/sbin/openrc-run\nstart() { :; }\n")
        localmount.chmod(0o755)
        # Debian's librc also reads insserv's configuration (LSB virtual facilities): none here.
        (root / "etc/insserv.conf").write_text("")
        agent = root / "usr/bin/xenguest-agent"
        agent.write_text(STAND_IN)
        agent.chmod(0o755)
        if exit_status is not None:
            (root / "agent/exit").write_text(f"{exit_status}\n")

    def service(self, verb: str) -> subprocess.CompletedProcess:
        """What `rc-service xenguest-agent <verb>` does: run the script, a clean environment.

        Output goes to files, not pipes: supervise-daemon's supervisor outlives the command."""
        cmd = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
               "/bin/sh", "-c", ENTER, "enter", str(self.root), *self.binds, "--",
               "/etc/init.d/xenguest-agent", verb]
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=120)
            out.seek(0)
            return subprocess.CompletedProcess(cmd, done.returncode, out.read(), "")

    def runs(self) -> list[list[str]]:
        """Each start of the stand-in: [pid, argv...]."""
        path = self.root / "agent/runs"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def signals(self) -> list[list[str]]:
        path = self.root / "agent/signals"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def supervisor(self) -> int | None:
        """The supervise-daemon pid in the script's pidfile (supervise-daemon(8), -p)."""
        path = self.root / "run/xenguest-agent.pid"
        return int(path.read_text().split()[0]) if path.exists() else None

    def processes(self) -> list[int]:
        mine = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/root") == str(self.root):
                        mine.append(int(entry))
                except OSError:
                    pass
        return mine

    def kill_all(self) -> None:
        """Kill, by pid, what ran in this root (supervisor first, so nothing is respawned)."""
        assert wait_for(lambda: not self._kill_round(), timeout=60)

    def _kill_round(self) -> list[int]:
        left = [p for p in self.processes() if alive(p)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture
def make_root(tmp_path: Path) -> Iterator:
    made: list[OpenRCRoot] = []

    def make(**kwargs: object) -> OpenRCRoot:
        r = OpenRCRoot(tmp_path / f"root{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make
    for r in made:
        r.kill_all()


def sh_values(*names: str) -> dict[str, str]:
    """What the script sets, as openrc-run's shell sees it after sourcing it (empty conf.d)."""
    code = ". \"$1\"; shift; for n; do eval \"printf '%s=%s\\n' $n \\\"\\$$n\\\"\"; done"
    done = subprocess.run(["sh", "-c", code, "sh", str(SCRIPT), *names], capture_output=True,
                          text=True, check=True, env={"PATH": "/usr/bin:/bin",
                                                      "RC_SVCNAME": "xenguest-agent"})
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


# --- parsing -----------------------------------------------------------------------------


def test_script_is_valid_sh_with_the_openrc_run_shebang() -> None:
    assert SCRIPT.read_text().splitlines()[0] == "#!/sbin/openrc-run"
    assert os.access(SCRIPT, os.X_OK), "the script must be executable (openrc-run(8) runs it)"
    for shell in ("sh", "dash"):  # Alpine's /bin/sh is busybox ash; dash is as strict
        done = subprocess.run([shell, "-n", str(SCRIPT)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_script_sets_what_openrc_run_reads() -> None:
    # Variable names from openrc-run(8) (SERVICE SCRIPT variables) and supervise-daemon.sh.
    values = sh_values("command", "command_args", "supervisor", "pidfile",
                       "extra_started_commands", "respawn_max", "respawn_period")
    assert values["command"] == "/usr/bin/xenguest-agent"
    assert values["command_args"].split() == ["run"]
    assert values["supervisor"] == "supervise-daemon"
    assert values["pidfile"] == "/run/xenguest-agent.pid"
    assert values["extra_started_commands"].split() == ["reload"]
    # supervise-daemon(8): 0 means unlimited; the script must bound the respawns.
    assert int(values["respawn_max"]) > 0 and int(values["respawn_period"]) > 0


def test_conf_d_options_reach_the_command_line() -> None:
    code = 'XENGUEST_AGENT_OPTS="--log-level debug"; . "$1"; printf %s "$command_args"'
    done = subprocess.run(["sh", "-c", code, "sh", str(SCRIPT)], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["run", "--log-level", "debug"]


def test_depend_needs_localmount_and_never_excludes_a_xen_guest() -> None:
    # openrc-run(8) DEPENDENCIES: need/after/keyword are functions depend() calls; record them.
    code = ('need() { echo "need $*"; }; after() { echo "after $*"; }; '
            'keyword() { echo "keyword $*"; }; use() { echo "use $*"; }; '
            'before() { echo "before $*"; }; provide() { echo "provide $*"; }; '
            '. "$1"; depend')
    done = subprocess.run(["sh", "-c", code, "sh", str(SCRIPT)], capture_output=True, text=True,
                          check=True)
    calls = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert "localmount" in calls["need"]
    assert "net" in calls["after"] and "net" not in calls["need"]
    # -xenu would exclude the service on a Xen domU (openrc-run(8), keyword), the one place it
    # is for; containers have no XenStore.
    assert "-xenu" not in calls["keyword"]
    assert "-lxc" in calls["keyword"] and "-docker" in calls["keyword"]


# --- running under OpenRC ----------------------------------------------------------------


def test_start_status_reload_stop_under_openrc(make_root) -> None:
    root = make_root(conf_d='XENGUEST_AGENT_OPTS="--log-level debug"\n')
    started = root.service("start")
    assert started.returncode == 0, started.stdout
    assert wait_for(lambda: len(root.runs()) == 1), (started.stdout, root.runs())
    pid, *argv = root.runs()[0]
    assert argv == ["run", "--log-level", "debug"]
    supervisor = root.supervisor()
    assert supervisor is not None and alive(supervisor) and alive(int(pid))
    # need localmount: OpenRC started it first
    assert (root.root / "run/openrc/started/localmount").is_symlink()

    status = root.service("status")
    # supervise_status in OpenRC's supervise-daemon.sh: 0 and "started" for a running service
    assert status.returncode == 0 and "started" in status.stdout, status.stdout

    reloaded = root.service("reload")
    assert reloaded.returncode == 0, reloaded.stdout
    assert wait_for(lambda: [pid, "HUP"] in root.signals()), root.signals()
    assert alive(int(pid)) and len(root.runs()) == 1, "reload must not restart the agent"

    stopped = root.service("stop")
    assert stopped.returncode == 0, stopped.stdout
    assert [pid, "TERM"] in root.signals()
    assert wait_for(lambda: not alive(int(pid)) and not alive(supervisor))
    status = root.service("status")
    assert status.returncode == 3 and "stopped" in status.stdout, status.stdout


def test_a_crashed_agent_is_respawned(make_root) -> None:
    root = make_root(conf_d="respawn_delay=1\n")
    assert root.service("start").returncode == 0
    assert wait_for(lambda: len(root.runs()) == 1)
    first = int(root.runs()[0][0])
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: len(root.runs()) == 2), root.runs()
    assert alive(int(root.runs()[1][0]))
    assert root.service("stop").returncode == 0


def test_a_config_error_is_not_respawned_for_ever(make_root) -> None:
    # Exit 78 (EX_CONFIG, sysexits(3)) is what the agent returns for a bad configuration.
    # supervise-daemon(8) --respawn-max: with a respawn period, more than respawn-max crashes
    # within it make the supervisor give up and exit.  So the agent runs once and is respawned
    # respawn_max times, then never again.  respawn_delay=1 (the least supervise-daemon
    # accepts) only makes the test quicker.
    limit = int(sh_values("respawn_max")["respawn_max"])
    root = make_root(conf_d="respawn_delay=1\n", exit_status=78)
    started = root.service("start")
    assert wait_for(lambda: len(root.runs()) >= limit + 1, timeout=120), (started.stdout, root.runs())
    supervisor = root.supervisor()
    assert supervisor is None or wait_for(lambda: not alive(supervisor)), \
        "the supervisor kept respawning"
    assert len(root.runs()) == limit + 1, root.runs()
    status = root.service("status")
    assert status.returncode != 0 and "status: started" not in status.stdout, status.stdout
