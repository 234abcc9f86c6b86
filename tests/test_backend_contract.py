"""Both backends implement the whole Backend interface (backends/base.py), with compatible
signatures, so select_backend's callers never meet a missing attribute on one OS only.

The member list is read from the Protocol itself, so a member added there and forgotten in a
backend fails here, not in production on the other OS.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Tuple, Type

import pytest

from xenguest_agent.backends import select_backend
from xenguest_agent.backends.base import Backend
from xenguest_agent.backends.freebsd import FreeBSDBackend
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.host import Host

BACKENDS = [LinuxBackend, FreeBSDBackend]


def protocol_attributes() -> List[str]:
    """Data members: the Protocol's annotations."""
    return sorted(name for name in Backend.__annotations__ if not name.startswith("_"))


def protocol_methods() -> List[Tuple[str, inspect.Signature]]:
    return sorted((name, inspect.signature(member)) for name, member in vars(Backend).items()
                  if inspect.isfunction(member) and not name.startswith("_"))


def test_the_protocol_is_what_the_agent_uses() -> None:
    """A guard on this test itself: an empty member list would make it prove nothing."""
    assert protocol_attributes() == ["default_xenstore", "kernel_features", "name",
                                     "unadvertised_features"]
    assert [name for name, _ in protocol_methods()] == [
        "capabilities", "host_names", "interfaces", "memory", "os_info", "power_commands",
        "tune_suspend"]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("name", protocol_attributes())
def test_attribute_present_with_the_declared_type(backend: Type[object], name: str) -> None:
    assert hasattr(backend, name), f"{backend.__name__} has no {name}"
    value = getattr(backend, name)
    declared = Backend.__annotations__[name]
    if "Tuple" in str(declared):
        assert isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:
        assert isinstance(value, str) and value


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("name,signature", protocol_methods(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_method_present_with_a_compatible_signature(backend: Type[object], name: str,
                                                    signature: inspect.Signature) -> None:
    method = getattr(backend, name, None)
    assert callable(method), f"{backend.__name__}.{name} is missing"
    actual = inspect.signature(method)
    wanted = list(signature.parameters.values())
    have = list(actual.parameters.values())
    # every parameter the Protocol declares, in order, same name and kind
    assert [(p.name, p.kind) for p in have[:len(wanted)]] == [(p.name, p.kind) for p in wanted]
    # anything extra must be optional, so a Protocol-shaped call still works
    assert all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in have[len(wanted):])
    assert actual.return_annotation == signature.return_annotation


@pytest.mark.parametrize("os_name,backend", [("linux", LinuxBackend), ("freebsd", FreeBSDBackend)])
def test_select_backend_builds_each(os_name: str, backend: Type[object], tmp_path: Path) -> None:
    built = select_backend(os_name, Host(str(tmp_path)))
    assert type(built) is backend
    assert built.name == os_name
