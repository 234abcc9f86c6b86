"""A FreeBSD rc(8) world on Linux, for running rc.d/xenguest_agent unmodified.

tests/support/freebsd_rcroot/ holds models written from FreeBSD's sources (each file says
which): /etc/rc.subr, /etc/defaults/rc.conf, ps, pwait, sysctl, limits, daemon(8), and a
stand-in for the agent's console script.  FreeBSDRoot copies them into a directory, adds the
script under test at /usr/local/etc/rc.d/xenguest_agent byte for byte, and runs it as
service(8) does (env -i HOME=/ PATH=/sbin:/bin:/usr/sbin:/usr/bin <script> <verb>) inside a
chroot of that directory, in a private mount namespace of an unprivileged user namespace, so
every absolute path in the script (/etc/rc.subr, /usr/sbin/daemon, /var/run, /usr/local) is the
model's and nothing on the host is touched.  The commands are started by a small init(8)
model (init_main below): a child subreaper that reaps every orphan at once, as FreeBSD's init
does, so a daemon that has exited is gone for kill -0 and pwait and not left a zombie.
/bin/sh is dash (FreeBSD's sh is an ash derivative); the host lends the dynamic libraries,
python3 (the models' interpreter), /proc (read by the ps model) and a few plain utilities
(cat, sleep, mkdir, mv, rm, env).

Model state lives under /.model: the sysctl values, which rc.subr and daemon(8) revisions to
model, the process titles the daemon model registers for ps, and what each run of the agent
stand-in recorded (its argv, open-files limit and parent).
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

MODEL = Path(__file__).resolve().parent / "freebsd_rcroot"
SCRIPT_IN_ROOT = "usr/local/etc/rc.d/xenguest_agent"
HOST_TOOLS = {"bin/sh": "dash", "bin/cat": "cat", "bin/sleep": "sleep", "bin/mkdir": "mkdir",
              "bin/mv": "mv", "bin/rm": "rm", "usr/bin/env": "env", "usr/bin/python3": "python3"}
ENTER = r"""
set -eu
root=$1; shift
mount --bind /usr/lib "$root/usr/lib"
mount --bind /usr/lib64 "$root/usr/lib64"
mount --bind /dev/null "$root/dev/null"
mount --rbind /proc "$root/proc"
while [ "$1" != -- ]; do
    mount --bind "$2" "$root/$1"
    shift 2
done
shift
exec chroot "$root" /usr/bin/env -i HOME=/ PATH=/sbin:/bin:/usr/sbin:/usr/bin "$@"
"""


class FreeBSDRoot:
    """One FreeBSD guest's rc world: configure it, run service verbs, inspect what ran."""

    def __init__(self, root: Path, script: Path, vm_guest: str = "xen", rc_conf: str = "",
                 rc_subr: str = "main", daemon: str = "14") -> None:
        self.root = root
        shutil.copytree(MODEL, root, symlinks=True)
        for d in ("usr/lib", "usr/lib64", "proc", "dev", "var/run", "var/log", "tmp",
                  "usr/local/etc/rc.d", ".model/sysctl", ".model/agent", ".model/proc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "dev/null").touch()
        (root / "lib").symlink_to("usr/lib")
        (root / "lib64").symlink_to("usr/lib64")
        self.binds: list[str] = []
        for target, tool in HOST_TOOLS.items():
            # the distribution's own binaries: they run on the bound /usr/lib (a python3 found
            # on PATH may be a pyenv shim or a venv)
            found = shutil.which(tool, path="/usr/bin:/bin")
            if found is None:
                raise RuntimeError(f"{tool} is needed by the FreeBSD rc model and is missing")
            (root / target).touch()
            self.binds += [target, os.path.realpath(found)]
        shutil.copy2(script, root / SCRIPT_IN_ROOT)
        (root / ".model/rc.subr-variant").write_text(rc_subr + "\n")
        (root / ".model/daemon-variant").write_text(daemon + "\n")
        self.init = subprocess.Popen([sys.executable, __file__, "--init"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.sysctl("kern.vm_guest", vm_guest)
        self.sysctl("security.jail.jailed", "0")
        self.rc_conf(rc_conf)

    def sysctl(self, oid: str, value: str) -> None:
        (self.root / ".model/sysctl" / oid).write_text(value + "\n")

    def rc_conf(self, text: str) -> None:
        (self.root / "etc/rc.conf").write_text(text)

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run argv inside the root (as root of a private user namespace)."""
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RuntimeError("unshare (util-linux) is needed by the FreeBSD rc model")
        cmd = [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private",
               "/bin/sh", "-c", ENTER, "enter", str(self.root), *self.binds, "--", *argv]
        assert self.init.stdin is not None and self.init.stdout is not None
        self.init.stdin.write(json.dumps({"argv": cmd, "timeout": timeout}) + "\n")
        self.init.stdin.flush()
        answer = json.loads(self.init.stdout.readline())
        if answer["returncode"] is None:
            raise subprocess.TimeoutExpired(cmd, timeout, answer["stdout"], answer["stderr"])
        return subprocess.CompletedProcess(cmd, answer["returncode"], answer["stdout"],
                                           answer["stderr"])

    def service(self, verb: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """What `service xenguest_agent <verb>` does: the script, a clean environment."""
        return self.run("/" + SCRIPT_IN_ROOT, verb, timeout=timeout)

    def read(self, relative: str) -> str | None:
        try:
            return (self.root / relative).read_text()
        except FileNotFoundError:
            return None

    def agents(self) -> dict[int, dict[str, object]]:
        """Every run of the agent stand-in: pid -> {"argv": [...], "nofile": str, "ppid": int}."""
        runs: dict[int, dict[str, object]] = {}
        for path in (self.root / ".model/agent").iterdir():
            if not path.name.isdigit():
                continue
            argv: list[str] = []
            run: dict[str, object] = {"argv": argv}
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "arg":
                    argv.append(value)
                else:
                    run[key] = int(value) if key == "ppid" else value
            runs[int(path.name)] = run
        return runs

    def wait_for(self, condition, what: str, timeout: float = 60) -> None:
        """Poll an observable condition; the timeout only guards against a hang."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def started_processes(self) -> list[int]:
        """Live processes whose root directory is this root: only what the model started."""
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
        """Kill what the model started (daemon models, agent stand-ins, their children), by
        pid, until none is left (a supervisor may restart its child meanwhile); then end the
        init model."""
        deadline = time.monotonic() + 60
        while (left := self.started_processes()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        assert self.init.stdin is not None
        self.init.stdin.close()
        self.init.wait(timeout=60)
        if self.init.stdout is not None:
            self.init.stdout.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for every purpose here
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def init_main(requests: IO[str], answers: IO[str]) -> None:
    """The init(8) model: run each requested command, reap every child and orphan at once.

    PR_SET_CHILD_SUBREAPER (prctl(2) option 36) makes the processes that daemon(3) orphans
    this process's children, as they are init's on FreeBSD."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    finished: dict[int, int] = {}

    def reap(signo: int, frame: object) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            finished[pid] = status

    signal.signal(signal.SIGCHLD, reap)
    for line in requests:
        request = json.loads(line)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            try:
                os.execv(request["argv"][0], request["argv"])
            finally:
                os._exit(127)
        os.close(out_w)
        os.close(err_w)
        # Like a caller reading the command's output (a terminal, ssh, $(...)): done at end
        # of file on both, so a daemon that keeps them open keeps the caller waiting.
        deadline = time.monotonic() + request["timeout"]
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        with selectors.DefaultSelector() as selector:
            for fd in chunks:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.1):
                    data = os.read(key.fd, 65536)
                    if data:
                        chunks[key.fd].append(data)
                    else:
                        selector.unregister(key.fd)
            at_eof = not selector.get_map()
        while pid not in finished and time.monotonic() < deadline:
            time.sleep(0.01)
        returncode: int | None = None
        if pid in finished and at_eof:
            returncode = os.waitstatus_to_exitcode(finished.pop(pid))
        elif pid not in finished:
            os.kill(pid, signal.SIGKILL)
        os.close(out_r)
        os.close(err_r)
        answers.write(json.dumps({"returncode": returncode,
                                  "stdout": b"".join(chunks[out_r]).decode(errors="replace"),
                                  "stderr": b"".join(chunks[err_r]).decode(errors="replace")})
                      + "\n")
        answers.flush()

if __name__ == "__main__" and sys.argv[1:] == ["--init"]:
    init_main(sys.stdin, sys.stdout)
