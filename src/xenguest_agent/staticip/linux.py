"""Linux backends: systemd-networkd, NetworkManager and ifupdown.

Each owns one file per NIC, named after the interface, so the setting survives
a reboot and the guest's own files are never edited.  A family left to the
guest (``enabled`` 0) while the other is managed gets the usual automatic
configuration (DHCPv4, IPv6 router advertisements): the file describes the
whole interface, so "nothing" is not an option there.
"""

from __future__ import annotations

import re

from xenguest_agent.host import Host
from xenguest_agent.staticip.plan import Nic, Run, file_changes
from xenguest_agent.staticip.setting import (
    AUTOMATIC,
    CONFLICT,
    STATIC,
    UNSPECIFIED,
    Family,
    NicConfig,
    Refusal,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xenguest_agent.staticip.plan import Step

HEADER = ("# Written by xenguest-agent from the toolstack's static IP setting\n"
          "# (xe vif-configure-ipv4/ipv6); replaced or removed by the next one.\n")
PREFIX = "xenguest-agent-"


def _automatic(family: Family) -> bool:
    return family.mode in (UNSPECIFIED, AUTOMATIC)


class Networkd:
    """A ``.network`` file of its own in ``/etc/systemd/network``.

    systemd.network(5): files from /etc, /run and /usr/lib are sorted by name
    and the first whose [Match] section matches a link is used, every match in
    it must hold; ``Address=`` takes ``address/prefixlength``, ``Gateway=`` an
    address, ``DHCP=`` yes/no/ipv4/ipv6, ``IPv6AcceptRA=`` a boolean.  The
    ``05-`` prefix sorts before distributions' files (netplan's
    ``10-netplan-IF``, ``50-cloud-init``, the ``80-``/``99-`` defaults).
    networkctl(1): ``reload`` rereads the files, ``reconfigure IF`` applies them
    to the link.
    """

    name = "systemd-networkd"
    state_dir = "/var/lib/xenguest-agent/static-ip"
    directory = "/etc/systemd/network"

    def path(self, nic: Nic) -> str:
        return f"{self.directory}/05-{PREFIX}{nic.name}.network"

    def render(self, nic: Nic, config: NicConfig) -> str:
        match = [f"Name={nic.name}"]
        if nic.mac:
            match.insert(0, f"MACAddress={nic.mac}")
        network = [
            "DHCP=" + ("ipv4" if _automatic(config.ipv4) else "no"),
            "IPv6AcceptRA=" + ("yes" if _automatic(config.ipv6) else "no"),
        ]
        for family in (config.ipv4, config.ipv6):
            if family.mode == STATIC and family.address is not None:
                network.append(f"Address={family.address.with_prefixlen}")
                if family.gateway is not None:
                    network.append(f"Gateway={family.gateway}")
        return HEADER + "[Match]\n" + "".join(m + "\n" for m in match) + \
            "\n[Network]\n" + "".join(n + "\n" for n in network)

    def plan(self, host: Host, nic: Nic, old: NicConfig, new: NicConfig) -> tuple[Step, ...]:
        text = self.render(nic, new) if new.managed else None
        changes = file_changes(host, [(self.path(nic), text, 0o644)])
        if not changes:
            return ()
        return (*changes, Run(("networkctl", "reload")), Run(("networkctl", "reconfigure", nic.name)))


class NetworkManager:
    """A keyfile connection profile of its own, loaded and activated with nmcli.

    nm-settings-keyfile(5): profiles in /etc/NetworkManager/system-connections
    named ``*.nmconnection``, owned by root and not readable by others (NM
    ignores them otherwise), GKeyFile syntax; properties as in
    nm-settings-nmcli(5) (``connection.interface-name``,
    ``connection.autoconnect-priority``, ``ethernet.mac-address``,
    ``ipv4.method`` manual/auto, ``ipv6.method`` manual/auto) with addresses as
    ``address1=ADDR/PREFIX`` and ``gateway=``.  nmcli(1): ``connection load``
    (re)reads one file, ``connection up uuid U`` activates it, ``--wait`` bounds
    the wait, ``connection delete`` removes profile and file.  A file compares
    byte for byte, so the same setting twice runs nothing (querying
    ``nmcli connection show`` would run a command on every event).
    """

    name = "NetworkManager"
    state_dir = "/var/lib/xenguest-agent/static-ip"
    directory = "/etc/NetworkManager/system-connections"
    priority = 50
    wait = "30"

    def path(self, nic: Nic) -> str:
        return f"{self.directory}/{PREFIX}{nic.name}.nmconnection"

    def uuid(self, nic: Nic) -> str:
        import uuid  # only a NetworkManager profile needs it

        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"xenguest-agent:static-ip:{nic.name}"))

    @staticmethod
    def _section(name: str, family: Family) -> list[str]:
        lines = [f"[{name}]"]
        if family.mode == STATIC and family.address is not None:
            lines += ["method=manual", f"address1={family.address.with_prefixlen}"]
            if family.gateway is not None:
                lines.append(f"gateway={family.gateway}")
        else:
            lines.append("method=auto")
        return lines

    def render(self, nic: Nic, config: NicConfig) -> str:
        lines = ["[connection]", f"id={PREFIX}{nic.name}", f"uuid={self.uuid(nic)}", "type=ethernet",
                 f"interface-name={nic.name}", f"autoconnect-priority={self.priority}", ""]
        if nic.mac:
            lines += ["[ethernet]", f"mac-address={nic.mac.upper()}", ""]
        lines += self._section("ipv4", config.ipv4) + [""] + self._section("ipv6", config.ipv6)
        return HEADER + "\n".join(lines) + "\n"

    def plan(self, host: Host, nic: Nic, old: NicConfig, new: NicConfig) -> tuple[Step, ...]:
        path = self.path(nic)
        if not new.managed:
            if not host.exists(path):
                return ()
            return (Run(("nmcli", "connection", "delete", "uuid", self.uuid(nic)), check=False),
                    *file_changes(host, [(path, None, 0o600)]),
                    Run(("nmcli", "device", "connect", nic.name), check=False))
        changes = file_changes(host, [(path, self.render(nic, new), 0o600)])
        if not changes:
            return ()
        load = ("nmcli", "connection", "load", path)
        return (*changes, Run(load, undo=load),
                Run(("nmcli", "--wait", self.wait, "connection", "up", "uuid", self.uuid(nic))))


_IFACE = re.compile(r"^\s*iface\s+(\S+)\s+(inet6?)\b")
_SOURCE = re.compile(r"^\s*source(?:-directory)?\s+(\S+?)(?:/\*)?\s*$")


class Ifupdown:
    """A stanza file of its own in ``/etc/network/interfaces.d``.

    interfaces(5): ``allow-hotplug IF`` brings it up when the kernel reports
    it; ``iface IF inet static`` with ``address ADDR/PREFIX`` and ``gateway``,
    ``iface IF inet dhcp``, ``iface IF inet6 static``/``auto``;
    ``source-directory`` only reads file names made of letters, digits, ``_``
    and ``-`` (so a ``.`` in the interface name becomes ``_``).  ifupdown
    applies every stanza of an interface, so a stanza elsewhere for the same
    interface and family would fight ours: that is refused, not edited.
    ``ifdown`` runs before the file changes (it deconfigures what the old
    stanza configured), ``ifup`` after.
    """

    name = "ifupdown"
    state_dir = "/var/lib/xenguest-agent/static-ip"
    main = "/etc/network/interfaces"
    directory = "/etc/network/interfaces.d"

    def path(self, nic: Nic) -> str:
        return f"{self.directory}/{PREFIX}{nic.name.replace('.', '_')}"

    def render(self, nic: Nic, config: NicConfig) -> str:
        lines = [f"allow-hotplug {nic.name}"]
        for keyword, family, automatic in (("inet", config.ipv4, "dhcp"), ("inet6", config.ipv6, "auto")):
            if family.mode == STATIC and family.address is not None:
                lines.append(f"iface {nic.name} {keyword} static")
                lines.append(f"\taddress {family.address.with_prefixlen}")
                if family.gateway is not None:
                    lines.append(f"\tgateway {family.gateway}")
            else:
                lines.append(f"iface {nic.name} {keyword} {automatic}")
        return HEADER + "\n".join(lines) + "\n"

    def _conflicts(self, host: Host, nic: Nic) -> str | None:
        ours = self.path(nic)
        sourced = False
        files = [self.main] + [f"{self.directory}/{n}" for n in host.listdir(self.directory)]
        for path in files:
            if path == ours:
                continue
            for line in (host.read_text(path) or "").splitlines():
                source = _SOURCE.match(line) if path == self.main else None
                if source and source.group(1) in (self.directory, "interfaces.d", host.path(self.directory)):
                    sourced = True  # interfaces(5): relative to the file's directory
                found = _IFACE.match(line)
                if found and found.group(1) == nic.name:
                    return (f"{nic.name} is already configured in {path} ({found.group(2)}); "
                            "remove that stanza to let the toolstack set its address")
        if not sourced:
            return f"{self.main} does not source {self.directory}"
        return None

    def plan(self, host: Host, nic: Nic, old: NicConfig, new: NicConfig) -> tuple[Step, ...]:
        path = self.path(nic)
        text = self.render(nic, new) if new.managed else None
        changes = file_changes(host, [(path, text, 0o644)])
        if not changes:
            return ()
        if text is not None:
            problem = self._conflicts(host, nic)
            if problem:
                raise Refusal(CONFLICT, problem)
        down = (Run(("ifdown", nic.name), check=False, undo=("ifup", nic.name)),) if host.exists(path) else ()
        up = (Run(("ifup", nic.name)),) if text is not None else ()
        return (*down, *changes, *up)
