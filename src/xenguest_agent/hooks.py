"""Administrator hook scripts (and the power commands), run off the loop, trusted and bounded.

``<hook directory>/<event>/`` holds the scripts for one event, run with
run-parts(8) semantics: names sorted in C order, only names of letters,
digits, ``_`` and ``-`` (so ``foo.dpkg-old`` and editor backups are ignored).

A hook runs as root, so only what root put there may run:

* the hook directory is absolute, and every directory from ``/`` down to the
  event directory is owned by root and not writable by group or others (a
  sticky world-writable directory such as ``/tmp`` is refused too).  The chain
  is walked with one descriptor per component, each opened relative to its
  parent with ``O_NOFOLLOW``, so a component swapped for a symlink is never
  followed;
* each hook is opened ``O_NOFOLLOW`` relative to the checked directory's
  descriptor, checked with ``fstat`` on that descriptor (regular, executable,
  owned by root, not group/other-writable) and executed through that same
  descriptor (``/proc/self/fd/N`` on Linux, ``/dev/fd/N`` on FreeBSD with
  fdescfs mounted ``nodup``; see trust.py), so what runs is what was checked,
  whatever happens to the name.

Each hook and each command runs on a worker thread, never on the agent's
loop, in a session (process group) of its own, with stdin from /dev/null, cwd
``/``, a fixed environment and a timeout at which the whole group is killed
(SIGKILL: a shell's background ``sleep`` dies too).  A hook is finished when
its process exits, even if a background child still holds its output.  Output
is read as it comes and at most :data:`OUTPUT_LIMIT` bytes are kept (the head
and the tail) for the log.  Jobs of one :class:`Hooks` run one after another,
in the order they were started.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import threading
import time

from xenguest_agent.log import INFO, WARNING, get_logger
from xenguest_agent.records import dataclass
from xenguest_agent.trust import UntrustedError, fd_executable, open_trusted_directory, open_trusted_hook

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Callable, List, Mapping, Optional, Sequence, Tuple

log = get_logger(__name__)

#: Events with a hook directory.  pre-* run before the action, post-* after.
EVENTS = ("pre-shutdown", "pre-reboot", "pre-suspend", "post-resume", "post-migrate")

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # run-parts' default (--lsbsysinit off)

OUTPUT_LIMIT = 4096  # bytes of a hook's output kept for the log: half head, half tail
_CHUNK = 65536
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class HookResult:
    path: str
    returncode: Optional[int]  # None unless status is "exited"
    output: str                # at most OUTPUT_LIMIT bytes: the head and the tail
    seconds: float
    status: str = "exited"     # "exited", "timeout", "cancelled", "failed" (could not start)
    dropped: int = 0           # bytes of output between the kept head and tail


class _Output:
    """Keeps the first and the last OUTPUT_LIMIT/2 bytes of a stream."""

    def __init__(self) -> None:
        self.head = b""
        self.tail = b""
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        half = OUTPUT_LIMIT // 2
        if len(self.head) < half:
            take = half - len(self.head)
            self.head += data[:take]
            data = data[take:]
        if data:
            self.tail = (self.tail + data[-half:])[-half:]

    def text(self) -> str:
        return (self.head + self.tail).decode("utf-8", "replace")

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)


class HookJob:
    """The hooks of one event (or one command), run in order on a worker thread."""

    def __init__(self, name: str, timeout: float, notify: Callable[[], None],
                 previous: Optional["HookJob"]) -> None:
        self.name = name
        self.timeout = timeout
        self._notify = notify
        self._previous = previous
        self._results: List[HookResult] = []
        self._finished = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._wake: Optional[Tuple[int, int]] = None  # a pipe cancel() writes to
        self._group: Optional[int] = None  # the running process's group, until it is reaped

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def results(self) -> Tuple[HookResult, ...]:
        with self._lock:
            return tuple(self._results)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once the job has finished."""
        return self._finished.wait(timeout)

    def cancel(self) -> None:
        """Kill the running hook's process group and run nothing more (returns at once)."""
        self._cancelled.set()
        with self._lock:
            # killed here, not left to the worker: the daemon may exit right after this,
            # and its worker threads with it
            if self._group is not None:
                _kill_group(self._group)
            if self._wake is not None:
                os.write(self._wake[1], b"x")

    # --- on the worker thread ----------------------------------------------------------

    def _start(self, work: Callable[["HookJob"], None]) -> None:
        thread = threading.Thread(target=self._main, args=(work,), daemon=True,
                                  name=f"hooks:{self.name}")
        thread.start()

    def _main(self, work: Callable[["HookJob"], None]) -> None:
        try:
            if self._previous is not None:
                self._previous.wait()
                self._previous = None
            if not self._cancelled.is_set():
                work(self)
        except Exception:  # a bug here must not leave the job unfinished for ever
            log.exception("hooks: job %s failed", self.name)
        finally:
            self._finished.set()
            try:
                self._notify()
            except Exception:
                log.exception("hooks: notifying the end of %s failed", self.name)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def record(self, result: HookResult) -> None:
        with self._lock:
            self._results.append(result)
        level = INFO if result.status == "exited" and result.returncode == 0 \
            else WARNING
        how = {"exited": f"exited {result.returncode}",
               "timeout": f"killed at the {self.timeout:g}s timeout",
               "cancelled": "killed: the agent is stopping",
               "failed": "could not run"}.get(result.status, result.status)
        extra = f" ({result.dropped} bytes of output not kept)" if result.dropped else ""
        log.log(level, "%s (%s) %s after %.2fs%s; output: %s", result.path, self.name, how,
                result.seconds, extra, result.output.strip() or "(none)")

    def execute(self, shown: str, argv: Sequence[str], env: Mapping[str, str],
                executable: Optional[str] = None, pass_fds: Tuple[int, ...] = ()) -> HookResult:
        """Run one process in a new session, bounded by the job's timeout and cancel()."""
        import subprocess  # imported by the first hook or command: most daemons run none

        started = time.monotonic()
        try:
            proc = subprocess.Popen(list(argv), executable=executable, pass_fds=pass_fds,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=dict(env), cwd="/",
                                    start_new_session=True)
        except (OSError, ValueError) as exc:
            return HookResult(shown, None, str(exc)[:OUTPUT_LIMIT], time.monotonic() - started,
                              "failed")
        assert proc.stdout is not None
        output = _Output()
        status = self._supervise(proc, proc.stdout.fileno(), output, started + self.timeout)
        proc.stdout.close()
        return HookResult(shown, proc.returncode if status == "exited" else None, output.text(),
                          time.monotonic() - started, status, output.dropped)

    def _supervise(self, proc: "subprocess.Popen[bytes]", out: int, output: _Output,
                   deadline: float) -> str:
        wake = os.pipe()
        os.set_blocking(out, False)
        pidfd = _pidfd(proc.pid)
        with self._lock:
            self._wake = wake
            self._group = proc.pid  # start_new_session: the group id is the pid
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(out, selectors.EVENT_READ)
                sel.register(wake[0], selectors.EVENT_READ)
                if pidfd is not None:
                    sel.register(pidfd, selectors.EVENT_READ)
                while True:
                    if self._cancelled.is_set() or time.monotonic() >= deadline:
                        _kill_group(proc.pid)
                        proc.wait()
                        _drain(out, output)
                        return "cancelled" if self._cancelled.is_set() else "timeout"
                    with self._lock:  # reaped and forgotten at once: cancel() never kills a
                        if proc.poll() is not None:  # reused pid
                            self._group = None
                    if self._group is None:  # finished at its exit, not at pipe EOF
                        _drain(out, output)
                        return "exited"
                    remaining = deadline - time.monotonic()
                    # without a pidfd (FreeBSD) the exit is noticed by polling
                    limit = remaining if pidfd is not None else min(remaining, 0.05)
                    for key, _ in sel.select(max(limit, 0.0)):
                        if key.fd == out and not _read(out, output):
                            sel.unregister(out)
                        elif key.fd == wake[0]:
                            os.read(wake[0], 64)
        finally:
            with self._lock:
                self._wake = self._group = None
                for fd in wake:
                    os.close(fd)
            if pidfd is not None:
                os.close(pidfd)


def _pidfd(pid: int) -> Optional[int]:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(fd: int, output: _Output) -> bool:
    """Read what is there; False at end of file."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return True
    if not data:
        return False
    output.add(data)
    return True


def _drain(fd: int, output: _Output) -> None:
    """What the finished process left in the pipe, without waiting for EOF
    (a background child may hold the pipe open for ever)."""
    for _ in range(OUTPUT_LIMIT // _CHUNK + 16):
        try:
            data = os.read(fd, _CHUNK)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        output.add(data)


class Hooks:
    """Finds and runs the hooks of one hook directory, and the power commands."""

    def __init__(self, directory: str, timeout: float,
                 notify: Callable[[], None] = lambda: None) -> None:
        if not os.path.isabs(directory):
            raise ValueError(f"the hook directory must be an absolute path, not {directory!r}")
        self.directory = os.path.normpath(directory)
        self.timeout = timeout
        self.notify = notify
        self._lock = threading.Lock()
        self._jobs: List[HookJob] = []

    def _new_job(self, name: str, timeout: float) -> HookJob:
        with self._lock:
            self._jobs = [job for job in self._jobs if not job.done]
            previous = self._jobs[-1] if self._jobs else None
            job = HookJob(name, timeout, self.notify, previous)
            self._jobs.append(job)
        return job

    def start(self, event: str, details: Mapping[str, str]) -> HookJob:
        """Run the hooks of ``event`` in order, after any job still running; returns at once."""
        if event not in EVENTS:
            raise ValueError(f"unknown hook event {event!r}")
        env = {"PATH": PATH, "LANG": "C", "XENGUEST_EVENT": event}
        env.update({f"XENGUEST_{k.upper()}": v for k, v in details.items()})
        job = self._new_job(event, self.timeout)
        job._start(lambda j: self._run_event(j, event, env))
        return job

    def start_command(self, name: str, argv: Sequence[str], timeout: float) -> HookJob:
        """Run one configured command (found on PATH) the same way; returns at once."""
        job = self._new_job(name, timeout)
        env = {"PATH": PATH, "LANG": "C"}
        job._start(lambda j: j.record(j.execute(" ".join(argv), argv, env)))
        return job

    def wait_all(self, timeout: float) -> bool:
        """Wait until every job started so far is done (they run one after another);
        False when some still runs after ``timeout`` seconds."""
        with self._lock:
            last = self._jobs[-1] if self._jobs else None
        return last is None or last.wait(timeout)

    def cancel_all(self) -> None:
        """Cancel every job (the daemon is stopping)."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()

    def _run_event(self, job: HookJob, event: str, env: Mapping[str, str]) -> None:
        folder = os.path.join(self.directory, event)
        names = self._names(folder)
        for name in names:
            if job.cancelled:
                return
            shown = os.path.join(folder, name)
            try:
                directory_fd = open_trusted_directory(folder)
            except (UntrustedError, OSError) as exc:
                log.warning("hooks: not running %s: %s", shown, exc)
                return
            try:
                fd = open_trusted_hook(directory_fd, name, shown)
            except UntrustedError as exc:
                log.warning("hooks: skipping %s", exc)
                continue
            finally:
                os.close(directory_fd)
            try:
                job.record(self._run_fd(job, fd, shown, event, env))
            finally:
                os.close(fd)

    def _names(self, folder: str) -> List[str]:
        try:
            fd = open_trusted_directory(folder)
        except FileNotFoundError:
            return []
        except (UntrustedError, OSError) as exc:
            log.warning("hooks: not running any hook of %s: %s", folder, exc)
            return []
        try:
            names = sorted(os.listdir(fd))
        finally:
            os.close(fd)
        kept = []
        for name in names:
            if _NAME.match(name):
                kept.append(name)
            else:
                log.debug("hooks: ignoring %s (name is not [A-Za-z0-9_-]+)", name)
        return kept

    def _run_fd(self, job: HookJob, fd: int, shown: str, event: str,
                env: Mapping[str, str]) -> HookResult:
        executable = fd_executable(fd)
        if executable is None:
            return HookResult(shown, None, "no /proc/self/fd or /dev/fd to run the checked "
                              "descriptor (FreeBSD: mount -t fdescfs -o nodup fdesc /dev/fd)",
                              0.0, "failed")
        return job.execute(shown, [shown, event], {**env, "XENGUEST_HOOK": shown},
                           executable=executable, pass_fds=(fd,))
