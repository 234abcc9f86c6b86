"""The agent facade: collect facts -> render keys -> publish the difference.

:class:`Agent` composes an OS backend, the schema and (for ``run``) a publisher;
it holds the little state a round needs from the previous one: the last good
value of each collector, the address indexes, the memory figure last published.
The CLI builds it; the daemon drives it.
"""

from __future__ import annotations

import time

from xenguest_agent import __version__, schema
from xenguest_agent.backends.base import Backend
from xenguest_agent.config import Config, MemoryConfig
from xenguest_agent.facts import Facts, Interface, Memory
from xenguest_agent.log import get_logger
from xenguest_agent.network import NetworkView, group_addresses, resolve_vifs
from xenguest_agent.publisher import Publisher, PublishResult
from xenguest_agent.ratelog import RateLimitedLog
from xenguest_agent.records import dataclass
from xenguest_agent.xenstore import KEY_ERRORS, XenStore, XenStoreError, XenStoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, Optional, Tuple, TypeVar

    from xenguest_agent.network import Slots
    Clock = Callable[[], float]
    T = TypeVar("T")

log = get_logger(__name__)


#: The value of ``data/updated``.  Readers test that the key exists (squeezed)
#: or react to its being rewritten; the value itself carries no meaning.
UPDATED_VALUE = "1"

COLLECTORS = ("os", "memory", "interfaces", "capabilities", "names")

#: How long a failing collector's last good value stands in for it, counted from
#: its last success: three default safety sweeps (config ``interval``).  A
#: collector still failing after that is broken, not flaky: it then has no
#: value, so its keys are withdrawn (removed) until it succeeds again, rather
#: than published as current for ever.
LAST_GOOD_MAX_AGE = 900.0


#: A move this many times the threshold is written at the next memory check
#: without waiting for ``min_interval``: a balloon reaching its target, a large
#: allocation or release, which the toolstack's graph should show promptly.
PROMPT_FACTOR = 4


def memory_threshold_kib(total_kib: int, config: MemoryConfig) -> float:
    """Both thresholds must be passed: the larger of the absolute one and the
    share of total.  (Either alone made the 16 MiB one fire on any large guest
    whose page cache breathes; the share alone would be too fine on a small one.)"""
    return max(float(config.threshold_kib), total_kib * config.threshold_percent / 100.0)


def memory_due(published: Optional[Memory], since: float, now: float, current: Memory,
               config: MemoryConfig) -> bool:
    """The rule for re-publishing ``data/meminfo_free`` (docs/keys.md, docs/performance.md).

    Its reader, rrdp-squeezed (xen-api ocaml/xcp-rrdd/bin/rrdp-squeezed/rrdp_squeezed.ml,
    ``MemoryActions.watch_fired``), watches the key, caches the value it reads and
    reports the cached value as ``memory_internal_free`` at every rrdd sample: the
    graph is a step function of what was written, so a write only has to follow the
    real figure closely enough, not often.

    * first figure, or total changed (balloon, hot-plug): now;
    * moved by ``PROMPT_FACTOR`` x the threshold: now;
    * moved by the threshold: once ``min_interval`` passed since the last write;
    * moved at all: once ``max_age`` passed."""
    if published is None or published.total_kib != current.total_kib:
        return True
    delta = abs(current.free_kib - published.free_kib)
    if delta == 0:
        return False
    threshold = memory_threshold_kib(current.total_kib, config)
    elapsed = now - since
    if delta >= PROMPT_FACTOR * threshold:
        return True
    if delta >= threshold:
        return elapsed >= config.min_interval
    return elapsed >= config.max_age


@dataclass(frozen=True)
class MacDirectory:
    """What the toolstack says about NIC MACs: ``device/vif/N/mac`` and
    ``xenserver/device/net-sriov-vf/N/mac`` (a fallback when the guest kernel
    does not tell which VIF a NIC is)."""

    vifs: Dict[str, int]
    sriov: Dict[str, int]


def read_mac_directory(store: XenStore) -> MacDirectory:
    """Read key by key: an entry xenstored refuses (KEY_ERRORS: e.g. EACCES on a
    VIF the guest may not read) is skipped alone."""
    def attempt(request: Callable[[str], T], path: str) -> Optional[T]:
        try:
            return request(path)
        except XenStoreError as exc:
            if isinstance(exc, XenStoreUnavailable) or exc.errno not in KEY_ERRORS:
                raise
            log.debug("skipping %s: %s", path, exc)
            return None

    def read(base: str) -> Dict[str, int]:
        found: Dict[str, int] = {}
        for child in attempt(store.ls, base) or ():
            mac = attempt(store.read, f"{base}/{child}/mac") if child.isdigit() else None
            if mac:
                found[mac.strip().lower()] = int(child)
        return found
    return MacDirectory(vifs=read("device/vif"), sriov=read("xenserver/device/net-sriov-vf"))


class Agent:
    """One guest's facts and their XenStore rendering."""

    def __init__(self, backend: Backend, config: Config, clock: Clock = time.monotonic) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.tools = schema.tools_version(__version__)
        self._last_good: Dict[str, object] = {}
        self._good_at: Dict[str, float] = {}
        self._warn = RateLimitedLog(log, clock=clock)
        self._slots: Dict[str, Slots] = {}
        self._memory_published: Optional[Memory] = None
        self._memory_since = 0.0
        self._macs: Optional[MacDirectory] = None
        self._macs_for: Tuple[str, ...] = ()

    # --- collection ------------------------------------------------------------------------

    def _run_collector(self, name: str) -> object:
        method = {
            "os": self.backend.os_info, "memory": self.backend.memory,
            "interfaces": self.backend.interfaces, "capabilities": self.backend.capabilities,
            "names": self.backend.host_names,
        }[name]
        started = time.perf_counter()
        try:
            value = method()
        except Exception as exc:  # one broken collector never stops the others
            return self._failed(name, exc, (time.perf_counter() - started) * 1000)
        self._last_good[name] = value
        self._good_at[name] = self.clock()
        return value

    def _failed(self, name: str, exc: Exception, elapsed_ms: float) -> object:
        """The last good value while it is younger than LAST_GOOD_MAX_AGE, else None."""
        if name in self._last_good and self.clock() - self._good_at[name] > LAST_GOOD_MAX_AGE:
            del self._last_good[name]
            log.warning("collector %s has failed for over %gs: withdrawing its keys until it "
                        "works again (%s)", name, LAST_GOOD_MAX_AGE, exc)
        kept = "keeping the last good value" if name in self._last_good else "no value"
        self._warn.warning(("collector", name, type(exc).__name__),
                           "collector %s failed after %.1f ms: %s (%s)", name, elapsed_ms, exc, kept)
        return self._last_good.get(name)

    def collect(self, only: Optional[Iterable[str]] = None) -> Facts:
        """Run the collectors (all, or those named in ``only``: the others keep
        their last good value, e.g. a memory tick does not rescan interfaces)."""
        wanted = set(COLLECTORS if only is None else only)
        values = {name: (self._run_collector(name) if name in wanted or name not in self._last_good
                         else self._last_good[name]) for name in COLLECTORS}
        return Facts(tools=self.tools, os=values["os"], memory=values["memory"],  # type: ignore[arg-type]
                     interfaces=values["interfaces"], capabilities=values["capabilities"],  # type: ignore[arg-type]
                     names=values["names"])  # type: ignore[arg-type]

    # --- rendering -------------------------------------------------------------------------

    def network_view(self, facts: Facts, macs: Optional[MacDirectory]) -> Optional[NetworkView]:
        if facts.interfaces is None:
            return None
        net = self.config.network
        interfaces = resolve_vifs(facts.interfaces, dict(net.static_vifs),
                                  macs.vifs if macs else {})
        return group_addresses(interfaces, macs.sriov if macs else {}, net.include, net.exclude)

    def render(self, facts: Facts, macs: Optional[MacDirectory] = None) -> Dict[str, str]:
        """The desired keys for ``facts``; remembers the address indexes it chose."""
        features = self.config.features
        rendered = schema.render(facts, self.network_view(facts, macs), self._slots,
                                 max_addresses=self.config.network.max_addresses,
                                 advertise_balloon=features.balloon,
                                 advertise_hotplug=features.hotplug)
        self._slots = rendered.slots
        return rendered.values

    def memory_moved(self) -> bool:
        """The memory tick: read the memory figures only (``/proc/meminfo``, the
        FreeBSD sysctls) and say whether a publish is due.  When it is not, nothing
        else runs: no render, no diff."""
        current = self._run_collector("memory")
        if not isinstance(current, Memory):  # failed, no good value left: withdraw once
            return self._memory_published is not None
        return memory_due(self._memory_published, self._memory_since, self.clock(), current,
                          self.config.memory)

    def _apply_memory_hysteresis(self, facts: Facts, desired: Dict[str, str]) -> None:
        current = facts.memory
        if current is None:  # the keys are withdrawn: the next figure is a first one
            self._memory_published = None
            return
        now = self.clock()
        if memory_due(self._memory_published, self._memory_since, now, current, self.config.memory):
            self._memory_published = current
            self._memory_since = now
        else:  # keep publishing the figure already in XenStore: the diff sees no change
            desired["data/meminfo_free"] = str(self._memory_published.free_kib)  # type: ignore[union-attr]

    # --- publishing ------------------------------------------------------------------------

    def _mac_directory(self, store: XenStore, facts: Facts) -> Optional[MacDirectory]:
        """Read the toolstack's MAC table only when a NIC's VIF id is unknown, and
        again only when the set of such NICs changes (hot-plug)."""
        unresolved = tuple(sorted(i.mac for i in facts.interfaces or ()
                                  if i.vif is None and i.mac and not i.lower))
        if not unresolved:
            return None
        if self._macs is None or unresolved != self._macs_for:
            self._macs = read_mac_directory(store)
            self._macs_for = unresolved
        return self._macs

    def resolved_interfaces(self) -> Tuple[Interface, ...]:
        """The last collected interfaces with the VIF ids they are published under (what
        a static IP request names: staticip/manager.py), without collecting again."""
        interfaces = self._last_good.get("interfaces")
        if not isinstance(interfaces, tuple):
            return ()
        return resolve_vifs(interfaces, dict(self.config.network.static_vifs),
                            self._macs.vifs if self._macs else {})

    def forget(self) -> None:
        """After a resume, migration or reconnect: nothing cached is trusted."""
        self._macs = None
        self._memory_published = None

    def publish(self, store: XenStore, publisher: Publisher,
                extra: Optional[Dict[str, str]] = None,
                only: Optional[Iterable[str]] = None) -> PublishResult:
        """One round: collect, render, hysteresis, publish the difference.
        ``extra``: keys from elsewhere (control/feature-* flags); ``only``:
        the collectors to re-run (default all)."""
        facts = self.collect(only)
        desired = self.render(facts, self._mac_directory(store, facts))
        desired.update(extra or {})
        self._apply_memory_hysteresis(facts, desired)
        markers = {schema.UPDATED_KEY: UPDATED_VALUE, schema.NUDGE_KEY: desired[schema.NUDGE_KEY]}
        return publisher.publish(desired, markers=markers, quiet=schema.MEMORY_KEYS)
