"""Golden end-to-end dumps: the whole program on captured Linux guest trees.

For each tree under tests/fixtures/linux/ (see its README.md), ``xenguest-agent show --root
TREE --os linux --format json`` must print exactly ``TREE/expected.json``: every key the agent
would publish and its value (node_exporter's end-to-end fixture test).

Regenerate with ``XENGUEST_UPDATE_GOLDEN=1``: the files are rewritten and the tests then FAIL,
so a regeneration can never pass silently; review ``git diff`` key by key and rerun.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.golden import compare
from xenguest_agent import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "linux"
TREES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
#: The trees this suite promises to cover; a missing one is a failure, not a smaller suite.
REQUIRED = {"debian12", "ubuntu2404", "rocky9", "alpine319", "centos6", "many-addresses"}
SUBPROCESS_TREE = "rocky9"


def _argv(tree: str, config: Path) -> list[str]:
    # An empty --config pins the built-in defaults, so a config file on the machine
    # running the tests (/etc/xenguest-agent/config.yaml) cannot change the output.
    return ["show", "--root", str(FIXTURES / tree), "--os", "linux", "--format", "json",
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
    compare(FIXTURES, tree, out, required=("memory",))


def _console_script() -> str:
    """The installed ``xenguest-agent`` next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "xenguest-agent"
    if beside.exists():
        return str(beside)
    found = shutil.which("xenguest-agent")
    if found is None:
        pytest.fail("the xenguest-agent console script is not installed (pip install -e .)",
                    pytrace=False)
    return found


def test_console_script_matches_golden(empty_config: Path) -> None:
    """The installed entry point, in a fresh process: packaging and argv handling included."""
    done = subprocess.run([_console_script(), *_argv(SUBPROCESS_TREE, empty_config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"exit {done.returncode}; stderr:\n{done.stderr}"
    compare(FIXTURES, SUBPROCESS_TREE, done.stdout, required=("memory",))
