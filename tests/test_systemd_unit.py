"""The systemd unit keeps what the core-agent issue asks of it."""

import configparser
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "xenguest-agent.service"


def load():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_runs_only_on_xen_and_restarts_on_failure():
    unit = load()
    assert unit["Unit"]["ConditionVirtualization"] == "xen"
    assert set(unit["Unit"]["Conflicts"].split()) == {"xe-linux-distribution.service",
                                                      "xen-guest-agent.service"}
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].endswith("xenguest-agent run")
    assert service["RestartPreventExitStatus"] == "78"  # EX_CONFIG: retrying cannot help
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_stop_timeout_leaves_room_for_hooks():
    from xenguest_agent.config import ControlConfig
    stop = float(load()["Service"]["TimeoutStopSec"].rstrip("s"))
    assert stop > ControlConfig().hook_timeout
