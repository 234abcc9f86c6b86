"""Commands answered from captures in a fixture tree, for ``--root DIR`` and the tests.

A FreeBSD guest is described by what ``sysctl`` and ``ifconfig`` print, not by files,
so a captured FreeBSD tree (tests/fixtures/freebsd/...) holds those outputs in
``DIR/_commands/``: for each command, ``<stem>.argv`` lists the exact argv, one
argument per line, and ``<stem>.out`` is what it printed on stdout (optionally
``<stem>.err`` for stderr and ``<stem>.rc`` for a non-zero exit status).

:class:`FixtureRunner` plays the role of :class:`xenguest_agent.host.SubprocessRunner`
against those captures, so the real backend code runs unchanged on Linux.  It never
starts a process.  A command that has no capture is a broken fixture or a backend
that changed what it runs: it raises :class:`UnexpectedCommand`, which deliberately
derives from ``BaseException`` so that the agent's "a failing collector never stops
the others" net (``except Exception``) cannot turn it into a silently missing key.
"""

from __future__ import annotations

import os

from xenguest_agent.host import DEFAULT_COMMAND_TIMEOUT, CommandResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Sequence, Set, Tuple
    Argv = Tuple[str, ...]

COMMANDS_DIR = "_commands"



class UnexpectedCommand(BaseException):
    """The code under test ran a command the fixture has no capture for."""


class FixtureError(Exception):
    """A capture in the fixture tree is malformed."""


def parse_argv_file(text: str) -> Argv:
    """``.argv`` text -> argv: one argument per line, trailing newline optional.

    An argument cannot contain a newline; blank arguments are kept only when they
    are not the final empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise FixtureError("empty .argv file")
    return tuple(lines)


def load_captures(commands_dir: str) -> Dict[Argv, str]:
    """argv -> capture stem (path without extension) for every ``*.argv`` in the directory."""
    captures: Dict[Argv, str] = {}
    try:
        names = sorted(os.listdir(commands_dir))
    except OSError:
        return captures
    for name in names:
        if not name.endswith(".argv"):
            continue
        stem = os.path.join(commands_dir, name[:-len(".argv")])
        with open(stem + ".argv", encoding="utf-8") as handle:
            argv = parse_argv_file(handle.read())
        if argv in captures:
            raise FixtureError(f"{stem}.argv and {captures[argv]}.argv capture the same argv")
        if not os.path.exists(stem + ".out"):
            raise FixtureError(f"{stem}.argv has no {os.path.basename(stem)}.out")
        captures[argv] = stem
    return captures


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return default


class FixtureRunner:
    """A :class:`xenguest_agent.host.Runner` that replays ``ROOT/_commands`` captures."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.commands_dir = os.path.join(self.root, COMMANDS_DIR)
        self.captures = load_captures(self.commands_dir)
        #: every argv run, in order (tests assert on it)
        self.calls: List[Argv] = []

    @property
    def unused(self) -> Set[Argv]:
        """Captures no command has asked for yet."""
        return set(self.captures) - set(self.calls)

    def __call__(self, argv: Sequence[str],
                 timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        key = tuple(argv)
        self.calls.append(key)
        stem = self.captures.get(key)
        if stem is None:
            raise UnexpectedCommand(
                f"no capture for {list(key)!r} in {self.commands_dir}: add <name>.argv "
                f"(one argument per line) and <name>.out captured on the guest")
        rc_text = _read(stem + ".rc", "0").strip() or "0"
        try:
            returncode = int(rc_text)
        except ValueError as exc:
            raise FixtureError(f"{stem}.rc: not an exit status: {rc_text!r}") from exc
        return CommandResult(key, returncode, _read(stem + ".out"), _read(stem + ".err"))
