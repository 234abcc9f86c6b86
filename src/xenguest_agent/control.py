"""``control/shutdown`` requests and the ``control/feature-*`` flags.

The toolstack asks a guest to power off, reboot, halt or suspend by writing
the request into ``control/shutdown`` (xenopsd ``Domain.shutdown``: one
transaction that removes and rewrites the key) and then waits up to 60 s for
the acknowledgement, the value becoming ``""`` (xenopsd
``shutdown_wait_for_ack``), before waiting for the domain to go down.

Linux (``drivers/xen/manage.c``, ``shutdown_handler``) and FreeBSD
(``sys/dev/xen/control/control.c``) acknowledge and perform
poweroff/reboot/halt/suspend in the kernel, so by default (mode ``auto``) the
agent only observes: it logs the request and runs the administrator's hooks.
If nobody acknowledges within ``control.grace`` seconds (an old FreeBSD, a
kernel without the handler) the agent acknowledges and performs the action
with a fixed command.  Mode ``agent`` always acts, mode ``observe`` never does.

Only the known values are ever acted on.  Anything else in the key (garbage,
a very long value, control characters: the toolstack never writes those) is
logged once and refused; nothing from the key reaches a command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Set, Tuple

from xenguest_agent.config import ControlConfig
from xenguest_agent.hooks import Hooks
from xenguest_agent.host import CommandError, Runner
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

log = logging.getLogger(__name__)

SHUTDOWN_KEY = "control/shutdown"

#: xenopsd ``string_of_shutdown_reason``: the only values the toolstack writes.
REQUESTS = ("poweroff", "reboot", "halt", "suspend", "s3")

#: Requests the agent can carry out from user space.  A suspend needs the
#: kernel (it must freeze everything and hand the domain back to Xen); an S3
#: request is not acknowledged by anyone (xenopsd does not wait for it).
ACTIONS = ("poweroff", "reboot", "halt")

#: The flags xapi checks before offering clean shutdown/reboot/suspend and
#: migration on an HVM guest (xapi_vm_lifecycle.ml, check_op_for_feature).
FEATURES = ("poweroff", "reboot", "suspend")

HOOK_FOR = {"poweroff": "pre-shutdown", "halt": "pre-shutdown", "reboot": "pre-reboot",
            "suspend": "pre-suspend", "s3": "pre-suspend"}

REFUSED_MEMORY = 32  # distinct refused values remembered (bounded: the key is guest-visible input)


def describe(value: str, limit: int = 64) -> str:
    """A loggable, bounded rendering of an untrusted value."""
    text = repr(value[:limit])
    return text + (f"... ({len(value)} bytes)" if len(value) > limit else "")


@dataclass
class Pending:
    """A request seen and not yet acknowledged."""

    value: str
    seen_at: float
    deadline: Optional[float]


class Control:
    """Watches ``control/shutdown`` and keeps the feature flags advertised."""

    def __init__(self, config: ControlConfig, commands: Mapping[str, Sequence[str]], run: Runner,
                 hooks: Hooks, kernel_features: Tuple[str, ...], unadvertised: Tuple[str, ...],
                 clock: Callable[[], float]) -> None:
        """``kernel_features``: flags this OS's kernel writes itself (Linux);
        ``unadvertised``: requests the kernel handles but never advertises
        (FreeBSD), which the agent advertises for it."""
        self.config = config
        self.commands = {k: tuple(v) for k, v in commands.items()}
        self.run = run
        self.hooks = hooks
        self.kernel_features = kernel_features
        self.unadvertised = unadvertised
        self.clock = clock
        self.pending: Optional[Pending] = None
        #: the last poweroff/reboot/halt request whose pre-* hooks ran here (the daemon's stop
        #: path then does not run them again when that shutdown stops the agent)
        self.served_shutdown: Optional[str] = None
        self.seen_kernel_features: Set[str] = set()
        self._refused: Dict[str, None] = {}

    # --- feature flags -----------------------------------------------------------------------

    def learn(self, store: XenStore) -> None:
        """Remember the flags the kernel wrote at boot, so they can be written again
        when a migration leaves a fresh tree without them (the guest's tree is not
        migrated; Linux writes its flags only once, in setup_shutdown_watcher)."""
        for name in self.kernel_features:
            if store.read(f"control/feature-{name}") == "1":
                self.seen_kernel_features.add(name)

    def advertised(self) -> Dict[str, str]:
        """The ``control/feature-*`` keys that should exist."""
        names = set(self.seen_kernel_features) | set(self.unadvertised)
        return {f"control/feature-{name}": "1" for name in sorted(names)}

    # --- requests ----------------------------------------------------------------------------

    def deadline(self) -> Optional[float]:
        return self.pending.deadline if self.pending else None

    def on_event(self, store: XenStore) -> None:
        """The key changed (or a watch fired spuriously): re-read and decide."""
        value = store.read(SHUTDOWN_KEY)
        if value is None or value == "":
            if self.pending is not None:
                log.info("shutdown request %r acknowledged by the guest kernel after %.2fs",
                         self.pending.value, self.clock() - self.pending.seen_at)
                self.pending = None
            elif value == "":
                # the kernel acknowledges within microseconds, usually before this
                # process sees the request at all (the watch says only "changed")
                log.debug("control/shutdown is acknowledged (a request the kernel handled)")
            return
        if value not in REQUESTS:
            self._refuse(value)
            return
        if self.pending is not None and self.pending.value == value:
            return  # spurious re-fire of a request already being handled
        now = self.clock()
        mode = self.config.mode
        log.info("toolstack requests %s (mode %s)", value, mode)
        if mode == "agent":
            self.pending = Pending(value, now, None)
            self._take_over(store, reason="mode agent")
            return
        deadline = now + self.config.grace if mode == "auto" and value in ACTIONS else None
        self.pending = Pending(value, now, deadline)
        if value in ACTIONS:
            self.served_shutdown = value
        self.hooks.run(HOOK_FOR[value], {"request": value})
        if deadline is not None and self.clock() >= deadline:
            self.on_deadline(store)

    def on_deadline(self, store: XenStore) -> None:
        """Grace period over: if the request is still there unacknowledged, act."""
        pending = self.pending
        if pending is None or pending.deadline is None or self.clock() < pending.deadline:
            return  # nothing waiting, observe mode, or not yet
        value = store.read(SHUTDOWN_KEY)
        if value != pending.value:
            if value in (None, ""):
                log.info("shutdown request %r acknowledged by the guest kernel", pending.value)
            self.pending = None
            return
        pending.deadline = None
        self._take_over(store, reason=f"no acknowledgement within {self.config.grace:g}s",
                        hooks_done=True)

    def _take_over(self, store: XenStore, reason: str, hooks_done: bool = False) -> None:
        pending = self.pending
        assert pending is not None
        request = pending.value
        if request not in ACTIONS:
            log.warning("%s requested (%s) but only the kernel can carry it out: not acknowledged",
                        request, reason)
            self.pending = None
            return
        argv = self.commands.get(request)
        if not argv:
            log.error("%s requested (%s) but no command is configured for it: not acknowledged",
                      request, reason)
            self.pending = None
            return
        log.warning("acknowledging %s and carrying it out (%s): %s", request, reason, " ".join(argv))
        try:
            store.write(SHUTDOWN_KEY, "")  # the acknowledgement xenopsd waits for
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            log.error("could not acknowledge %s: %s (carrying it out anyway)", request, exc)
        self.served_shutdown = request
        if not hooks_done:
            self.hooks.run(HOOK_FOR[request], {"request": request})
        try:
            result = self.run(argv, timeout=60.0)
            if result.returncode != 0:
                log.error("%s exited %d: %s", argv[0], result.returncode,
                          (result.stderr or result.stdout).strip()[:500])
        except CommandError as exc:
            log.error("could not run %s: %s", " ".join(argv), exc)
        self.pending = None

    def _refuse(self, value: str) -> None:
        if value in self._refused:
            return
        if len(self._refused) >= REFUSED_MEMORY:
            self._refused.pop(next(iter(self._refused)))
        self._refused[value] = None
        log.warning("refusing unknown control/shutdown value %s: only %s are acted on",
                    describe(value), ", ".join(REQUESTS))

    def forget(self) -> None:
        """After a resume: a suspend request was carried out by the kernel."""
        self.pending = None
