"""The facade the daemon drives: which keys to watch, which jobs to run, what to write back.

Flow (the daemon owns the loop, this module never blocks it):

1. ``watch_paths()`` once the feature is advertised (``feature_keys()``);
2. on any event under them, ``on_change(read, ls)`` on the loop: XenStore reads
   only, returns one :class:`Job` per NIC whose ``enabled``/``enabled6`` is present;
3. ``job.run()`` off the loop (it reads and writes the guest's files and runs the
   backend's commands through the Host runner, each with a timeout);
4. back on the loop, ``finish(job, read)`` inside a XenStore transaction gives
   ``{path: value}`` to write (None: remove), then ``on_change`` again.

What is written back follows XenServer's Windows agent
(xenserver/win-xenguestagent src/xenguestlib/FeatureStaticIpSetting.cs,
``onFeature``): ``error-code``/``error-msg`` reset to ``0``/"" or set to the
failure, then ``enabled`` and ``enabled6`` removed, so a later event does not
apply the same request again; xenopsd writes them anew at the next plug or
``VIF.configure_ipv4/ipv6``.  The guest may write there: xenopsd creates the
directory with ``Xenbus_utils.rwperm_for_guest`` (xen-api
``ocaml/xenopsd/xc/device.ml`` ``Generic.add_device``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence

from xenguest_agent.facts import Interface
from xenguest_agent.host import Host
from xenguest_agent.staticip import probe
from xenguest_agent.staticip.freebsd import FreeBsdRcConf
from xenguest_agent.staticip.linux import Ifupdown, Networkd, NetworkManager
from xenguest_agent.staticip.plan import (
    ApplyFailed,
    Backend,
    Nic,
    execute,
    file_changes,
)
from xenguest_agent.staticip.probe import FEATURE_KEY, ROOTS, SETTING, VIF_ROOT
from xenguest_agent.staticip.setting import (
    APPLY_FAILED,
    CONFLICT,
    NIC_NOT_FOUND,
    NO_BACKEND,
    OK,
    Refusal,
    StaticIpSetting,
    clean_message,
    parse_setting,
    parse_state,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional
    Read = Callable[[str], Optional[str]]
    List_ = Callable[[str], Optional[list[str]]]

KEYS = ("mac", "enabled", "address", "gateway", "enabled6", "address6", "gateway6")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")

#: The backend for each name :func:`probe.detect` gives.
BACKENDS: dict[str, Callable[[], Backend]] = {
    probe.NETWORKMANAGER: NetworkManager,
    probe.NETWORKD: Networkd,
    probe.IFUPDOWN: Ifupdown,
    probe.RC_CONF: FreeBsdRcConf,
}


def detect(host: Host) -> Backend | None:
    """The guest's network configuration system (chosen by :func:`probe.detect`), or None."""
    name = probe.detect(host)
    return BACKENDS[name]() if name is not None else None


def match_nic(root: str, devid: int, mac: str | None, interfaces: Sequence[Interface]) -> Nic:
    """The guest interface the toolstack named: the VIF's device id first, then
    its MAC; raises :class:`Refusal` rather than guess."""
    leaves = [i for i in interfaces if not i.lower]
    found: Interface | None = None
    if root == VIF_ROOT:
        by_id = [i for i in leaves if i.vif == devid]
        if by_id:
            found = by_id[0]
            if mac and found.mac and found.mac.lower() != mac:
                raise Refusal(CONFLICT, f"VIF {devid} is {found.name} with MAC {found.mac}, "
                                        f"but the setting names MAC {mac}")
    if found is None:
        if not mac:
            raise Refusal(NIC_NOT_FOUND, f"no interface is VIF {devid} and the setting has no MAC")
        by_mac = [i for i in leaves if i.mac and i.mac.lower() == mac
                  and (root != VIF_ROOT or i.vif in (None, devid))]
        if len(by_mac) > 1:
            names = ", ".join(sorted(i.name for i in by_mac))
            raise Refusal(CONFLICT, f"several interfaces carry MAC {mac} ({names})")
        if not by_mac:
            raise Refusal(NIC_NOT_FOUND, f"no interface with MAC {mac}")
        found = by_mac[0]
    if not _NAME.match(found.name):
        raise Refusal(CONFLICT, f"interface name {clean_message(found.name)!r} is not supported")
    return Nic(found.name, (found.mac or mac or "").lower() or None)


class Job:
    """One NIC's setting: refused already, or work to run off the loop."""

    def __init__(self, base: str, inputs: Mapping[str, str | None], host: Host,
                 backend: Backend | None, nic: Nic | None, setting: StaticIpSetting | None,
                 refusal: Refusal | None) -> None:
        self.base = base
        self.inputs = dict(inputs)
        self.nic = nic
        self._host = host
        self._backend = backend
        self._setting = setting
        self.code, self.message = (refusal.code, refusal.message) if refusal else (OK, "")
        self._pending = refusal is None

    def run(self) -> None:
        """Apply the setting (off the loop; never raises for a bad setting or a failed command)."""
        if not self._pending:
            return
        self._pending = False
        assert self._backend is not None and self.nic is not None and self._setting is not None
        state = f"{self._backend.state_dir}/{self.nic.name}"
        try:
            old = parse_state(self._host.read_text(state))
            new = old.merge(self._setting)
            steps = self._backend.plan(self._host, self.nic, old, new)
            record = file_changes(self._host, [(state, new.state_text() if new.managed else None, 0o644)])
            execute(self._host, [*record, *steps])
        except Refusal as exc:
            self.code, self.message = exc.code, exc.message
        except ApplyFailed as exc:
            self.code, self.message = APPLY_FAILED, clean_message(str(exc))
        except OSError as exc:
            self.code, self.message = APPLY_FAILED, clean_message(f"{self._backend.name}: {exc}")


class StaticIpManager:
    """Static IP settings from the toolstack, applied through the guest's own configuration."""

    def __init__(self, host: Host, interfaces: Callable[[], Sequence[Interface]],
                 enabled: bool = True, backend: Backend | None = None) -> None:
        self._host = host
        self._interfaces = interfaces
        self._enabled = enabled
        self.backend = backend if backend is not None else detect(host)
        self._busy: set[str] = set()
        # requests refused because their NIC is missing, kept until the values or
        # the interfaces change (base -> (values, interfaces))
        self._waiting: dict[str, tuple[object, object]] = {}
        self._lock = threading.Lock()

    def advertise(self) -> bool:
        """Whether to write control/feature-static-ip-setting=1 (xapi refuses
        VIF.configure_ipv4/ipv6 without it: xen-api ocaml/xapi/xapi_vif.ml
        ``assert_has_feature_static_ip_setting`` reads it from the guest
        metrics' ``other``, filled from control/* by xapi_guest_agent.ml)."""
        return self._enabled and self.backend is not None

    def feature_keys(self) -> dict[str, str]:
        return {FEATURE_KEY: "1"} if self.advertise() else {}

    def watch_paths(self) -> list[str]:
        return list(ROOTS) if self.advertise() else []

    def on_change(self, read: Read, ls: List_) -> list[Job]:
        """A job per NIC with a pending request and no job already running."""
        if not self.advertise():
            return []
        jobs: list[Job] = []
        for root in ROOTS:
            for entry in ls(root) or []:
                if not probe.DEVID.match(entry):
                    continue  # paths are built from integers only, in canonical form
                job = self._job(root, int(entry), read)
                if job is not None:
                    jobs.append(job)
        return jobs

    def _job(self, root: str, devid: int, read: Read) -> Job | None:
        base = f"{root}/{devid}/{SETTING}"
        inputs = {f"{base}/enabled": read(f"{base}/enabled"), f"{base}/enabled6": read(f"{base}/enabled6")}
        if all(v is None for v in inputs.values()):
            return None
        with self._lock:
            if base in self._busy:
                return None
            self._busy.add(base)
        values = {key: value for key in KEYS if (value := read(f"{base}/{key}")) is not None}
        interfaces = tuple(self._interfaces())
        seen = (tuple(sorted(values.items())), tuple((i.name, i.mac, i.vif, i.lower) for i in interfaces))
        nic: Nic | None = None
        setting: StaticIpSetting | None = None
        try:
            if self._waiting.get(base) == seen:
                with self._lock:
                    self._busy.discard(base)
                return None  # still no such NIC: nothing new to say
            setting = parse_setting(values)
            if self.backend is None:
                raise Refusal(NO_BACKEND, "no supported network manager (systemd-networkd, "
                                          "NetworkManager, ifupdown or FreeBSD rc.conf)")
            nic = match_nic(root, devid, setting.mac, interfaces)
        except Refusal as exc:
            if exc.code == NIC_NOT_FOUND:
                self._waiting[base] = seen
                return Job(base, {}, self._host, None, None, None, exc)  # the request stays
            self._waiting.pop(base, None)
            return Job(base, inputs, self._host, None, None, None, exc)
        self._waiting.pop(base, None)
        return Job(base, inputs, self._host, self.backend, nic, setting, None)

    def finish(self, job: Job, read: Read) -> dict[str, str | None]:
        """What to write after ``job.run()`` ({path: value}, None = remove), only
        what differs (a write fires the watch again).  A request key is removed
        only if it still holds the value acted on, so a newer request that arrived
        meanwhile is kept for the next ``on_change``; a request whose NIC is
        missing is kept too, and retried when the interfaces or the values change
        (call ``on_change`` after the network facts change)."""
        with self._lock:
            self._busy.discard(job.base)
        out: dict[str, str | None] = {}
        for path, result in ((f"{job.base}/error-code", job.code), (f"{job.base}/error-msg", job.message)):
            if read(path) != result:
                out[path] = result
        for path, value in job.inputs.items():
            if value is not None and read(path) == value:
                out[path] = None
        return out

