"""``control/shutdown`` requests and the ``control/feature-*`` flags.

The toolstack asks a guest to power off, reboot, halt or suspend by writing
the request into ``control/shutdown`` (xenopsd ``Domain.shutdown``: one
transaction that removes and rewrites the key) and then waits up to 60 s for
the acknowledgement, the value becoming ``""`` (xenopsd
``shutdown_wait_for_ack``), before waiting for the domain to go down.

Linux (``drivers/xen/manage.c``, ``shutdown_handler``) and FreeBSD
(``sys/dev/xen/control/control.c``) acknowledge and perform
poweroff/reboot/halt/suspend in the kernel, so by default (mode ``auto``) the
agent only observes: it logs the request and starts the administrator's hooks.
If nobody acknowledges within ``control.grace`` seconds of the request (an old
FreeBSD, a kernel without the handler) the agent acknowledges and performs the
action with a fixed command, whatever the hooks are doing: the command starts
once the hooks have finished or been killed at their timeout.  Mode ``agent``
always acts, mode ``observe`` never does.  Hooks and the command run off the
loop (hooks.py); the daemon calls :meth:`Control.poll` when a job finishes.

The acknowledgement is read, compared and written in one transaction, redone
on EAGAIN, as Linux's ``shutdown_handler`` does (xenbus_transaction_start,
read, write ``""``, xenbus_transaction_end, ``goto again`` on -EAGAIN).  Like
Linux, which ignores the result of that write and runs the handler anyway, a
refused acknowledgement (``control/`` read-only to the guest) is logged and the
request is still carried out, once: a request is acted on once for as long as
the key keeps its value, and is new only after the key was seen holding
something else.

Only the known values are ever acted on.  Anything else in the key (garbage,
a very long value, control characters: the toolstack never writes those) is
logged once and refused; nothing from the key reaches a command line.
"""

from __future__ import annotations

import os
import stat

from xenguest_agent.config import ControlConfig
from xenguest_agent.hooks import HookJob, Hooks
from xenguest_agent.log import get_logger
from xenguest_agent.records import dataclass, field
from xenguest_agent.trust import UntrustedError, open_trusted_directory, require_trusted
from xenguest_agent.xenstore import Transaction, XenStore, XenStoreError, XenStoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

log = get_logger(__name__)

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

#: Flags remembered when found in the tree at start besides the kernel's own:
#: xapi needs ``control/feature-vcpu-hotplug`` for ``changing_VCPUs_live`` on an HVM
#: guest without detected PV drivers (xapi_vm_lifecycle.ml, check_op_for_feature;
#: PV and PVH guests, and guests with PV drivers, are allowed anyway).  Linux does not write it
#: (drivers/xen/cpu_hotplug.c only watches ``cpu/<n>/availability``); whoever
#: advertised it at boot, it is lost with the tree on a migration like the others.
REMEMBERED = ("vcpu-hotplug",)

HOOK_FOR = {"poweroff": "pre-shutdown", "halt": "pre-shutdown", "reboot": "pre-reboot",
            "suspend": "pre-suspend", "s3": "pre-suspend"}

COMMAND_TIMEOUT = 60.0  # seconds for the power command (systemctl only queues the job)
REFUSED_MEMORY = 32  # distinct refused values remembered (bounded: the key is guest-visible input)
STATE_LIMIT = 4096  # bytes of the state file read at most


def describe(value: str, limit: int = 64) -> str:
    """A loggable, bounded rendering of an untrusted value."""
    text = repr(value[:limit])
    return text + (f"... ({len(value)} bytes)" if len(value) > limit else "")


@dataclass
class Pending:
    """A request seen, with the jobs it started."""

    value: str
    seen_at: float
    deadline: Optional[float]  # when the agent takes over (auto mode), None otherwise
    jobs: List[HookJob] = field(default_factory=list)


class Control:
    """Watches ``control/shutdown`` and keeps the feature flags advertised."""

    def __init__(self, config: ControlConfig, commands: Mapping[str, Sequence[str]], hooks: Hooks,
                 kernel_features: Tuple[str, ...], unadvertised: Tuple[str, ...],
                 clock: Callable[[], float], state_path: Optional[str] = None) -> None:
        """``kernel_features``: flags this OS's kernel writes itself (Linux);
        ``unadvertised``: requests the kernel handles but never advertises
        (FreeBSD), which the agent advertises for it; ``state_path``: where the
        flags learned at boot are kept across restarts (a file under /run)."""
        self.config = config
        self.commands = {k: tuple(v) for k, v in commands.items()}
        self.hooks = hooks
        self.learnable = tuple(kernel_features) + tuple(n for n in REMEMBERED
                                                        if n not in kernel_features)
        self.unadvertised = unadvertised
        self.clock = clock
        self.state_path = state_path
        self.pending: Optional[Pending] = None
        #: the last poweroff/reboot/halt request whose pre-* hooks ran here (the daemon's stop
        #: path then does not run them again when that shutdown stops the agent)
        self.served_shutdown: Optional[str] = None
        self.seen_kernel_features: Set[str] = set()
        self._state_loaded = False
        self._handled: Optional[str] = None  # the request acted on while the key holds it
        self._refused: Dict[str, None] = {}

    # --- feature flags -----------------------------------------------------------------------

    def learn(self, store: XenStore) -> None:
        """Remember the flags the kernel wrote at boot, so they can be written again
        when a migration leaves a fresh tree without them (the guest's tree is not
        migrated; Linux writes its flags only once, in setup_shutdown_watcher), also
        across a restart of the agent (kept in the state file)."""
        if not self._state_loaded:
            self._state_loaded = True
            self.seen_kernel_features |= self._load_state()
        before = set(self.seen_kernel_features)
        for name in self.learnable:
            try:
                value = store.read(f"control/feature-{name}")
            except XenStoreUnavailable:
                raise
            except XenStoreError as exc:  # one unreadable flag is that flag's business
                log.debug("cannot read control/feature-%s: %s", name, exc)
                continue
            if value == "1":
                self.seen_kernel_features.add(name)
        if self.seen_kernel_features != before:
            self._save_state()

    def advertised(self) -> Dict[str, str]:
        """The ``control/feature-*`` keys that should exist."""
        names = set(self.seen_kernel_features) | set(self.unadvertised)
        return {f"control/feature-{name}": "1" for name in sorted(names)}

    def _open_state_dir(self, create: bool) -> Tuple[int, str]:
        assert self.state_path is not None
        folder, name = os.path.split(self.state_path)
        if create:
            os.makedirs(folder, mode=0o755, exist_ok=True)
        # the whole chain from /, as for hooks: nobody but root can swap the file under us
        return open_trusted_directory(folder), name

    def _load_state(self) -> Set[str]:
        if self.state_path is None:
            return set()
        try:
            folder, name = self._open_state_dir(create=False)
        except FileNotFoundError:
            return set()
        except (OSError, UntrustedError) as exc:
            log.warning("ignoring the state file %s: %s", self.state_path, exc)
            return set()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=folder)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise UntrustedError(f"{self.state_path} is not a regular file")
                require_trusted(info, self.state_path)
                data = os.read(fd, STATE_LIMIT)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return set()
        except (OSError, UntrustedError) as exc:  # ELOOP: a symlink planted in its place
            log.warning("ignoring the state file %s: %s", self.state_path, exc)
            return set()
        finally:
            os.close(folder)
        names = set(data.decode("ascii", "replace").split()) & set(self.learnable)
        log.info("kernel feature flags from %s: %s", self.state_path, " ".join(sorted(names)))
        return names

    def _save_state(self) -> None:
        """Write the learned flags atomically (a new file renamed over the old)."""
        if self.state_path is None:
            return
        data = "".join(f"{name}\n" for name in sorted(self.seen_kernel_features)).encode("ascii")
        try:
            folder, name = self._open_state_dir(create=True)
        except (OSError, UntrustedError) as exc:
            log.warning("cannot keep the kernel's feature flags in %s: %s", self.state_path, exc)
            return
        temporary = f".{name}.new"
        try:
            try:
                os.unlink(temporary, dir_fd=folder)
            except FileNotFoundError:
                pass
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=folder)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            log.warning("cannot keep the kernel's feature flags in %s: %s", self.state_path, exc)
        finally:
            os.close(folder)

    # --- requests ----------------------------------------------------------------------------

    def deadline(self) -> Optional[float]:
        """When :meth:`on_deadline` must be called (the ``auto`` grace period's end)."""
        return self.pending.deadline if self.pending else None

    @property
    def busy(self) -> bool:
        """A hook or command of a request is still running."""
        return self.pending is not None and any(not job.done for job in self.pending.jobs)

    def on_event(self, store: XenStore) -> None:
        """The key changed (or a watch fired spuriously): re-read and decide."""
        value = store.read(SHUTDOWN_KEY)
        if value is None or value == "":
            self._handled = None
            pending = self.pending
            if pending is not None and pending.deadline is not None:
                log.info("shutdown request %r acknowledged by the guest kernel after %.2fs",
                         pending.value, self.clock() - pending.seen_at)
                pending.deadline = None
                self.poll()
            elif value == "":
                # the kernel acknowledges within microseconds, usually before this
                # process sees the request at all (the watch says only "changed")
                log.debug("control/shutdown is acknowledged (a request the kernel handled)")
            return
        if value not in REQUESTS:
            self._handled = None
            self._refuse(value)
            return
        if value == self._handled:  # a spurious event, or our ack was refused
            log.debug("control/shutdown still holds %s: handled once already", value)
            return
        self._handled = value
        now = self.clock()
        mode = self.config.mode
        log.info("toolstack requests %s (mode %s)", value, mode)
        if mode == "agent":
            self.pending = Pending(value, now, None)
            try:
                self._take_over(store, reason="mode agent", hooks_started=False)
            except XenStoreUnavailable:
                self._handled = self.pending = None  # not handled: seen again after reconnecting
                raise
            return
        deadline = now + self.config.grace if mode == "auto" and value in ACTIONS else None
        self.pending = Pending(value, now, deadline)
        if value in ACTIONS:
            self.served_shutdown = value
        self.pending.jobs.append(self.hooks.start(HOOK_FOR[value], {"request": value}))

    def on_deadline(self, store: XenStore) -> None:
        """Grace period over: if the request is still there unacknowledged, act."""
        pending = self.pending
        if pending is None or pending.deadline is None or self.clock() < pending.deadline:
            return  # nothing waiting, observe mode, or not yet
        deadline, pending.deadline = pending.deadline, None
        try:
            self._take_over(store, reason=f"no acknowledgement within {self.config.grace:g}s",
                            hooks_started=True)
        except XenStoreUnavailable:
            pending.deadline = deadline  # due again once the daemon has reconnected
            raise

    def poll(self) -> None:
        """A job finished (the hooks log their own results): forget a request
        once nothing of it is waiting or running."""
        pending = self.pending
        if pending is not None and pending.deadline is None and all(j.done for j in pending.jobs):
            self.pending = None

    def cancel(self) -> None:
        """The daemon is stopping: kill this request's hooks and command."""
        if self.pending is not None:
            for job in self.pending.jobs:
                job.cancel()
            self.pending = None

    def _acknowledge(self, store: XenStore, request: str) -> str:
        """"acked", "refused" (the write was refused: Linux acts anyway) or "gone"
        (the key no longer holds the request: the kernel answered first)."""
        refusal: List[XenStoreError] = []

        def work(tx: Transaction) -> str:
            refusal.clear()
            if tx.read(SHUTDOWN_KEY) != request:
                return "gone"
            try:
                tx.write(SHUTDOWN_KEY, "")  # the acknowledgement xenopsd waits for
            except XenStoreUnavailable:
                raise
            except XenStoreError as exc:
                refusal.append(exc)
                return "refused"
            return "acked"

        outcome = str(store.transact(work))
        if refusal:
            log.error("could not acknowledge %s: %s (carrying it out once anyway, as Linux "
                      "does; the toolstack will not see the acknowledgement)", request, refusal[0])
        return outcome

    def _take_over(self, store: XenStore, reason: str, hooks_started: bool) -> None:
        pending = self.pending
        assert pending is not None
        request = pending.value
        argv = self.commands.get(request)
        act = False
        if request not in ACTIONS:
            log.warning("%s requested (%s) but only the kernel can carry it out: not acknowledged",
                        request, reason)
        elif not argv:
            log.error("%s requested (%s) but no command is configured for it: not acknowledged",
                      request, reason)
        elif self._acknowledge(store, request) == "gone":
            log.info("shutdown request %r acknowledged by the guest kernel", request)
            hooks_started = True  # nothing to prepare for: someone else carries it out
        else:
            log.warning("carrying out %s (%s): %s", request, reason, " ".join(argv))
            act = True
        if not hooks_started:
            if request in ACTIONS:
                self.served_shutdown = request
            pending.jobs.append(self.hooks.start(HOOK_FOR[request], {"request": request}))
        if act and argv:
            # queued behind the hooks: it starts once they finished or were killed
            pending.jobs.append(self.hooks.start_command(request, argv, COMMAND_TIMEOUT))
        self.poll()

    def _refuse(self, value: str) -> None:
        if value in self._refused:
            return
        if len(self._refused) >= REFUSED_MEMORY:
            self._refused.pop(next(iter(self._refused)))
        self._refused[value] = None
        log.warning("refusing unknown control/shutdown value %s: only %s are acted on",
                    describe(value), ", ".join(REQUESTS))

    def forget(self) -> None:
        """After a resume: a suspend request was carried out by the kernel, and the
        tree is new (a request seen there is a new one)."""
        self.pending = None
        self._handled = None
