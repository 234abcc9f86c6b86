"""The systemd unit: each property asserted with the reason it is there, and the unit
checked by systemd's own parser (`systemd-analyze verify`, Debian package `systemd`)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xenguest_agent.config import ControlConfig
from xenguest_agent.configcheck import MAX_GRACE

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "xenguest-agent.service"
INSTALLED = "/usr/bin/xenguest-agent"  # packaging/debian/rules, packaging/rpm/*.spec


def load():
    """{section: {key: [values...]}}: systemd keys repeat (Condition...=) and are
    case-sensitive, which configparser cannot represent."""
    sections, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            section = sections.setdefault(header.group(1), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return sections


def one(section, key):
    values = load()[section].get(key, [])
    assert len(values) == 1, (key, values)
    return values[0]


def seconds(value):
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_unit_starts_on_every_xen_guest():
    # ConditionVirtualization=xen alone skips Xen guests that older systemd names
    # "microsoft" (HVM with Viridian, systemd#8844) or "vm-other" (PV on AMD,
    # systemd#7165).  Triggering ("|") conditions: any one of them starts the unit
    # (systemd.unit(5)); none may be a plain condition, which would be ANDed.
    unit = load()["Unit"]
    conditions = {(key, value) for key, values in unit.items() if key.startswith("Condition")
                  for value in values}
    assert all(value.startswith("|") for _, value in conditions), conditions
    assert conditions == {
        ("ConditionVirtualization", "|xen"),
        ("ConditionPathExists", "|/sys/hypervisor/type"),  # drivers/xen/sys-hypervisor.c
        ("ConditionPathExists", "|/proc/xen"),             # drivers/xen/xenfs (mount point)
        ("ConditionPathExists", "|/dev/xen/xenbus"),       # xenbus_dev_frontend.c: what we open
    }


def test_unit_conflicts_with_other_agents_and_restarts_on_failure():
    assert set(one("Unit", "Conflicts").split()) == {"xe-linux-distribution.service",
                                                     "xen-guest-agent.service"}
    assert one("Service", "Restart") == "on-failure"  # also covers a watchdog timeout
    assert one("Service", "ExecStart") == f"{INSTALLED} run"
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service", "RestartPreventExitStatus") == "78"  # EX_CONFIG: retrying cannot help
    assert one("Install", "WantedBy") == "multi-user.target"


def test_unit_is_notify_with_a_watchdog_from_the_main_process():
    # READY=1 after the first publish and WATCHDOG=1 from the loop: a wedged loop
    # stops the pings and is restarted.  NotifyAccess=main: a hook cannot fake them.
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    watchdog = seconds(one("Service", "WatchdogSec"))
    # A wedged agent must be restarted before xenopsd gives up on an acknowledgement
    # (domain_shutdown_ack_timeout = 60 s, xen-api ocaml/xenopsd/lib/xenops_server.ml).
    assert watchdog + seconds(one("Service", "RestartSec")) < 60
    # and leave the loop several seconds between pings (it pings at half the timeout).
    assert watchdog >= 10


def test_resources_are_bounded_without_sandboxing_the_hooks():
    service = load()["Service"]
    assert one("Service", "MemoryMax") == "256M"
    assert one("Service", "TasksMax") == "64"
    # A hook killed by the cgroup's OOM killer must not stop the agent with it.
    assert one("Service", "OOMPolicy") == "continue"
    # Hooks may edit /etc, renew leases, step the clock: no filesystem sandbox.
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadOnlyPaths", "PrivateDevices"):
        assert key not in service


def test_stop_timeout_leaves_room_for_hooks():
    stop = seconds(one("Service", "TimeoutStopSec"))
    assert stop > ControlConfig().hook_timeout
    assert one("Service", "KillMode") == "mixed"  # SIGTERM to the agent, which stops its hooks
    assert MAX_GRACE < 60


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """systemd's own parser: an unknown key or a bad value is only a warning to
    systemd (it ignores the line), so any output at all fails the test.  verify also
    checks that ExecStart is executable: the unit is copied with ExecStart pointing at
    this checkout's console script instead of the installed location."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: install Debian's `systemd` package", pytrace=False)
    script = str(Path(sys.executable).parent / "xenguest-agent")
    assert Path(script).exists(), script
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 1
    copy = tmp_path / "xenguest-agent.service"
    copy.write_text(text.replace(INSTALLED, script))
    done = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr
