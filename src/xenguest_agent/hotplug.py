"""Online hot-added vCPUs and memory blocks from the kernel's uevents (Linux).

Why: ``xl vcpu-set`` / ``VM.set_VCPUs_number_live`` sets ``cpu/<n>/availability``
to ``online`` in the guest's XenStore.  Linux's watch on ``cpu``
(torvalds/linux ``drivers/xen/cpu_hotplug.c``: ``handle_vcpu_hotplug_event`` ->
``vcpu_hotplug`` -> ``enable_hotplug_cpu``) only registers the CPU device
(``xen_arch_register_cpu`` -> ``register_cpu`` in ``drivers/base/cpu.c``, whose
``device_register`` sends ``add`` for ``/devices/system/cpu/cpuN`` in subsystem
``cpu``) and marks it present; it never brings it up.  HVM/PVH guests get the
vCPU through ACPI processor hot-add, which also only registers it.  Someone in
user space has to write ``1`` to ``/sys/devices/system/cpu/cpuN/online`` (its
store brings the CPU up and sends ``online``).  Making a vCPU unavailable goes
the other way (``disable_hotplug_cpu``: ``device_offline`` sends ``offline``,
``xen_arch_unregister_cpu`` sends ``remove``).

Memory: the Xen balloon, built with CONFIG_XEN_BALLOON_MEMORY_HOTPLUG, adds
memory above the boot size with ``add_memory_resource`` (``drivers/xen/balloon.c``
``reserve_additional_memory``, which then waits, BP_WAIT, for the new pages to
be onlined); that creates memory block devices (``add`` in subsystem ``memory``,
``drivers/base/memory.c``: registered offline) which stay offline unless
``/sys/devices/system/memory/auto_online_blocks`` is not ``offline``, in which
case the kernel onlines them itself and the agent stays out.  The agent
writes ``online`` to ``memoryN/state``, not ``online_movable``/``online_kernel``:
Documentation/admin-guide/mm/memory-hotplug.rst ("Onlining Memory Blocks
Manually") says ``online`` lets the kernel pick the zone by the administrator's
configured ``online_policy``; forcing a zone is a policy the agent has no basis for.
Writing ``1`` to an online CPU is accepted (drivers/base/core.c ``online_store``
returns the count when ``device_online`` reports 1); writing ``online`` to an
online block is refused with EINVAL (drivers/base/memory.c ``state_store``, once
``store_mem_state``), so a failed write is judged by re-reading the state.

Which blocks and CPUs: only those that *appear* while the agent runs (an
``add`` for a device the agent has not seen, or has seen removed).  A CPU the
administrator offlined on purpose is already registered, so a synthetic
``add`` from ``udevadm trigger`` (``kobject_synth_uevent``) does not bring it
back, and nothing is touched at start.  After a receive-buffer overrun (ENOBUFS)
the agent rescans sysfs for devices it has not seen.

Uevent datagrams (``lib/kobject_uevent.c``: ``kobject_uevent_env`` builds the
``ACTION=``, ``DEVPATH=``, ``SUBSYSTEM=``, ``SEQNUM=`` variables;
``alloc_uevent_skb`` prefixes ``<action>@<devpath>`` and a NUL; everything goes
to netlink multicast group 1 from port id 0).  udevd re-broadcasts processed
events on group 2 with a ``libudev`` magic header (systemd
``src/libsystemd/sd-device/device-monitor.c``); those, and anything not sent by
the kernel, are ignored.
"""

from __future__ import annotations

import errno
import re
import socket

from xenguest_agent.host import Host
from xenguest_agent.log import get_logger
from xenguest_agent.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Union

    from xenguest_agent.hotplug_rules import HotplugPolicy

log = get_logger(__name__)

NETLINK_KOBJECT_UEVENT = 15  # include/uapi/linux/netlink.h
UEVENT_KERNEL_GROUP = 1      # lib/kobject_uevent.c: kernel uevents go to group 1
LIBUDEV_MAGIC = b"libudev\0"
RECV_SIZE = 16384            # a uevent is at most UEVENT_BUFFER_SIZE (2048) plus its header
DRAIN_LIMIT = 256

CPU_DIR = "/sys/devices/system/cpu"
MEMORY_DIR = "/sys/devices/system/memory"
AUTO_ONLINE = MEMORY_DIR + "/auto_online_blocks"

_CPU_PATH = re.compile(r"/devices/system/cpu/cpu(0|[1-9][0-9]{0,5})")
_MEMORY_PATH = re.compile(r"/devices/system/memory/memory(0|[1-9][0-9]{0,8})")
_CPU_NAME = re.compile(r"cpu(0|[1-9][0-9]{0,5})")
_MEMORY_NAME = re.compile(r"memory(0|[1-9][0-9]{0,8})")

CPU = "cpu"
MEMORY = "memory"

#: The values of ``hotplug.online_cpus`` / ``online_memory``.
SETTINGS = ("auto", "true", "false")


def setting_value(setting: str | bool) -> str:
    """``auto``, ``true`` or ``false`` from a setting or a bool; ValueError otherwise."""
    value = setting if isinstance(setting, str) else ("true" if setting else "false")
    value = value.strip().lower()
    if value not in SETTINGS:
        raise ValueError(f"hot-plug setting must be one of {', '.join(SETTINGS)}: {setting!r}")
    return value


@dataclass(frozen=True)
class Uevent:
    """One kernel uevent: its action, devpath, subsystem and all its variables."""

    action: str
    devpath: str
    subsystem: str
    env: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        return next((value for name, value in self.env if name == key), None)


def parse_uevent(data: bytes, problems: list[str]) -> Uevent | None:
    """Pure: a kernel uevent datagram, or None (libudev messages silently; damage
    is described in ``problems``)."""
    if data.startswith(LIBUDEV_MAGIC):
        return None
    fields = data.split(b"\0")
    head = fields[0].decode("ascii", "replace")
    action, at, head_path = head.partition("@")
    if not at or not action or not head_path.startswith("/"):
        problems.append(f"no ACTION@DEVPATH header: {head[:60]!r}")
        return None
    env: list[tuple[str, str]] = []
    for field in fields[1:]:
        if not field:
            continue
        name, eq, value = field.decode("utf-8", "replace").partition("=")
        if not eq or not name:
            problems.append(f"variable without '=': {name[:60]!r}")
            return None
        env.append((name, value))
    event = Uevent(action, head_path, "", tuple(env))
    if event.get("ACTION") != action or event.get("DEVPATH") != head_path:
        problems.append(f"header {head[:60]!r} disagrees with ACTION/DEVPATH")
        return None
    return Uevent(action, head_path, event.get("SUBSYSTEM") or "", tuple(env))


def target(event: Uevent) -> tuple[str, int] | None:
    """Pure: (CPU or MEMORY, number) when the event is about a CPU or memory block."""
    pattern = {CPU: _CPU_PATH, MEMORY: _MEMORY_PATH}.get(event.subsystem)
    match = pattern.fullmatch(event.devpath) if pattern is not None else None
    return (event.subsystem, int(match.group(1))) if match else None


def open_uevent_socket(rcvbuf: int = 1 << 20) -> socket.socket:
    """A netlink socket subscribed to the kernel's uevent group (root not needed
    to receive: the family is NL_CFG_F_NONROOT_RECV).  OSError where there is no
    netlink (Python defines AF_NETLINK on Linux only)."""
    if not hasattr(socket, "AF_NETLINK"):
        raise OSError(errno.EAFNOSUPPORT, "kernel uevents exist only on Linux")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except OSError:
            pass
        sock.bind((0, UEVENT_KERNEL_GROUP))
    except OSError:
        sock.close()
        raise
    return sock


def from_kernel(address: object) -> bool:
    """(nl_pid, nl_groups): the kernel sends from port id 0."""
    return isinstance(address, tuple) and len(address) >= 1 and address[0] == 0


def read_uevents(sock: socket.socket, problems: list[str]) -> tuple[list[Uevent], bool]:
    """Drain what is queued (never blocks): the kernel's uevents and whether the
    kernel reported lost messages (ENOBUFS).  Other OSErrors propagate."""
    events: list[Uevent] = []
    overrun = False
    for _ in range(DRAIN_LIMIT):
        try:
            data, address = sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            overrun = True
            continue
        if not from_kernel(address):
            continue
        event = parse_uevent(data, problems)
        if event is not None:
            events.append(event)
    return events, overrun


@dataclass(frozen=True)
class Onlined:
    """What the agent did about one hot-added CPU or memory block."""

    kind: str       # CPU or MEMORY
    number: int
    outcome: str    # "onlined", "already online", "failed: ..."


class HotplugEvents:
    """The uevent source for the daemon's poll loop; onlines what appears.

    ``policy``: the decision, or what makes it when first needed (:meth:`from_settings`:
    the distribution's udev rules are read then, by :class:`HotplugThread` on its own
    thread, not on the daemon's way to its first publish).

    ``open()`` -> False (one log line) when the policy wants nothing or the socket
    cannot be opened; ``fileno()`` -> -1 when closed; ``read_ready(now)`` drains
    and acts, returning what it did; ``deadline()`` is always None (nothing is
    deferred).  A socket that fails for good is closed and logged; the agent then
    leaves hot-added devices alone.
    """

    def __init__(self, host: Host, policy: Union[HotplugPolicy, Callable[[], HotplugPolicy]],
                 opener: Callable[[], socket.socket] = open_uevent_socket) -> None:
        self.host = host
        self._policy = None if callable(policy) else policy
        self._decide = policy if callable(policy) else None
        self._opener = opener
        self._sock: socket.socket | None = None
        self._known: dict[str, set[int]] = {CPU: set(), MEMORY: set()}
        self._warned: set[str] = set()

    @classmethod
    def from_settings(cls, host: Host, online_cpus: str | bool = "auto",
                      online_memory: str | bool = "auto",
                      opener: Callable[[], socket.socket] = open_uevent_socket) -> HotplugEvents:
        """The source for the ``hotplug.online_cpus``/``online_memory`` settings,
        reading the distribution's udev rules under ``host`` (ValueError for a
        setting other than auto/true/false, at once).  The rules are read when the policy is
        first needed (:attr:`policy`)."""
        cpus, memory = setting_value(online_cpus), setting_value(online_memory)

        def decide() -> HotplugPolicy:
            from xenguest_agent.hotplug_rules import HotplugPolicy, detect_distro_rules, udev_running

            return HotplugPolicy.decide(cpus, memory, detect_distro_rules(host), udev_running(host))
        return cls(host, decide, opener)

    @property
    def decided(self) -> bool:
        """Whether the policy is known without reading anything."""
        return self._policy is not None

    @property
    def policy(self) -> HotplugPolicy:
        if self._policy is None:
            assert self._decide is not None
            self._policy = self._decide()
        return self._policy

    def open(self) -> bool:
        if self._sock is not None:
            return True
        if not (self.policy.online_cpus or self.policy.online_memory):
            log.info("not onlining hot-added CPUs (%s) or memory (%s)",
                     self.policy.cpus.reason, self.policy.memory.reason)
            return False
        self._known = self._scan()  # before the socket: what exists now is not "hot-added"
        try:
            sock = self._opener()
        except OSError as exc:
            log.warning("cannot open the kernel uevent socket (%s); hot-added CPUs and "
                        "memory are left to the system", exc)
            return False
        sock.setblocking(False)
        self._sock = sock
        self.rescan()  # whatever appeared between the scan and the subscription
        log.info("onlining hot-added CPUs: %s (%s); memory: %s (%s)",
                 "yes" if self.policy.online_cpus else "no", self.policy.cpus.reason,
                 "yes" if self.policy.online_memory else "no", self.policy.memory.reason)
        return True

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def deadline(self) -> float | None:
        return None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def read_ready(self, now: float) -> tuple[Onlined, ...]:
        """Drain the socket and online what was hot-added (``now`` is unused: kept
        for the loop's common source interface)."""
        if self._sock is None:
            return ()
        problems: list[str] = []
        try:
            events, overrun = read_uevents(self._sock, problems)
        except OSError as exc:
            log.error("reading kernel uevents failed (%s); hot-added CPUs and memory are "
                      "no longer onlined", exc)
            self.close()
            return ()
        if problems:
            self._warn_once("parse", "unreadable kernel uevent: %s (reported once)", problems[0])
        done: list[Onlined] = []
        for event in events:
            try:
                result = self.handle(event)
            except Exception:  # never raises by design; a bug must not end the loop
                log.exception("handling the uevent %s@%s failed", event.action, event.devpath)
                continue
            if result is not None:
                done.append(result)
        if overrun:
            log.info("kernel uevents were lost (ENOBUFS); rescanning CPUs and memory blocks")
            done.extend(self.rescan())
        return tuple(done)

    # --- acting -----------------------------------------------------------------------------

    def handle(self, event: Uevent) -> Onlined | None:
        """Act on one uevent: track devices, online a new one."""
        found = target(event)
        if found is None:
            return None
        kind, number = found
        known = self._known[kind]
        if event.action == "remove":
            known.discard(number)
            return None
        if event.action != "add" or number in known:
            return None  # a synthetic add for a device already here is the admin's business
        known.add(number)
        return self._online(kind, number)

    def rescan(self) -> list[Onlined]:
        """Online devices that appeared unseen (after lost events)."""
        current = self._scan()
        done: list[Onlined] = []
        for kind in (CPU, MEMORY):
            new = sorted(current[kind] - self._known[kind])
            self._known[kind] = current[kind]
            for number in new:
                result = self._online(kind, number)
                if result is not None:
                    done.append(result)
        return done

    def _scan(self) -> dict[str, set[int]]:
        def numbers(directory: str, pattern: re.Pattern[str]) -> set[int]:
            names = (pattern.fullmatch(name) for name in self.host.listdir(directory))
            return {int(match.group(1)) for match in names if match}
        return {CPU: numbers(CPU_DIR, _CPU_NAME), MEMORY: numbers(MEMORY_DIR, _MEMORY_NAME)}

    def _online(self, kind: str, number: int) -> Onlined | None:
        if kind == CPU:
            return self._online_cpu(number) if self.policy.online_cpus else None
        return self._online_memory(number) if self.policy.online_memory else None

    def _online_cpu(self, number: int) -> Onlined | None:
        path = f"{CPU_DIR}/cpu{number}/online"
        state = self.host.read_line(path)
        if state is None:
            return None  # no online attribute: the CPU cannot be taken offline or online
        if state != "0":
            return Onlined(CPU, number, "already online")
        return self._write(CPU, number, path, "1", lambda: self.host.read_line(path) == "1")

    def _online_memory(self, number: int) -> Onlined | None:
        auto = self.host.read_line(AUTO_ONLINE)
        if auto is not None and auto != "offline":
            log.debug("memory block %d: the kernel onlines it (auto_online_blocks=%s)", number, auto)
            return None
        path = f"{MEMORY_DIR}/memory{number}/state"
        state = self.host.read_line(path)
        if state != "offline":
            return None if state is None else Onlined(MEMORY, number, "already online")
        return self._write(MEMORY, number, path, "online",
                           lambda: self.host.read_line(path) == "online")

    def _write(self, kind: str, number: int, path: str, value: str,
               now_online: Callable[[], bool]) -> Onlined:
        name = f"CPU {number}" if kind == CPU else f"memory block {number}"
        try:
            self.host.write_text(path, value)
        except OSError as exc:
            if now_online():  # udev or the kernel got there first
                log.info("hot-added %s is online (onlined by the system)", name)
                return Onlined(kind, number, "already online")
            log.warning("could not online hot-added %s: writing %r to %s: %s",
                        name, value, path, exc.strerror or exc)
            return Onlined(kind, number, f"failed: {exc.strerror or exc}")
        log.info("onlined hot-added %s (wrote %r to %s)", name, value, path)
        return Onlined(kind, number, "onlined")

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


class HotplugThread:
    """Runs :class:`HotplugEvents` beside the daemon's loop, on a thread of its own.

    Bringing a CPU or a memory block online is a synchronous write into the kernel that can
    take a while (the memory block is initialised), and it needs nothing from XenStore, so
    it never runs on the loop.  The thread sleeps in poll() on the uevent socket and a stop
    pipe: no wake-up while nothing is hot-plugged."""

    def __init__(self, events: HotplugEvents) -> None:
        import threading

        from xenguest_agent.wakeup import Wakeup

        self.events = events
        self._stop = Wakeup()
        self._thread = threading.Thread(target=self._run, name="xenguest-hotplug", daemon=True)

    def start(self) -> bool:
        """Open the uevent socket and start the thread; False when there is nothing to do.
        A policy still to be decided (``from_settings``: the udev rules to read) is decided
        and the socket opened on the thread, which ends at once if nothing is wanted."""
        if self.events.decided and not self.events.open():
            self._stop.close()
            return False
        self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._stop.wake()
            self._thread.join(timeout)
        self.events.close()
        self._stop.close()

    def _run(self) -> None:
        import select
        import time

        if not self.events.open():  # already open unless the policy was still to be decided
            return
        poller = select.poll()
        poller.register(self._stop.read_fd, select.POLLIN)
        poller.register(self.events.fileno(), select.POLLIN)
        while True:
            ready = [fd for fd, _ in poller.poll()]
            if self._stop.read_fd in ready:
                return
            self.events.read_ready(time.monotonic())
            if self.events.fileno() == -1:  # failed for good (logged)
                return
