"""`run`'s arguments are parsed without argparse when they are plain; the result is argparse's.

cli._run_arguments answers only the plain forms (whole long options, each once, values that
argparse could not take for an option); for anything else it returns None and argparse parses,
so help, version and every error stay argparse's own.  The source of truth is argparse itself
(CPython Lib/argparse.py: _parse_optional splits "--name=value" at the first "=" and takes
an exact option name before any abbreviation; a store_true option given "=value" is an error;
an argument starting with "-" is not taken as an option's value): every case here is parsed
by both and must give the same namespace, or the quick parser must decline.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

from xenguest_agent import cli

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _argparse(argv: List[str]) -> Optional[dict]:
    """argparse's namespace as a dict, or None when argparse exits (help, error)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(cli._parser().parse_args(argv))
        except SystemExit:
            return None


def _quick(argv: List[str]) -> Optional[dict]:
    parsed = cli._run_arguments(argv)
    return None if parsed is None else vars(parsed)


# the service files' own command lines: systemd/xenguest-agent.service ExecStart,
# rc.d/xenguest_agent command_args (with and without xenguest_agent_config), openrc's default
SERVICE_FORMS = [
    ["run"],
    ["run", "--os", "freebsd"],
    ["run", "--os", "freebsd", "--config", "/usr/local/etc/xenguest-agent.yaml"],
]


@pytest.mark.parametrize("argv", SERVICE_FORMS + [
    ["run", "--once"],
    ["run", "--root", "/tmp/tree", "--os", "linux", "--log-level", "warning",
     "--xenstore", "unix:/var/run/xenstored/socket", "--config", "/etc/x.yaml", "--once"],
    ["run", "--root=/a=b", "--os=auto", "--log-level=debug", "--xenstore=/dev/xen/xenbus"],
    ["run", "--config", "with space.yaml", "--xenstore", "unix:/x y"],
])
def test_plain_forms_are_parsed_as_argparse_parses_them(argv: List[str]) -> None:
    quick = _quick(argv)
    assert quick is not None, argv
    assert quick == _argparse(argv)


@pytest.mark.parametrize("argv", [
    [], ["--version"], ["-h"], ["run", "-h"], ["run", "--help"], ["show"], ["status"],
    ["run", "--xen", "x"],            # an abbreviation: argparse's rules, not ours
    ["run", "--once=1"],              # argparse: "ignored explicit argument"
    ["run", "--os", "plan9"],         # not a choice: argparse's error
    ["run", "--log-level", "WARNING"],
    ["run", "--root"],                # no value: argparse's error
    ["run", "--root", "--once"],      # an option is not a value
    ["run", "--root", "-x"], ["run", "--root=-x"], ["run", "--root="], ["run", "--root", ""],
    ["run", "--once", "--once"],      # twice: argparse keeps the last; we let it
    ["run", "--root", "/a", "--root", "/b"],
    ["run", "extra"], ["run", "--"], ["run", "-"], ["run", "--format", "json"],
    ["--root", "/", "run"], ["run", "--ROOT", "/"],
])
def test_other_forms_are_left_to_argparse(argv: List[str]) -> None:
    assert cli._run_arguments(argv) is None


def test_generated_command_lines_agree_with_argparse() -> None:
    """Random `run` command lines from the options, values and odd tokens argparse treats
    specially: whenever the quick parser answers, argparse answers the same."""
    tokens = ["--root", "--config", "--os", "--log-level", "--xenstore", "--once", "--format",
              "--xen", "--roo", "-h", "--", "/", "/tmp/t", "linux", "freebsd", "auto", "plan9",
              "debug", "warning", "-x", "", "a=b", "--root=/r", "--os=linux", "--once=",
              "--log-level=info", "--xenstore=unix:/s"]
    rng = random.Random(14)
    answered = 0
    for _ in range(3000):
        argv = ["run"] + [rng.choice(tokens) for _ in range(rng.randrange(7))]
        quick = _quick(argv)
        if quick is not None:
            answered += 1
            assert quick == _argparse(argv), argv
    assert answered > 100  # the comparison above ran on many lines


def test_every_choice_and_option_pair_agrees() -> None:
    for (os_name, level), once in itertools.product(
            itertools.product(("auto", "linux", "freebsd"), ("debug", "info", "warning", "error")),
            (False, True)):
        argv = ["run", "--os", os_name, f"--log-level={level}"] + (["--once"] if once else [])
        quick = _quick(argv)
        assert quick is not None and quick == _argparse(argv)
        assert (quick["os"], quick["log_level"], quick["once"]) == (os_name, level, once)


def test_the_daemon_command_line_does_not_import_argparse() -> None:
    code = ("import sys\nfrom xenguest_agent import cli\n"
            "args = cli._arguments(['run', '--os', 'linux', '--log-level', 'warning'])\n"
            "print(args.command, 'argparse' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "run False\n"), done.stderr
