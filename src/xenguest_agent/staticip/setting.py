"""The toolstack's static IP setting of one NIC: parsing and the applied state.

xenopsd writes, per VIF, under ``xenserver/device/vif/<devid>/static-ip-setting/``
(xapi-project/xen-api ``ocaml/xenopsd/xc/xenops_server_xen.ml``,
``xenstore_of_static_ip_setting`` at plug time, in the device's one creation
transaction of ``device.ml`` ``Generic.add_device``; ``set_ip_static`` /
``set_ip_unspecified_or_autoconf`` on each ``VIF.configure_ipv4/ipv6``, one
transaction each):

- ``mac``: the VIF's MAC; ``error-code`` ``0`` and ``error-msg`` empty at plug;
- ``enabled`` (IPv4) / ``enabled6`` (IPv6): ``0`` unspecified (left to the guest),
  ``1`` static, ``2`` DHCP (IPv4) or autoconf (IPv6);
- with ``1``: ``address``/``address6`` in CIDR form (the first of the VIF's
  addresses) and ``gateway``/``gateway6`` only when one was given; with ``0`` or
  ``2`` xenopsd removes both.

xapi checked the values before (``ocaml/xapi/xapi_vif.ml`` ``configure_ipv4``:
``Helpers.assert_is_valid_cidr`` and ``assert_is_valid_ip``), but anyone with
write access to the node can write it, so every value is checked again and a
bad one refuses the whole setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from typing import Union
    Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
    Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Result codes written to error-code.  "101" is what XenServer's Windows agent
# writes when no NIC carries the MAC (xenserver/win-xenguestagent
# src/xenguestlib/FeatureStaticIpSetting.cs, SetStaticIpv4Setting); the others
# are ours and documented in docs/static-ip.md.
OK = "0"
APPLY_FAILED = "1"
INVALID = "2"
NO_BACKEND = "3"
CONFLICT = "4"
NIC_NOT_FOUND = "101"

UNSPECIFIED, STATIC, AUTOMATIC = 0, 1, 2

MESSAGE_LIMIT = 256
_CIDR = re.compile(r"^[0-9A-Fa-f:.]+/[0-9]{1,3}\Z")
_ADDRESS = re.compile(r"^[0-9A-Fa-f:.]+\Z")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")



class Refusal(Exception):
    """A setting that is not applied; ``code`` and ``message`` go to XenStore."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = clean_message(message)


def clean_message(text: str) -> str:
    """Printable ASCII, one line, bounded: what error-msg may hold."""
    flat = " ".join(text.split())
    safe = "".join(c if " " <= c <= "~" else "?" for c in flat)
    return safe[:MESSAGE_LIMIT]


@dataclass(frozen=True)
class Family:
    """One address family's configuration: a mode and, when static, its address."""

    mode: int
    address: Interface | None = None
    gateway: Address | None = None

    def text(self) -> str:
        """The canonical one-line form kept in the state file."""
        parts = [str(self.mode)]
        if self.address is not None:
            parts.append(self.address.with_prefixlen)
        if self.gateway is not None:
            parts.append(str(self.gateway))
        return " ".join(parts)


NONE = Family(UNSPECIFIED)


@dataclass(frozen=True)
class StaticIpSetting:
    """What the toolstack asks for one NIC now.  A family is None when its
    ``enabled`` key is absent (not asked this time: the agent removes it after
    applying, as the Windows agent does)."""

    mac: str | None
    ipv4: Family | None
    ipv6: Family | None


@dataclass(frozen=True)
class NicConfig:
    """The configuration the agent keeps for one NIC: both families, concrete."""

    ipv4: Family = NONE
    ipv6: Family = NONE

    @property
    def managed(self) -> bool:
        """False when both families are left to the guest: the agent owns nothing."""
        return self.ipv4.mode != UNSPECIFIED or self.ipv6.mode != UNSPECIFIED

    def merge(self, setting: StaticIpSetting) -> NicConfig:
        return NicConfig(setting.ipv4 if setting.ipv4 is not None else self.ipv4,
                         setting.ipv6 if setting.ipv6 is not None else self.ipv6)

    def state_text(self) -> str:
        return f"ipv4={self.ipv4.text()}\nipv6={self.ipv6.text()}\n"


def _mode(key: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if raw not in ("0", "1", "2"):
        raise Refusal(INVALID, f"{key} is {clean_message(raw)!r}; expected 0, 1 or 2")
    return int(raw)


def parse_cidr(key: str, raw: str | None, version: int) -> Interface:
    """An address with its prefix length, as ``Helpers.parse_cidr`` accepts it:
    digits after the slash (no netmask form), no zone index."""
    if raw is None or raw == "":
        raise Refusal(INVALID, f"{key} is missing but static mode needs an address in CIDR form")
    if not _CIDR.match(raw):
        raise Refusal(INVALID, f"{key} {clean_message(raw)!r} is not an address in CIDR form")
    import ipaddress  # only a static address needs it; the plug's "0"/"0" does not

    try:
        value = ipaddress.ip_interface(raw)
    except ValueError:
        raise Refusal(INVALID, f"{key} {clean_message(raw)!r} is not a valid CIDR address") from None
    if value.version != version:
        raise Refusal(INVALID, f"{key} {raw!r} is not an IPv{version} address")
    return value


def parse_address(key: str, raw: str | None, version: int) -> Address | None:
    """An optional gateway: absent or empty means none (xapi's ``""``)."""
    if raw is None or raw == "":
        return None
    if not _ADDRESS.match(raw):
        raise Refusal(INVALID, f"{key} {clean_message(raw)!r} is not an IP address")
    import ipaddress

    try:
        value = ipaddress.ip_address(raw)
    except ValueError:
        raise Refusal(INVALID, f"{key} {clean_message(raw)!r} is not a valid IP address") from None
    if value.version != version:
        raise Refusal(INVALID, f"{key} {raw!r} is not an IPv{version} address")
    return value


def _family(values: Mapping[str, str], suffix: str, version: int) -> Family | None:
    mode = _mode("enabled" + suffix, values.get("enabled" + suffix))
    if mode is None:
        return None
    if mode != STATIC:
        return Family(mode)
    address = parse_cidr("address" + suffix, values.get("address" + suffix), version)
    gateway = parse_address("gateway" + suffix, values.get("gateway" + suffix), version)
    return Family(STATIC, address, gateway)


def parse_setting(values: Mapping[str, str]) -> StaticIpSetting:
    """The setting from the key names under ``static-ip-setting/`` (``mac``,
    ``enabled``, ``address``, ...); raises :class:`Refusal` for any bad value."""
    mac = values.get("mac")
    if mac is not None and mac != "":
        if not _MAC.match(mac):
            raise Refusal(INVALID, f"mac {clean_message(mac)!r} is not a MAC address")
        mac = mac.lower()
    else:
        mac = None
    return StaticIpSetting(mac, _family(values, "", 4), _family(values, "6", 6))


def parse_state(text: str | None) -> NicConfig:
    """The state file written by :meth:`NicConfig.state_text`; anything unreadable
    counts as "nothing managed" (the next setting rewrites it)."""
    if not text:
        return NicConfig()
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    families = []
    for key, suffix, version in (("ipv4", "", 4), ("ipv6", "6", 6)):
        parts: tuple[str, ...] = tuple(fields.get(key, "0").split())
        values = {"enabled" + suffix: parts[0] if parts else "0"}
        if len(parts) > 1:
            values["address" + suffix] = parts[1]
        if len(parts) > 2:
            values["gateway" + suffix] = parts[2]
        try:
            families.append(_family(values, suffix, version) or NONE)
        except Refusal:
            families.append(NONE)
    return NicConfig(families[0], families[1])
