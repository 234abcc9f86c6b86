"""Golden end-to-end dumps: compare what ``show --format json`` printed with a
tree's ``expected.json`` (or, with XENGUEST_UPDATE_GOLDEN=1, rewrite it and fail
so the new file must be reviewed)."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Dict, List

import pytest

UPDATE = os.environ.get("XENGUEST_UPDATE_GOLDEN") == "1"


def render(values: Dict[str, str]) -> List[str]:
    return (json.dumps(values, indent=2, sort_keys=True) + "\n").splitlines(keepends=True)


def compare(fixtures: Path, tree: str, printed: str) -> None:
    """Check (or, in update mode, write) the golden file; on a mismatch fail with a readable diff."""
    try:
        actual = json.loads(printed)
    except ValueError as exc:
        pytest.fail(f"{tree}: show did not print one JSON object ({exc}):\n{printed}", pytrace=False)
    assert isinstance(actual, dict), f"{tree}: expected a JSON object, got {type(actual).__name__}"
    golden = fixtures / tree / "expected.json"
    if UPDATE:
        golden.write_text(printed if printed.endswith("\n") else printed + "\n")
        pytest.fail(f"{tree}: wrote {golden}; "
                    "review every key and value (git diff) and rerun without "
                    "XENGUEST_UPDATE_GOLDEN", pytrace=False)
    if not golden.exists():
        pytest.fail(f"{tree}: no {golden.name}; create it with XENGUEST_UPDATE_GOLDEN=1 and review it",
                    pytrace=False)
    expected = json.loads(golden.read_text())
    if actual == expected:
        return
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    lines = [f"{tree}: output differs from {golden.name}"]
    lines += [f"  missing  {k} = {expected[k]!r}" for k in missing]
    lines += [f"  extra    {k} = {actual[k]!r}" for k in extra]
    lines += [f"  changed  {k}: expected {expected[k]!r}, got {actual[k]!r}" for k in changed]
    diff = difflib.unified_diff(render(expected), render(actual),
                                fromfile=f"{tree}/expected.json", tofile="show --format json")
    pytest.fail("\n".join(lines) + "\n\n" + "".join(diff), pytrace=False)
