"""Static IP settings from the toolstack (XenCenter, ``xe vif-configure-ipv4/ipv6``).

The names below are loaded on first use (PEP 562 ``__getattr__``): the daemon imports
only :mod:`~xenguest_agent.staticip.driver` and :mod:`~xenguest_agent.staticip.probe`
until a request arrives, and importing the package must not load the rest.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xenguest_agent.staticip.manager import Job, StaticIpManager, detect, match_nic
    from xenguest_agent.staticip.probe import FEATURE_KEY
    from xenguest_agent.staticip.setting import NicConfig, Refusal, StaticIpSetting, parse_setting

_WHERE = {
    "FEATURE_KEY": "probe",
    "Job": "manager", "StaticIpManager": "manager", "detect": "manager", "match_nic": "manager",
    "NicConfig": "setting", "Refusal": "setting", "StaticIpSetting": "setting",
    "parse_setting": "setting",
}

__all__ = ["FEATURE_KEY", "Job", "NicConfig", "Refusal", "StaticIpManager", "StaticIpSetting",
           "detect", "match_nic", "parse_setting"]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(__import__(f"{__name__}.{module}", fromlist=[name]), name)
