"""Golden end-to-end dumps: the whole program on captured FreeBSD guest trees.

For each tree under tests/fixtures/freebsd/ (see its README.md), ``xenguest-agent show --root
TREE --os freebsd --format json`` must print exactly ``TREE/expected.json``.  The trees hold no
/proc or /sys: the FreeBSD backend asks ``sysctl`` and ``ifconfig``, which the CLI answers from
the tree's ``_commands/`` captures (xenguest_agent.fixture.FixtureRunner); a command without a
capture raises UnexpectedCommand through the CLI and fails the test.

Regenerate with ``XENGUEST_UPDATE_GOLDEN=1``: the files are rewritten and the tests then FAIL,
so a regeneration can never pass silently; review ``git diff`` key by key and rerun.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from support.golden import compare
from xenguest_agent import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "freebsd"
TREES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
#: The trees this suite promises to cover; a missing one is a failure, not a smaller suite.
REQUIRED = {"14-one-nic", "14-several-nics", "13-lagg", "13-vlan", "14-ipv6-only"}
SUBPROCESS_TREE = "14-one-nic"


def _argv(tree: str, config: Path) -> List[str]:
    # An empty --config pins the built-in defaults (no /usr/local/etc/xenguest-agent/config.yaml).
    return ["show", "--root", str(FIXTURES / tree), "--os", "freebsd", "--format", "json",
            "--config", str(config)]


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("")
    return path


def test_required_trees_present() -> None:
    assert REQUIRED <= set(TREES), f"missing fixture trees: {sorted(REQUIRED - set(TREES))}"


@pytest.mark.parametrize("tree", TREES)
def test_show_matches_golden(tree: str, empty_config: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(_argv(tree, empty_config))
    out, err = capsys.readouterr()
    assert code == 0, f"{tree}: show exited {code}; stderr:\n{err}"
    # a collector that failed is logged as a warning and leaves keys out: never in a golden run
    assert "failed" not in err, f"{tree}: a collector failed:\n{err}"
    compare(FIXTURES, tree, out)


def test_console_script_matches_golden(empty_config: Path) -> None:
    """The installed entry point, in a fresh process, on Linux: ``--root`` alone is enough."""
    done = subprocess.run([sys.executable, "-m", "xenguest_agent", *_argv(SUBPROCESS_TREE, empty_config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"exit {done.returncode}; stderr:\n{done.stderr}"
    compare(FIXTURES, SUBPROCESS_TREE, done.stdout)
