"""What XenCenter would show for each captured guest, read from the real xenstored.

``run --once`` publishes a fixture tree into Debian's real xenstored; the test dumps the home
(every node, as xenopsd would list it) and reads it through the model of xapi
(xenguest_agent.xapi), then checks the tree's hand-written facts.yaml (tests/support/golden.py).
This proves the keys as they land in XenStore, not only what ``show`` prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support.golden import FACTS, fact_problems
from support.xenstored import Xenstored
from xenguest_agent import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TREES = sorted((os_dir.name, tree.name) for os_dir in FIXTURES.iterdir()
               if os_dir.name in ("linux", "freebsd")
               for tree in os_dir.iterdir() if (tree / FACTS).exists())
HOME = "/local/domain/0"  # over the socket the agent is dom0; relative paths land here


def test_every_golden_tree_is_covered() -> None:
    for os_name in ("linux", "freebsd"):
        goldens = {p.parent.name for p in (FIXTURES / os_name).glob("*/expected.json")}
        assert goldens == {t for o, t in TREES if o == os_name}, os_name


@pytest.mark.parametrize("os_name, tree", TREES)
def test_published_tree_reads_as_the_facts_say(xenstored: Xenstored, tmp_path: Path,
                                               os_name: str, tree: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("")
    root = FIXTURES / os_name / tree
    assert cli.main(["run", "--once", "--xenstore", xenstored.spec, "--root", str(root),
                     "--os", os_name, "--config", str(config)]) == 0
    published = xenstored.dump(HOME)
    facts = yaml.safe_load((root / FACTS).read_text())
    required = ("memory",) if os_name == "linux" else ()
    assert fact_problems(facts, published, required) == []
