"""What applying a setting does, as data: file writes, removals and commands.

A backend turns the wanted configuration into a tuple of steps (pure, apart
from reading the current files through the :class:`~xenguest_agent.host.Host`
root), so tests compare exact files and argv, and applying the same setting
twice yields an empty plan: no file changes, nothing runs.  :func:`execute`
performs the steps in order and stops at the first failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from xenguest_agent.host import CommandError, Host
from xenguest_agent.records import dataclass
from xenguest_agent.staticip.setting import NicConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol, Union
    Step = Union["WriteFile", "RemoveFile", "Run"]
else:  # a Protocol is for the type checker; at run time a plain base class
    Protocol = object

COMMAND_TIMEOUT = 60.0
OUTPUT_IN_MESSAGE = 160


@dataclass(frozen=True)
class WriteFile:
    """Replace a file atomically (written beside it, then renamed)."""

    path: str
    text: str
    mode: int = 0o644


@dataclass(frozen=True)
class RemoveFile:
    path: str


@dataclass(frozen=True)
class Run:
    """One command, a fixed argv (never a shell).  ``check=False`` for a step
    whose failure does not matter (``ifdown`` of an interface that is down).
    ``undo``: the command that reverses it, run (best effort) when a later step
    fails, after the files changed since are put back."""

    argv: tuple[str, ...]
    check: bool = True
    timeout: float = COMMAND_TIMEOUT
    undo: tuple[str, ...] | None = None




@dataclass(frozen=True)
class Nic:
    """The guest interface the toolstack's VIF names (``name`` is checked by the
    manager to be a plain interface name before it reaches a path or argv)."""

    name: str
    mac: str | None


class Backend(Protocol):
    """One way the guest persists its network configuration."""

    name: str
    state_dir: str

    def plan(self, host: Host, nic: Nic, old: NicConfig, new: NicConfig) -> tuple[Step, ...]:
        """The steps that take ``nic`` from ``old`` (what the agent applied before)
        to ``new``; empty when the guest already has ``new``."""
        ...


class ApplyFailed(Exception):
    """A step failed; the message says which and why (it goes to error-msg)."""


def file_changes(host: Host, wanted: Iterable[tuple[str, str | None, int]]) -> list[Step]:
    """The writes/removals that make each ``(path, text or None, mode)`` true."""
    steps: list[Step] = []
    for path, text, mode in wanted:
        current = host.read_text(path)
        if text is None:
            if current is not None or host.exists(path):
                steps.append(RemoveFile(path))
        elif current != text:
            steps.append(WriteFile(path, text, mode))
    return steps


def _write(host: Host, step: WriteFile) -> None:
    target = host.path(step.path)
    folder = os.path.dirname(target)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    import tempfile  # only when a file changes: a request that changes nothing never loads it

    fd, temporary = tempfile.mkstemp(prefix=".xenguest-agent.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), step.mode)
            handle.write(step.text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:OUTPUT_IN_MESSAGE] if lines else ""


def _restore(host: Host, path: str, text: str | None, mode: int) -> None:
    try:
        if text is None:
            os.unlink(host.path(path))
        else:
            _write(host, WriteFile(path, text, mode))
    except OSError:
        pass


def _mode_of(host: Host, path: str) -> int:
    try:
        return os.stat(host.path(path)).st_mode & 0o7777
    except OSError:
        return 0o644


def execute(host: Host, steps: Sequence[Step]) -> None:
    """Perform the steps in order.  At the first failure, undo what was done, in
    reverse: files put back (so the next attempt sees a difference and runs
    again: an empty plan must mean "already applied") and each command's
    ``undo`` run (so a failed request does not leave the NIC down); then raise
    :class:`ApplyFailed`."""
    done: list[Step] = []
    try:
        for step in steps:
            if isinstance(step, (WriteFile, RemoveFile)):
                done.append(WriteFile(step.path, host.read_text(step.path) or "", _mode_of(host, step.path))
                            if host.exists(step.path) else RemoveFile(step.path))
            _step(host, step)
            if isinstance(step, Run) and step.undo is not None:
                done.append(Run(step.undo, check=False, timeout=step.timeout))
    except ApplyFailed:
        for undo in reversed(done):
            if isinstance(undo, WriteFile):
                _restore(host, undo.path, undo.text, undo.mode)
            elif isinstance(undo, RemoveFile):
                _restore(host, undo.path, None, 0)
            else:
                try:
                    host.run(undo.argv, timeout=undo.timeout)
                except CommandError:
                    pass
        raise


def _step(host: Host, step: Step) -> None:
    if isinstance(step, WriteFile):
        try:
            _write(host, step)
        except OSError as exc:
            raise ApplyFailed(f"cannot write {step.path}: {exc.strerror or exc}") from exc
    elif isinstance(step, RemoveFile):
        try:
            os.unlink(host.path(step.path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ApplyFailed(f"cannot remove {step.path}: {exc.strerror or exc}") from exc
    else:
        shown = " ".join(step.argv)
        try:
            result = host.run(step.argv, timeout=step.timeout)
        except CommandError as exc:
            if step.check:
                raise ApplyFailed(f"{shown}: {exc}") from exc
            return
        if result.returncode != 0 and step.check:
            why = _tail(result.stderr) or _tail(result.stdout)
            raise ApplyFailed(f"{shown} exited {result.returncode}" + (f": {why}" if why else ""))
