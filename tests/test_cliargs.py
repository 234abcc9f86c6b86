"""cliargs.parse_run (the daemon's command line without argparse) against cli's argparse
parser, the reference: on every command line parse_run accepts, the two give the same
values; whatever it declines, argparse reads (with its help and errors).  The command lines
the packages use must take the fast path, or the daemon pays for argparse after all."""

from __future__ import annotations

import contextlib
import io
import itertools
import shlex
from pathlib import Path
from typing import List, Optional

import pytest

from xenguest_agent import cli
from xenguest_agent.cliargs import parse_run

REPO = Path(__file__).resolve().parent.parent
PARSER = cli._parser()

#: words that can follow "run": valid and invalid forms, values that look like options,
#: abbreviations and unknown options (argparse accepts some of those: parse_run must not
#: accept them differently)
WORDS = [
    ["--once"], ["--once=1"], ["--root", "/r"], ["--root=/r"], ["--root", "-1"], ["--root="],
    ["--root"], ["--config", "/etc/x.yaml"], ["--config=/a=b"], ["--os", "linux"],
    ["--os", "freebsd"], ["--os=auto"], ["--os", "lin"], ["--os", "Linux"],
    ["--log-level", "debug"], ["--log-level=error"], ["--log-level", "verbose"], ["--log", "info"],
    ["--xenstore", "unix:/run/xenstored/socket"], ["--xenstore", "/dev/xen/xenbus"],
    ["--xenstore", "--once"], ["--format", "json"], ["-h"], ["--help"], ["--version"], ["x"],
    ["--"], ["-"],
]


def reference(argv: List[str]) -> Optional[dict]:
    """argparse's values, or None when it refuses the line (it exits 2 after printing)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(PARSER.parse_args(argv))
    except SystemExit:
        return None


def lines() -> List[List[str]]:
    out: List[List[str]] = [["run"], [], ["show"], ["status"], ["--version"], ["run2"]]
    for count in (1, 2):
        for combo in itertools.product(WORDS, repeat=count):
            out.append(["run", *itertools.chain.from_iterable(combo)])
    return out


def test_every_line_parse_run_accepts_reads_as_argparse_reads_it() -> None:
    accepted = 0
    for argv in lines():
        fast = parse_run(argv)
        if fast is None:
            continue
        accepted += 1
        assert vars(fast) == reference(argv), argv
    assert accepted > 100  # the fast path is taken on the ordinary lines, not only on ["run"]


def test_it_declines_what_argparse_refuses_or_abbreviates() -> None:
    for argv in (["run", "--os", "lin"], ["run", "--log", "info"], ["run", "--root"],
                 ["run", "-h"], ["run", "--once=1"], ["show"], ["run", "--format", "json"]):
        assert parse_run(argv) is None, argv


def unit_exec_start() -> List[str]:
    """The words after the program in the systemd unit's ExecStart."""
    for line in (REPO / "systemd" / "xenguest-agent.service").read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.partition("=")[2])[1:]
    raise AssertionError("no ExecStart in the unit")


@pytest.mark.parametrize("argv", [
    unit_exec_start(),
    # rc.d/xenguest_agent: "run --os freebsd" plus --config when xenguest_agent_config is set
    ["run", "--os", "freebsd", "--config", "/usr/local/etc/xenguest-agent/config.yaml"],
    # openrc/xenguest-agent: "run ${XENGUEST_AGENT_OPTS}", e.g. the documented --log-level debug
    ["run", "--log-level", "debug"],
])
def test_the_packaged_command_lines_take_the_fast_path(argv: List[str]) -> None:
    fast = parse_run(argv)
    assert fast is not None, argv
    assert vars(fast) == reference(argv)
