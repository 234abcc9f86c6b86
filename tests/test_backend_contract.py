"""select_backend builds the backend of each OS.

That each backend implements the whole Backend Protocol (backends/base.py) with compatible
signatures is checked by mypy --strict in .ci/run: select_backend is declared to return a
Backend, so a member missing or mistyped on one OS fails the type check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Type

import pytest

from xenguest_agent.backends import select_backend
from xenguest_agent.backends.freebsd import FreeBSDBackend
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.host import Host


@pytest.mark.parametrize("os_name,backend", [("linux", LinuxBackend), ("freebsd", FreeBSDBackend)])
def test_select_backend_builds_each(os_name: str, backend: Type[object], tmp_path: Path) -> None:
    built = select_backend(os_name, Host(str(tmp_path)))
    assert type(built) is backend
    assert built.name == os_name
