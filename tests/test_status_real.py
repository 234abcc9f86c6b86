"""``xenguest-agent status`` against Debian's real xenstored, as an unprivileged guest domain.

The agent publishes with ``run --once`` through the guest's ring (tests/support/toolstack.py),
dom0 adds a VIF the way libxl does (backend owned by dom0 and readable by the guest; the
frontend owned by the guest), then ``status`` reads the home over the same ring, with the real
permissions.  Expectations come from xapi's rules (cited in tests/test_status_golden.py), not
from running the code: the guest root says HVM, the daemon's state file names a live pid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.guestroot import GuestRoot
from support.toolstack import GuestDomain
from xenguest_agent import cli
from xenguest_agent.statefile import LINUX_STATE_PATH, StateFile


def _status_root(tmp_path: Path, spec: str) -> Path:
    """A guest root for ``status``: HVM, and this test's process standing for the daemon."""
    root = tmp_path / "status-root"
    (root / "sys/hypervisor").mkdir(parents=True)
    (root / "sys/hypervisor/guest_type").write_text("HVM\n")
    proc = root / "proc" / str(os.getpid())
    proc.mkdir(parents=True)
    (proc / "cmdline").write_text("/usr/bin/python3\0/usr/sbin/xenguest-agent\0run\0")
    (proc / "comm").write_text("xenguest-agent\n")
    StateFile(str(root) + LINUX_STATE_PATH).update(
        pid=os.getpid(), version="test", started="2026-01-01T00:00:00+00:00",
        last_publish="2026-01-01T00:00:01+00:00", refused=[], connected=True, xenstore=spec)
    return root


def _plug_vif(guest: GuestDomain) -> None:
    """libxl's layout for vif 0: backend in dom0's tree (guest may read), frontend in the
    guest's, the backend state Connected (4): xenopsd's evidence of PV drivers."""
    xs, domid = guest.xenstored, guest.domid
    backend = f"/local/domain/0/backend/vif/{domid}/0"
    xs.write(f"{backend}/state", "4")
    xs.chmod(backend, "n0", f"r{domid}", recursive=True)
    front = f"{guest.home}/device/vif/0"
    xs.write(f"{front}/backend", backend)
    xs.write(f"{front}/state", "4")
    xs.chmod(front, f"n{domid}", "r0", recursive=True)


def _status(spec: str, root: Path, config: Path, capsys) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    code = cli.main(["status", "--format", "json", "--xenstore", spec, "--root", str(root),
                     "--os", "linux", "--config", str(config)])
    out = capsys.readouterr()
    assert out.out, (code, out.err)
    return code, json.loads(out.out)


def test_status_after_publishing_then_after_a_key_is_removed(guest_domain: GuestDomain,
                                                             tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    guest_root = GuestRoot(tmp_path / "guest")  # eth0 = vif 0 with 10.0.0.2
    config = tmp_path / "config.yaml"
    config.write_text("")
    assert cli.main(["run", "--once", "--xenstore", guest_domain.spec, "--root",
                     str(guest_root.root), "--os", "linux", "--config", str(config)]) == 0
    _plug_vif(guest_domain)
    root = _status_root(tmp_path, guest_domain.spec)

    code, report = _status(guest_domain.spec, root, config, capsys)
    assert report["problems"] == []
    assert code == 0
    # xapi_guest_agent.ml networks: attr/vif/0/ipv4/0 gives "0/ip" and "0/ipv4/0"
    assert report["networks"] == {"0/ip": "10.0.0.2", "0/ipv4/0": "10.0.0.2"}
    assert report["domain_type"]["kind"] == "hvm"
    assert report["PV_drivers_detected"] is True  # read through the guest's own permissions
    assert report["PV_drivers_version"]["kind"] == "Linux"
    assert report["daemon"]["running"] is True
    assert all(op["allowed"] for op in report["operations"])

    guest_domain.xenstored.rm(f"{guest_domain.home}/attr/PVAddons/MajorVersion")
    code, report = _status(guest_domain.spec, root, config, capsys)
    assert code == 1
    assert report["PV_drivers_version"]["kind"] == "Unknown"
    assert ("attr/PVAddons/MajorVersion missing: XenCenter shows 'tools not installed' "
            "(PV_drivers_version Unknown)") in report["problems"]


def test_status_without_xenstore_exits_69(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.yaml"
    config.write_text("")
    code = cli.main(["status", "--xenstore", f"unix:{tmp_path}/no-such-socket", "--root",
                     str(tmp_path), "--os", "linux", "--config", str(config)])
    assert code == os.EX_UNAVAILABLE == 69
    assert "XenStore unavailable" in capsys.readouterr().err


def test_read_home_skips_a_node_it_may_not_read_and_stays_bounded(guest_domain: GuestDomain) -> None:
    from xenguest_agent import status
    from xenguest_agent.xenstore import XenStore

    xs, home = guest_domain.xenstored, guest_domain.home
    xs.write(f"{home}/data/os_name", "Debian")
    xs.write(f"{home}/data/secret/inner", "x")
    xs.chmod(f"{home}/data/secret", "n0", recursive=True)  # dom0's, no access for the guest
    xs.write(f"{home}/data/updated", "1")
    store = XenStore(guest_domain.spec)
    store.connect()
    try:
        home_read = status.read_home(store)
        assert ("data/secret", "EACCES") in home_read.unreadable
        assert home_read.tree["data/os_name"] == "Debian"
        assert home_read.tree["data/updated"] == "1"  # read on after the refusal
        assert not any(k.startswith("data/secret") for k in home_read.tree)
        small = status.read_home(store, max_nodes=3)
        assert small.truncated and len(small.tree) == 3
    finally:
        store.close()


def test_status_names_a_stopped_daemon_a_stale_state_and_another_agent(
        guest_domain: GuestDomain, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    guest_root = GuestRoot(tmp_path / "guest")
    config = tmp_path / "config.yaml"
    config.write_text("")
    assert cli.main(["run", "--once", "--xenstore", guest_domain.spec, "--root",
                     str(guest_root.root), "--os", "linux", "--config", str(config)]) == 0
    root = _status_root(tmp_path, guest_domain.spec)
    state = root / LINUX_STATE_PATH.lstrip("/")

    def text_status() -> tuple[int, list[str]]:
        capsys.readouterr()
        code = cli.main(["status", "--xenstore", guest_domain.spec, "--root", str(root),
                         "--os", "linux", "--config", str(config)])
        out = capsys.readouterr().out.splitlines()
        return code, out[out.index("missing:") + 1:] if "missing:" in out else []

    assert text_status() == (0, [])
    # a new StateFile starts afresh (as a starting daemon does): no process 999999999 under root
    StateFile(str(state)).update(pid=999_999_999, last_publish="2026-01-01T00:00:01+00:00")
    code, missing = text_status()
    assert code == 1
    assert missing == [(f"  {state}: the daemon (pid 999999999) is not running; it last "
                       "published 2026-01-01T00:00:01+00:00")]
    state.unlink()
    code, missing = text_status()
    assert code == 1 and missing[0].startswith(f"  {state} missing or unreadable: ")
    StateFile(str(state)).update(pid=os.getpid(), connected=True)
    (root / "proc/777").mkdir()
    (root / "proc/777/comm").write_text("xe-daemon\n")
    (root / "proc/777/cmdline").write_text("/usr/sbin/xe-daemon\0-p\0/var/run/xe-daemon.pid\0")
    code, missing = text_status()
    assert code == 1
    assert missing == [("  xe-daemon is also publishing (process 777 (/usr/sbin/xe-daemon -p "
                       "/var/run/xe-daemon.pid)): it writes the same keys; stop one of the two agents")]
