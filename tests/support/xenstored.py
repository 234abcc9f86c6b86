"""A real xenstored for the tests: Debian's C daemon, run standalone under an LD_PRELOAD shim.

Why: every behaviour of the agent that crosses XenStore (exact keys and values, empty values,
transactions, diff publishing, reconnects) must be proven against the daemon a real host runs, not a
mock. Debian's ``xen-utils-4.17`` ships that daemon; ``tests/xenstored/shim.c`` lets it start on a
machine without a hypervisor (see the comment at its top). The tree is then checked with Debian's own
command-line client (``xenstore-read``, ``-write``, ``-ls``, ...), so a check never depends on the
agent's own XenStore adapter.

What the daemon is, seen from here: a process listening on a unix socket (``socket_path``; the agent
reaches it with the spec ``unix:<socket_path>``). Every connection over that socket is dom0: no
permission checks and none of the per-domain quotas (nodes, node size, watches, transactions,
permissions, memory, outstanding requests, transaction nodes) apply to it; only ``path_max`` does
(EINVAL). Its store lives in memory, so every start is a fresh, empty tree. Each request it receives is
logged to ``trace_path`` (``-T``), which ``trace_requests()`` and ``count()`` parse.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

log = logging.getLogger(__name__)

#: The real C daemon from Debian's xen-utils-4.17.
XENSTORED_BIN = Path("/usr/lib/xen-4.17/bin/xenstored")
#: The real ``xenstore-control`` binary; ``/usr/bin/xenstore-control`` is Debian's wrapper script,
#: which refuses to run without a hypervisor.
XENSTORE_CONTROL_BIN = Path("/usr/lib/xen-4.17/bin/xenstore-control")
#: Source of the LD_PRELOAD library, compiled on demand by build_shim().
SHIM_SOURCE = Path(__file__).resolve().parent.parent / "xenstored" / "shim.c"

_CLI_TOOLS = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-rm", "xenstore-chmod",
              "xenstore-list")
_GCC_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
_INSTALL_HINT = ("run .ci/install-deps.sh (as root), or: apt-get install -y --no-install-recommends "
                 "xen-utils-4.17 xenstore-utils gcc libc6-dev")

#: sun_path holds 108 bytes; longer socket paths are moved to a short directory under /tmp.
_SUN_PATH_MAX = 100
_PR_SET_PDEATHSIG = 1


class XenstoredError(RuntimeError):
    """The test bed cannot work: a tool is missing, the shim does not build, or the daemon failed."""


# --------------------------------------------------------------------------------------------------
# Requirements and the shim
# --------------------------------------------------------------------------------------------------

def check_requirements(xenstored: Path = XENSTORED_BIN) -> None:
    """Raise XenstoredError naming the apt package of every missing tool.

    Checked up front so that a missing package is reported as such, rather than as an obscure
    failure of gcc, of the daemon or of a CLI call in the middle of a test.
    """
    missing: List[str] = []
    if not os.access(xenstored, os.X_OK):
        missing.append(f"{xenstored} (apt package xen-utils-4.17)")
    for tool in _CLI_TOOLS:
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt package xenstore-utils)")
    if shutil.which("gcc") is None:
        missing.append("gcc (apt package gcc)")
    if not Path("/usr/include/dlfcn.h").exists():
        missing.append("/usr/include/dlfcn.h (apt package libc6-dev)")
    if missing:
        raise XenstoredError("the real-xenstored test bed needs: " + "; ".join(missing)
                             + ". To install: " + _INSTALL_HINT)


def cache_dir() -> Path:
    """Where built shims are kept: ``$XDG_CACHE_HOME/xenguest-agent-tests`` (``~/.cache`` default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xenguest-agent-tests"


def build_shim(source: Path = SHIM_SOURCE, cache: Optional[Path] = None) -> Path:
    """Compile shim.c into the cache and return the .so path; reuse it while the source is unchanged.

    The file name carries the sha256 of the source and the compiler flags, so an edited shim.c is
    rebuilt automatically and stale builds are never used. The build goes to a temporary name and is
    renamed into place, so concurrent test runs never load a half-written library.
    """
    cache = cache or cache_dir()
    text = source.read_bytes()
    digest = hashlib.sha256(text + " ".join(_GCC_FLAGS).encode()).hexdigest()[:16]
    target = cache / f"xenstored-shim-{digest}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=cache)
    os.close(fd)
    cmd = ["gcc", *_GCC_FLAGS, "-o", tmp, str(source), "-ldl"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise XenstoredError(f"building the xenstored shim failed: {' '.join(cmd)}\n"
                                 f"{proc.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("built %s from %s", target, source)
    return target


# --------------------------------------------------------------------------------------------------
# Values and the trace
# --------------------------------------------------------------------------------------------------

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {b"t": b"\t", b"n": b"\n", b"r": b"\r", b"\\": b"\\"}


def unsanitise(text: bytes) -> bytes:
    """Undo the escaping of xenstore-ls and xenstore-read without -R (libxenstore's sanitise_value).

    Printable ASCII other than backslash is kept; tab, newline, CR and backslash become \\t \\n \\r
    \\\\; bytes below 8 become three octal digits; every other byte becomes \\xHH.
    """
    def one(m: "re.Match[bytes]") -> bytes:
        code = m.group(1)
        if code.startswith(b"x") and len(code) == 3:
            return bytes([int(code[1:], 16)])
        if len(code) == 3:
            return bytes([int(code, 8)])
        return _SIMPLE_ESCAPES.get(code, code)
    return _ESCAPE.sub(one, text)


def decode_value(raw: bytes) -> str:
    """XenStore values are bytes; tests compare str. surrogateescape keeps non-UTF-8 bytes lossless."""
    return raw.decode("utf-8", "surrogateescape")


def parse_ls(output: bytes, prefix: str) -> Dict[str, str]:
    """Parse ``xenstore-ls -f PREFIX`` output into {path relative to prefix: value}.

    Each node is one line ``/full/path = "VALUE"``: paths hold no spaces and VALUE is escaped (so it
    has no newline), and quotes inside it are not escaped, so the value is everything between the
    first ``= "`` and the line's last ``"``.
    """
    base = prefix.rstrip("/") + "/"
    nodes: Dict[str, str] = {}
    for line in output.split(b"\n"):
        if not line:
            continue
        path, sep, rest = line.partition(b' = "')
        if not sep or not rest.endswith(b'"'):
            raise XenstoredError(f"unexpected xenstore-ls line: {line!r}")
        name = path.decode()
        if not name.startswith(base):
            raise XenstoredError(f"xenstore-ls printed {name!r} outside {prefix!r}")
        nodes[name[len(base):]] = decode_value(unsanitise(rest[:-1]))
    return nodes


class Request(NamedTuple):
    """One request xenstored received, as its -T trace logged it."""
    op: str
    #: The first argument: the node path for node operations, None for requests without one
    #: (TRANSACTION_START, TRANSACTION_END, RESET_WATCHES, ...). As sent: relative paths stay relative.
    path: Optional[str]


#: Requests whose first argument is a node path (xs_wire.h); others get path None.
PATH_OPS = frozenset({
    "DIRECTORY", "DIRECTORY_PART", "READ", "GET_PERMS", "WATCH", "UNWATCH", "WRITE", "MKDIR", "RM",
    "SET_PERMS",
})

# "IN 0x55d0c0de1b80 20261123 10:56:27 WRITE (/a/b hello world)": direction, connection, date,
# time, operation, then the payload with each NUL printed as a space, up to ")" and the end of the
# line. A payload with a newline continues on the next lines, which match nothing here.
_TRACE_LINE = re.compile(r"^IN (\S+) \d{8} \d\d:\d\d:\d\d (\w+) \((.*)$")


def parse_trace(text: str) -> List[Request]:
    """Every request (IN line) of a xenstored -T trace, in order."""
    requests: List[Request] = []
    for line in text.splitlines():
        m = _TRACE_LINE.match(line)
        if not m:
            continue
        op, payload = m.group(2), m.group(3)
        path = payload.split(" ", 1)[0] if op in PATH_OPS else None
        requests.append(Request(op, path or None))
    return requests


# --------------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------------

# Loaded here, in the parent: the child of a multi-threaded parent must not dlopen between fork and
# exec (another thread may have held the loader lock at the fork).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Make the kernel SIGKILL xenstored when the test process dies, so no daemon outlives a run.

    (The kernel ties this to the thread that forked: start daemons from a thread that outlives them.)
    """
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class Xenstored:
    """One real xenstored process with its own socket, trace, log and scratch files under workdir.

    Quota arguments map to the daemon's options (``xenstored --help``); None keeps its default. They
    limit unprivileged guest domains only, so over the unix socket (dom0) only ``path_max`` has an
    effect; ``control("quota")`` shows what the daemon is running with.
    """

    def __init__(
        self,
        workdir: os.PathLike[str] | str,
        *,
        quota_nodes: Optional[int] = None,
        quota_node_size: Optional[int] = None,
        quota_watches: Optional[int] = None,
        quota_transactions: Optional[int] = None,
        quota_permissions: Optional[int] = None,
        quota_memory: Optional[int] = None,
        quota_outstanding: Optional[int] = None,
        quota_transaction_nodes: Optional[int] = None,
        path_max: Optional[int] = None,
        domains: Iterable[int] = (),
        extra_args: Sequence[str] = (),
        binary: Path = XENSTORED_BIN,
        shim: Optional[Path] = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.binary = Path(binary)
        self.shim = shim
        self.start_timeout = start_timeout
        #: Domain ids the shim reports as existing besides 0 (xenstored ignores permissions that
        #: name a domain that does not exist, and chmod to one fails with ENOENT).
        self.domains = tuple(int(d) for d in domains)
        self.args = self._quota_args(quota_nodes, quota_node_size, quota_watches, quota_transactions,
                                     quota_permissions, quota_memory, quota_outstanding,
                                     quota_transaction_nodes, path_max) + list(extra_args)
        self.trace_path = self.workdir / "xenstored.trace"
        self.log_path = self.workdir / "xenstored.log"
        self.proc_xen_dir = self.workdir / "proc-xen"
        self._short_dir: Optional[str] = None
        self._socket_path = self._choose_socket_path()
        self._proc: Optional[subprocess.Popen] = None
        self._log_file = None

    @staticmethod
    def _quota_args(nodes: Optional[int], node_size: Optional[int], watches: Optional[int],
                    transactions: Optional[int], permissions: Optional[int],
                    memory: Optional[int], outstanding: Optional[int],
                    transaction_nodes: Optional[int], path_max: Optional[int]) -> List[str]:
        """xenstored options: -E nodes, -S node size, -W watches, -t transactions, -A permissions
        per node, -M path length, -Q memory|outstanding|transaction-nodes=N."""
        args: List[str] = []
        for flag, value in (("-E", nodes), ("-S", node_size), ("-W", watches),
                            ("-t", transactions), ("-A", permissions), ("-M", path_max)):
            if value is not None:
                args += [flag, str(int(value))]
        for name, value in (("memory", memory), ("outstanding", outstanding),
                            ("transaction-nodes", transaction_nodes)):
            if value is not None:
                args += ["-Q", f"{name}={int(value)}"]
        return args

    def _choose_socket_path(self) -> Path:
        """workdir/xenstored.sock, unless that is too long for a unix socket (deep pytest tmp_path)."""
        path = self.workdir / "xenstored.sock"
        if len(str(path)) <= _SUN_PATH_MAX:
            return path
        self._short_dir = tempfile.mkdtemp(prefix="xs-")
        return Path(self._short_dir) / "sock"

    # ---- properties -------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The unix socket xenstored listens on (its XENSTORED_PATH)."""
        return self._socket_path

    @property
    def spec(self) -> str:
        """The agent's --xenstore spec for this daemon."""
        return f"unix:{self._socket_path}"

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> List[str]:
        """The daemon's argv: foreground (-N), every request traced (-T), then the quota options."""
        return [str(self.binary), "-N", "-T", str(self.trace_path), *self.args]

    def daemon_env(self) -> Dict[str, str]:
        """Environment of the daemon: the shim preloaded, its scratch dir, the socket path."""
        if self.shim is None:
            raise XenstoredError("no shim: call build_shim() or pass shim=")
        env = {k: v for k, v in os.environ.items() if not k.startswith("XENSTORED_")}
        env.update(
            LD_PRELOAD=str(self.shim),
            XENSTORED_SHIM_DIR=str(self.proc_xen_dir),
            XENSTORED_SHIM_DOMAINS=",".join(str(d) for d in self.domains),
            XENSTORED_PATH=str(self._socket_path),
            XENSTORED_RUNDIR=str(self.workdir),
        )
        return env

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> "Xenstored":
        """Start the daemon and return once its socket accepts connections.

        Raises XenstoredError with the daemon's own output if it exits or does not listen within
        start_timeout seconds.
        """
        if self.running:
            raise XenstoredError(f"xenstored already running (pid {self.pid})")
        check_requirements(self.binary)
        if self.shim is None:
            self.shim = build_shim()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc_xen_dir.mkdir(exist_ok=True)
        # A socket left by a killed daemon would make the readiness check below connect to
        # nothing (ECONNREFUSED) and, worse, hide a daemon that failed to bind.
        self._unlink_socket()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"--- start {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        started = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(), env=self.daemon_env(), cwd=str(self.workdir),
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        try:
            self._wait_until_listening(started)
        except BaseException:
            self.kill()
            raise
        log.debug("xenstored pid %s ready on %s in %.3f s", self.pid, self._socket_path,
                  time.monotonic() - started)
        return self

    def _wait_until_listening(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.start_timeout
        last_error: Optional[OSError] = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise XenstoredError(f"xenstored exited with status {code} at start-up; "
                                     f"command: {' '.join(self.command())}\n{self._log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1.0)
                    sock.connect(str(self._socket_path))
                return
            except OSError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise XenstoredError(
                    f"xenstored did not accept connections on {self._socket_path} within "
                    f"{self.start_timeout:g} s ({last_error}); command: {' '.join(self.command())}"
                    f"\n{self._log_tail()}")
            time.sleep(0.005)

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            text = ""
        return f"xenstored output ({self.log_path}):\n{text.strip() or '(none)'}"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the daemon (SIGKILL after timeout) and remove its socket. Safe to call twice."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("xenstored pid %s ignored SIGTERM; killing it", self._proc.pid)
                self._proc.kill()
                self._proc.wait()
        self._close_log()
        self._unlink_socket()

    def kill(self) -> None:
        """SIGKILL the daemon, like a crash: the socket file stays behind (connects are refused)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_log()

    def restart(self) -> "Xenstored":
        """Stop and start again on the same socket: the new daemon has a fresh, empty tree.

        The trace file is appended to, so marks taken with mark() stay valid across restarts.
        """
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the daemon and remove the short socket directory, if one was needed."""
        self.stop()
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def __enter__(self) -> "Xenstored":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _unlink_socket(self) -> None:
        try:
            self._socket_path.unlink()
        except FileNotFoundError:
            pass

    # ---- Debian's command-line client -------------------------------------------------------

    def cli_env(self) -> Dict[str, str]:
        """Environment for xenstore-* tools: this daemon's socket, and no shim."""
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env["XENSTORED_PATH"] = str(self._socket_path)
        return env

    def cli(self, tool: str, *args: str, check: bool = True,
            timeout: float = 10.0) -> "subprocess.CompletedProcess[bytes]":
        """Run ``tool -s ARGS`` against this daemon (-s: the socket only, never /dev/xen/xenbus).

        With check, a non-zero exit raises XenstoredError carrying the tool's message and, if the
        daemon died, saying so.
        """
        argv = [tool, "-s", *args]
        proc = subprocess.run(argv, env=self.cli_env(), capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise XenstoredError(self._cli_failure(argv, proc))
        return proc

    def _cli_failure(self, argv: Sequence[str], proc: "subprocess.CompletedProcess[bytes]") -> str:
        msg = f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
        if not self.running:
            msg += f"; xenstored is not running\n{self._log_tail()}"
        return msg

    def read(self, path: str) -> Optional[str]:
        """The value at path, or None when the node does not exist.

        The client's exit status does not say why a read failed; over the dom0 socket there are no
        permission errors, so a failure while the daemon runs means "no such node".
        """
        proc = self.cli("xenstore-read", "-R", path, check=False)
        if proc.returncode == 0:
            # -R prints the raw bytes and, unlike the escaped form, adds no newline.
            return decode_value(proc.stdout)
        if not self.running or b"xs_open" in proc.stderr:
            raise XenstoredError(self._cli_failure(["xenstore-read", "-R", path], proc))
        return None

    def write(self, path: str, value: str) -> None:
        """Write value at path (raw: no unescaping of backslashes); an empty value is allowed."""
        self.cli("xenstore-write", "-R", path, value)

    def rm(self, path: str) -> None:
        """Remove path and everything below it (no error if it does not exist)."""
        self.cli("xenstore-rm", path)

    def chmod(self, path: str, *perms: str, recursive: bool = False) -> None:
        """Set permissions, e.g. chmod(p, "n0", "b5"): owner first (n/r/w/b + domid).

        ``xenstore-chmod -r`` lists then sets node by node, with no transaction: a node removed in
        between (an agent sweeping) fails it with ENOENT.  The walk is then retried, as in dump."""
        argv = ["xenstore-chmod", *(["-r"] if recursive else []), path, *perms]
        for attempt in range(3):
            proc = self.cli(*argv, check=False)
            if proc.returncode == 0:
                return
            torn = recursive and b"No such file or directory" in proc.stderr and self.running
            if not torn or attempt == 2:
                raise XenstoredError(self._cli_failure(["xenstore-chmod", "-s", *argv[1:]], proc))

    def ls(self, path: str) -> List[str]:
        """Names of the children of path."""
        out = self.cli("xenstore-list", path).stdout.decode()
        return [line for line in out.split("\n") if line]

    def exists(self, path: str) -> bool:
        return self.read(path) is not None

    def dump(self, prefix: str = "/") -> Dict[str, str]:
        """Every node below prefix as {path relative to prefix: value}; {} if prefix does not exist.

        Intermediate nodes are included (with their value, usually ""), so a test sees exactly the
        tree a toolstack would see.
        """
        # xenstored refuses a path with a trailing slash (EINVAL); "/" itself is fine.
        prefix = prefix.rstrip("/") or "/"
        # xenstore-ls -s lists then reads node by node, with no transaction: a node removed
        # in between (an agent sweeping while the test looks) prints a "path:" error line.
        # The walk is then retried; three torn walks in a row are a real failure.
        for attempt in range(3):
            proc = self.cli("xenstore-ls", "-f", prefix, check=False)
            if proc.returncode != 0:
                if b"No such file or directory" in proc.stderr and self.running:
                    return {}
                raise XenstoredError(self._cli_failure(["xenstore-ls", "-f", prefix], proc))
            try:
                return parse_ls(proc.stdout, prefix)
            except XenstoredError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def control(self, *args: str) -> str:
        """A XS_CONTROL command through the real xenstore-control, e.g. control("quota").

        xenstore-control has no -s option; it finds the daemon through XENSTORED_PATH.
        """
        proc = subprocess.run([str(XENSTORE_CONTROL_BIN), *args], env=self.cli_env(),
                              capture_output=True, timeout=10)
        if proc.returncode != 0:
            raise XenstoredError(self._cli_failure([str(XENSTORE_CONTROL_BIN), *args], proc))
        return proc.stdout.decode()

    # ---- the trace --------------------------------------------------------------------------

    def trace_requests(self) -> List[Request]:
        """Every request the daemon (and its predecessors on this workdir) received, in order."""
        try:
            text = self.trace_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return parse_trace(text)

    def mark(self) -> int:
        """A position in the trace, for count(since=...)."""
        return len(self.trace_requests())

    def count(self, op: Optional[str] = None, since: Optional[int] = None,
              prefix: Optional[str] = None) -> int:
        """How many requests arrived after the mark since (all if None), of type op (e.g. "WRITE";
        any if None), on paths starting with prefix (any if None).

        The CLI helpers above are requests too: take the mark after using them.
        """
        requests = self.trace_requests()[since or 0:]
        return sum(1 for r in requests
                   if (op is None or r.op == op)
                   and (prefix is None or (r.path is not None and r.path.startswith(prefix))))

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Xenstored {self._socket_path} {state}>"


__all__ = [
    "PATH_OPS", "Request", "SHIM_SOURCE", "XENSTORED_BIN", "Xenstored", "XenstoredError",
    "build_shim", "cache_dir", "check_requirements", "decode_value", "parse_ls", "parse_trace",
    "unsanitise",
]
