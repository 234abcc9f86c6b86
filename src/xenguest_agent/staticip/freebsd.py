"""FreeBSD: the interface's variables in /etc/rc.conf, set with sysrc(8).

rc.conf(5): ``ifconfig_IF`` holds ifconfig(8) arguments (``inet ADDR/PREFIX``)
or the keyword ``DHCP``; ``ifconfig_IF_ipv6`` holds ``inet6 ADDR/PREFIX`` or
``inet6 accept_rtadv``; ``defaultrouter`` / ``ipv6_defaultrouter`` the default
gateways.  rc.subr's ``ltr`` turns ``.``, ``-``, ``/`` and ``+`` of an
interface name into ``_`` in those variable names (freebsd/freebsd-src
libexec/rc/network.subr ``get_if_var``).  sysrc(8): ``NAME=VALUE`` sets,
``-x NAME`` removes.  service(8) runs rc.d/netif with ``stop IF`` (before the
change) and ``start IF`` (after), then rc.d/routing ``restart`` for the routes.

Current values are read from /etc/rc.conf through the Host root (the last
assignment wins, as when sh sources it), so the same setting twice changes
nothing and runs nothing.  A family given back to the guest (``enabled`` 0)
loses the values the agent set; the guest's earlier values were overwritten.
"""

from __future__ import annotations

import re

from xenguest_agent.host import Host
from xenguest_agent.staticip.plan import Nic, Run
from xenguest_agent.staticip.setting import STATIC, NicConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xenguest_agent.staticip.plan import Step

RC_CONF = "/etc/rc.conf"
_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def rc_values(text: str | None) -> dict[str, str]:
    """Plain ``name=value`` assignments of an rc.conf (quotes removed as sh does)."""
    import shlex  # with the first request only: an idle agent never reads rc.conf

    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        found = _ASSIGN.match(line)
        if not found:
            continue
        try:
            words = shlex.split(found.group(2), comments=True)
        except ValueError:
            continue
        values[found.group(1)] = " ".join(words)
    return values


def _variable(name: str) -> str:
    return re.sub(r"[.\-/+]", "_", name)


def _wanted(nic: Nic, config: NicConfig) -> dict[str, str | None]:
    """Each variable the configuration sets (None: the agent sets nothing there)."""
    var = _variable(nic.name)
    out: dict[str, str | None] = {}
    for key, family, inet, automatic, router in (
            (f"ifconfig_{var}", config.ipv4, "inet", "DHCP", "defaultrouter"),
            (f"ifconfig_{var}_ipv6", config.ipv6, "inet6", "inet6 accept_rtadv", "ipv6_defaultrouter")):
        if not config.managed:
            out[key] = None
        elif family.mode == STATIC and family.address is not None:
            out[key] = f"{inet} {family.address.with_prefixlen}"
        else:
            out[key] = automatic
        out[router] = str(family.gateway) if family.mode == STATIC and family.gateway else None
    return out


class FreeBsdRcConf:
    name = "rc.conf"
    state_dir = "/var/db/xenguest-agent/static-ip"

    def plan(self, host: Host, nic: Nic, old: NicConfig, new: NicConfig) -> tuple[Step, ...]:
        current = rc_values(host.read_text(RC_CONF))
        before = _wanted(nic, old)
        steps: list[Step] = []
        for key, value in _wanted(nic, new).items():
            was = current.get(key)
            undo = ("sysrc", f"{key}={was}") if was is not None else ("sysrc", "-x", key)
            if value is not None:
                if was != value:
                    steps.append(Run(("sysrc", f"{key}={value}"), undo=undo))
            elif was is not None and before.get(key) is not None and was == before[key]:
                # only a value the agent itself set is taken back
                steps.append(Run(("sysrc", "-x", key), undo=undo))
        if not steps:
            return ()
        # stop with the old values (so what they started, dhclient for DHCP, is stopped), start
        # with the new ones
        return (Run(("service", "netif", "stop", nic.name), check=False,
                    undo=("service", "netif", "start", nic.name)), *steps,
                Run(("service", "netif", "start", nic.name)), Run(("service", "routing", "restart")))

