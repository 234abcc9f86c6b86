"""Static IP settings from the toolstack (XenCenter, ``xe vif-configure-ipv4/ipv6``)."""


from __future__ import annotations

from xenguest_agent.staticip.manager import (
           FEATURE_KEY,
           Job,
           StaticIpManager,
           detect,
           match_nic,
)
from xenguest_agent.staticip.setting import (
           NicConfig,
           Refusal,
           StaticIpSetting,
           parse_setting,
)

__all__ = ["FEATURE_KEY", "Job", "NicConfig", "Refusal", "StaticIpManager", "StaticIpSetting",
           "detect", "match_nic", "parse_setting"]
