"""The guest as the collectors see it: files under a root, commands through one runner.

Every file a collector reads goes through :class:`Host`, so the same code runs on
the live system (root ``/``) and on a captured fixture tree (``--root DIR``), the
way node_exporter's ``--path.procfs``/``--path.sysfs`` flags let its tests point
real collectors at ``fixtures/``.  Every external command goes through one
:class:`Runner` with a timeout, so FreeBSD's ``sysctl`` output can be replayed on
Linux from fixtures and nothing can hang the daemon.
"""

from __future__ import annotations

import os

from xenguest_agent.log import get_logger
from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Protocol, Sequence, Tuple
else:  # a Protocol is for the type checker; at run time a plain base class
    Protocol = object

log = get_logger(__name__)

DEFAULT_COMMAND_TIMEOUT = 5.0
#: read_text's step: /proc and sysfs files the agent reads are a few KiB at most.
READ_STEP = 16384


class CommandError(Exception):
    """A command could not be run, timed out or exited non-zero."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed."""

    argv: Tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs one command (a fixed argv, never a shell) and returns its output."""

    def __call__(self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        ...


class SubprocessRunner:
    """The live runner: ``subprocess.run`` with a timeout, no shell, C locale."""

    def __call__(self, argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        import subprocess  # imported by the first command: the daemon's Linux path runs none

        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            done = subprocess.run(
                list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                timeout=timeout, env=env, check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise CommandError(f"{argv[0]}: {exc}") from exc
        result = CommandResult(
            tuple(argv), done.returncode,
            done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"),
        )
        log.debug("ran %s -> %d", " ".join(argv), done.returncode)
        return result


class Host:
    """File access under an injectable root plus the one command runner.

    Paths given to the methods are absolute guest paths (``/proc/meminfo``);
    they are resolved under ``root``.  Reading never raises for a missing or
    unreadable file: "no data" is not an error (the caller decides).
    """

    def __init__(self, root: str = "/", run: Optional[Runner] = None) -> None:
        self.root = os.path.abspath(root)
        self.run: Runner = run if run is not None else SubprocessRunner()

    @property
    def is_live(self) -> bool:
        """True when reading the running system rather than a captured tree."""
        return self.root == "/"

    def path(self, guest_path: str) -> str:
        """Resolve a guest path under the root."""
        if not guest_path.startswith("/"):
            raise ValueError(f"guest path must be absolute: {guest_path!r}")
        if self.root == "/":
            return guest_path
        return os.path.join(self.root, guest_path.lstrip("/"))

    def read_text(self, guest_path: str, limit: int = 1 << 20) -> Optional[str]:
        """The file's text (at most ``limit`` bytes), or None if it cannot be read.

        Read in small steps: a buffered ``read(limit)`` allocates ``limit`` bytes first
        (an mmap and munmap of 1 MiB for every /proc/meminfo of the memory tick)."""
        try:
            fd = os.open(self.path(guest_path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        chunks: List[bytes] = []
        size = 0
        try:
            while size < limit:
                chunk = os.read(fd, min(READ_STEP, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")

    def read_line(self, guest_path: str) -> Optional[str]:
        """The first line of a file, stripped (sysfs attributes), or None."""
        text = self.read_text(guest_path, limit=4096)
        if text is None:
            return None
        return text.split("\n", 1)[0].strip()

    def write_text(self, guest_path: str, text: str) -> None:
        """Write a (sysfs/procfs) file under the root; errors propagate (OSError)."""
        with open(self.path(guest_path), "w", encoding="ascii") as handle:
            handle.write(text)

    def exists(self, guest_path: str) -> bool:
        return os.path.exists(self.path(guest_path))

    def listdir(self, guest_path: str) -> Tuple[str, ...]:
        """Sorted directory entries, or () if the directory is missing."""
        try:
            return tuple(sorted(os.listdir(self.path(guest_path))))
        except OSError:
            return ()
