"""data/host_name_dns and data/domain, checked against how xapi shows them.

xapi-project/xen-api ocaml/xapi/xapi_guest_agent.ml, get_initial_guest_metrics: when
data/domain exists, VM_guest_metrics.netbios_name["host_name"] is data/host_name_dns, a dot
and data/domain; otherwise data/host_name_dns alone.  Windows agents write the short
name (WINDOWS-3LIPCLJ with data/domain eng.citrite.net), so a fully qualified kernel host
name must be split: its first label is the host name, the rest the domain.

resolv.conf(5) (glibc, man-pages): "domain" and "search" are mutually exclusive and the last
of them wins; "domain ." means the root domain, i.e. none.  The resolver itself falls back to
the host name's suffix only when resolv.conf names no domain; for the name xapi shows, the
host's own fully qualified name is the better witness, so its suffix comes first (issue 13).
"""

from __future__ import annotations

import pytest

from xenguest_agent.backends.base import host_names_from
from xenguest_agent.facts import HostNames


def xapi_host_name(names: HostNames) -> str | None:
    """netbios_name["host_name"] written out by hand from xapi's rule (see the module docstring)."""
    if names.host_name is None:
        return None
    return f"{names.host_name}.{names.domain}" if names.domain else names.host_name


@pytest.mark.parametrize("kernel, resolv, host, domain", [
    # fully qualified: the first label, and the suffix as the domain
    ("web01.corp.example.com", None, "web01", "corp.example.com"),
    ("web01.corp.example.com", "nameserver 10.0.0.1\n", "web01", "corp.example.com"),
    # the FQDN's suffix wins over resolv.conf's search list (which is about resolving others)
    ("web01.corp.example.com", "search other.example.org\n", "web01", "corp.example.com"),
    # a trailing dot (an absolute name) is not an empty label
    ("web01.corp.example.com.", None, "web01", "corp.example.com"),
    # short name: resolv.conf decides; domain and search are exclusive, the last one wins
    ("web01", "domain a.example\nsearch b.example c.example\n", "web01", "b.example"),
    ("web01", "search b.example c.example\ndomain a.example\n", "web01", "a.example"),
    ("web01", "domain .\n", "web01", None),
    ("web01", None, "web01", None),
    ("localhost.localdomain", None, "localhost", "localdomain"),
])
def test_split_as_xapi_joins(kernel: str, resolv: str | None, host: str,
                             domain: str | None) -> None:
    names = host_names_from(kernel, resolv)
    assert names == HostNames(host_name=host, domain=domain)


@pytest.mark.parametrize("kernel, resolv, shown", [
    ("web01.corp.example.com", "search corp.example.com\n", "web01.corp.example.com"),
    ("c6legacy.lab.example.net", "nameserver 10.60.0.1\n", "c6legacy.lab.example.net"),
    ("web01", "search example.org\n", "web01.example.org"),
    ("alpine319", "nameserver 10.40.0.1\n", "alpine319"),
])
def test_xapi_shows_the_fqdn_once(kernel: str, resolv: str, shown: str) -> None:
    assert xapi_host_name(host_names_from(kernel, resolv)) == shown


def test_no_host_name() -> None:
    assert host_names_from(None, "search example.org\n") == HostNames(None, "example.org")
    assert host_names_from("", None) == HostNames(None, None)
