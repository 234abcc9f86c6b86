"""The one adapter between the agent and XenStore, built on pyxs 0.4.1.

pyxs provides the wire format (``Packet``, ``Op``), the two transports (a
xenstored unix socket, the guest's xenbus device) and the router thread that
matches replies to requests.  Its ``Client``/``Monitor`` layer has defects the
agent must not inherit, each handled here on purpose (and each proven by a test
against the real xenstored, tests/test_xenstore_real.py):

* No default device guessing: the device path is given explicitly (the backend's
  per-OS default or the ``xenstore`` setting).  pyxs would pick
  ``/dev/xen/xenbus`` on FreeBSD, where the device is ``/dev/xen/xenstore``.
* No request timeout in pyxs: a reply that never comes (xenstored gone, router
  thread dead) blocks ``RVar.get()`` forever.  Here every request waits at most
  ``timeout`` seconds and notices a dead router at once.
* A dead router cannot be restarted ("threads can only be started once"), so
  :meth:`XenStore.connect` always builds a fresh router and connection.
* ``Client.write`` refuses an empty value (its 7-bit check needs one byte or
  more), but acknowledging ``control/shutdown`` means writing ``""``: values
  are framed here directly as ``path NUL value`` (xs_wire.h, XS_WRITE).
* ``Client.monitor()`` refuses a xenbus device, and ``Monitor.wait()`` spins at
  100% CPU forever on an event for a path it does not watch (``dirname('/')`` is
  ``'/'``).  Watches here use a second connection of their own (which works over
  the Linux xenbus device) and deliver every event, unfiltered, to a callback;
  handlers re-read the key, because events may be spurious (docs/misc/xenstore.txt).
* pyxs raises its own exceptions and Python's ``UnicodeError`` for a non-ASCII
  path: every path, value and token is checked first by xswire.py, whose
  refusals, like xenstored's answers, are :class:`XenStoreError`.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from pyxs._internal import NUL, Op, Packet, next_rq_id
from pyxs.client import Router
from pyxs.connection import UnixSocketConnection, XenBusConnection
from pyxs.exceptions import PyXSError

from xenguest_agent.log import get_logger
from xenguest_agent.xswire import KEY_ERRORS as KEY_ERRORS  # re-exported: the adapter's errors
from xenguest_agent.xswire import XENSTORE_PAYLOAD_MAX, check_path, check_value, invalid
from xenguest_agent.xswire import XenStoreError as XenStoreError
from xenguest_agent.xswire import XenStoreUnavailable as XenStoreUnavailable
from xenguest_agent.xswire import error_from_reply as error_from_reply

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Tuple
    EventCallback = Callable[[str, str], None]

log = get_logger(__name__)

DEFAULT_TIMEOUT = 5.0


def parse_spec(spec: str) -> Tuple[str, str]:
    """``unix:/run/xenstored/socket`` -> ("unix", path); anything else is a device path."""
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a socket path, e.g. unix:/run/xenstored/socket")
        return "unix", path
    if not spec.startswith("/"):
        raise ValueError(f"XenStore spec must be a device path or unix:/path, not {spec!r}")
    return "device", spec


class _Router(Router):  # type: ignore[misc]  # pyxs has no type information
    """pyxs's router, but a broken connection ends the thread with a log line
    (the reason is kept for the error message) instead of a thread traceback."""

    failure: Optional[str] = None
    finished = False
    #: Called on the router's thread when it ends, whatever the reason: an idle daemon
    #: learns at once that xenstored went away (XenStore.on_lost).
    ended: Optional[Callable[[], None]] = None

    def __call__(self) -> None:
        try:
            super().__call__()
        except Exception as exc:  # the thread must end quietly; callers see is_alive() False
            self.failure = f"{type(exc).__name__}: {exc}"
            log.debug("xenstore router for %s stopped: %s", self.connection.path, self.failure)
        finally:
            self.finished = True  # before the callback: the thread is still alive during it
            if self.ended is not None:
                self.ended()

    @property
    def alive(self) -> bool:
        return not self.finished and bool(self.thread.is_alive())


class _Sink:
    """What pyxs's router puts watch events into (it calls ``.events.put``)."""

    def __init__(self, callback: EventCallback) -> None:
        self.events = self
        self._callback = callback

    def put(self, event: Tuple[bytes, bytes]) -> None:  # called on the router thread
        path, token = event
        self._callback(path.decode("ascii", "replace"), token.decode("ascii", "replace"))


class Transaction:
    """An open XenStore transaction; reads and writes see one consistent snapshot."""

    def __init__(self, store: "XenStore", tx_id: int) -> None:
        self.store = store
        self.tx_id = tx_id

    def read(self, path: str) -> Optional[str]:
        return self.store.read(path, self.tx_id)

    def write(self, path: str, value: str) -> None:
        self.store.write(path, value, self.tx_id)

    def rm(self, path: str) -> None:
        self.store.rm(path, self.tx_id)

    def ls(self, path: str) -> Optional[List[str]]:
        return self.store.ls(path, self.tx_id)

    def commit(self) -> bool:
        """True when committed; False when xenstored says EAGAIN (a conflicting
        change, or a suspend/resume in between): the caller redoes the work."""
        try:
            self.store._request(Op.TRANSACTION_END, b"T" + NUL, self.tx_id)
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            if exc.errno == errno.EAGAIN:
                return False
            raise
        return True

    def abort(self) -> None:
        try:
            self.store._request(Op.TRANSACTION_END, b"F" + NUL, self.tx_id)
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:  # already gone (e.g. ended by a resume): nothing to undo
            log.debug("transaction %d abort: %s", self.tx_id, exc)


class XenStore:
    """A XenStore connection with timeouts, reconnects, empty values and watches.

    Paths are str, relative to the domain's home unless they start with ``/``.
    Not thread-safe for requests: the agent issues them from one thread (watch
    events arrive on the watch router's thread, through the callback)."""

    def __init__(self, spec: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.kind, self.path = parse_spec(spec)
        self.spec = spec
        self.timeout = timeout
        self._router: Optional[_Router] = None
        self._watch_router: Optional[_Router] = None
        self._lost_callback: Optional[Callable[[], None]] = None
        self._callback: Optional[EventCallback] = None

    def __repr__(self) -> str:
        return f"XenStore({self.spec!r})"

    # --- connection ----------------------------------------------------------------------

    def _new_router(self) -> _Router:
        if self.kind == "device" and not os.path.exists(self.path):
            raise XenStoreUnavailable(
                f"XenStore device {self.path} does not exist: this is not a Xen guest, "
                "or the xenbus device is missing (Linux: xenfs/xen drivers; FreeBSD: xenstore)")
        if self.kind == "unix":
            # pyxs 0.4.1 leaks the socket of a failed connect (_UnixSocketTransport.__init__):
            # find out first, on a socket that is closed whatever happens
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.path)
                except OSError as exc:
                    raise XenStoreUnavailable(f"cannot connect to XenStore at {self.path}: {exc}") from None
        connection = (UnixSocketConnection(self.path) if self.kind == "unix"
                      else XenBusConnection(self.path))
        router = _Router(connection)
        router.ended = self._lost_callback
        try:
            router.start()
        except (PyXSError, OSError) as exc:
            # the router's socketpair is closed by its thread, which never started
            router.r_terminator.close()
            router.w_terminator.close()
            raise XenStoreUnavailable(f"cannot connect to XenStore at {self.path}: {exc}") from None
        return router

    def connect(self) -> None:
        """(Re)connect with a fresh router: pyxs routers cannot be restarted."""
        self.close()
        self._router = self._new_router()
        log.debug("connected to XenStore at %s", self.path)

    def close(self) -> None:
        for router in (self._router, self._watch_router):
            if router is not None:
                try:
                    router.terminate()
                except (PyXSError, OSError) as exc:
                    log.debug("closing xenstore router: %s", exc)
        self._router = self._watch_router = None

    @property
    def connected(self) -> bool:
        return self._router is not None and self._router.alive

    # --- requests ------------------------------------------------------------------------

    def _request(self, op: int, payload: bytes, tx_id: int = 0, router: Optional[_Router] = None,
                 path: Optional[str] = None) -> bytes:
        router = router or self._router
        if router is None:
            raise XenStoreUnavailable(f"not connected to XenStore at {self.path}")
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise invalid(path or "", f"request over XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
        try:
            packet = Packet(op, payload, next_rq_id(), tx_id)
        except (PyXSError, ValueError) as exc:  # bounded above; kept so nothing of pyxs escapes
            raise XenStoreError(errno.EINVAL, f"refused by pyxs: {type(exc).__name__}", path) from None
        try:
            rvar = router.send(packet)
        except (PyXSError, OSError) as exc:
            raise XenStoreUnavailable(f"XenStore connection {self.path} broke: {exc}") from None
        deadline = time.monotonic() + self.timeout
        with rvar.condition:
            while rvar.target is None:
                if not router.alive:
                    reason = router.failure or "connection closed"
                    raise XenStoreUnavailable(f"XenStore connection {self.path} lost: {reason}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    router.rvars.pop(packet.rq_id, None)
                    raise XenStoreUnavailable(
                        f"XenStore at {self.path} did not answer within {self.timeout:g}s")
                rvar.condition.wait(min(remaining, 0.05))
        reply = rvar.target
        if reply.op == Op.ERROR:
            raise error_from_reply(reply.payload, path)
        if reply.op != op:
            raise XenStoreUnavailable(f"XenStore at {self.path} answered op {reply.op} to op {op}")
        return bytes(reply.payload)

    def _request_node(self, op: int, path: str, tx_id: int) -> Optional[bytes]:
        """A request about one node; None when xenstored says ENOENT (the node is
        not there).  XenStoreUnavailable carries ENOTCONN, so it always propagates."""
        try:
            return self._request(op, check_path(path) + NUL, tx_id, path=path)
        except XenStoreError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def read(self, path: str, tx_id: int = 0) -> Optional[str]:
        """The value, or None if the node does not exist."""
        payload = self._request_node(Op.READ, path, tx_id)
        return None if payload is None else payload.decode("ascii", "replace")

    def write(self, path: str, value: str, tx_id: int = 0) -> None:
        """Write ``value`` (may be empty), creating missing parents."""
        encoded = check_path(path) + NUL + check_value(path, value)
        log.debug("xenstore write%s %s = %r", f" (tx {tx_id})" if tx_id else "", path, value)
        self._request(Op.WRITE, encoded, tx_id, path=path)

    def rm(self, path: str, tx_id: int = 0) -> None:
        """Remove a node and its children; a node that is already gone is fine."""
        log.debug("xenstore rm%s %s", f" (tx {tx_id})" if tx_id else "", path)
        self._request_node(Op.RM, path, tx_id)

    def ls(self, path: str, tx_id: int = 0) -> Optional[List[str]]:
        """Child names, or None if the node does not exist."""
        payload = self._request_node(Op.DIRECTORY, path, tx_id)
        if payload is None:
            return None
        payload = payload.rstrip(NUL)
        return [name.decode("ascii", "replace") for name in payload.split(NUL)] if payload else []

    # --- transactions --------------------------------------------------------------------

    def begin(self) -> Transaction:
        payload = self._request(Op.TRANSACTION_START, NUL)
        return Transaction(self, int(payload.rstrip(NUL)))

    def transact(self, work: Callable[[Transaction], object], attempts: int = 8) -> object:
        """Run ``work`` in a transaction, redoing it while commit says EAGAIN."""
        for attempt in range(attempts):
            tx = self.begin()
            try:
                result = work(tx)
            except XenStoreUnavailable:
                raise
            except BaseException:
                tx.abort()
                raise
            if tx.commit():
                return result
            log.debug("transaction conflict (EAGAIN), attempt %d of %d", attempt + 1, attempts)
            time.sleep(min(0.01 * 2 ** attempt, 0.5))
        raise XenStoreError(errno.EAGAIN, f"transaction kept conflicting after {attempts} attempts")

    # --- watches -------------------------------------------------------------------------

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Called (on a connection's own thread) when a connection ends, including by
        :meth:`close`; the callee checks :attr:`connected` and :attr:`watching`."""
        self._lost_callback = callback

    def on_event(self, callback: EventCallback) -> None:
        """Where watch events go: ``callback(path, token)``, on the watch thread."""
        self._callback = callback

    def watch(self, path: str, token: str) -> None:
        """Watch ``path`` (and its subtree) on the dedicated watch connection.

        xenstored fires every new watch once at once, so the handler runs for the
        current value too (docs/misc/xenstore.txt, WATCH)."""
        if self._callback is None:
            raise RuntimeError("on_event() must be set before watch()")
        payload = check_path(path, watch=True) + NUL + check_value(path, token) + NUL
        if self._watch_router is None or not self._watch_router.alive:
            self._watch_router = self._new_router()
        router = self._watch_router
        if not router.monitors.get(token.encode("ascii")):
            router.subscribe(token.encode("ascii"), _Sink(self._callback))
        self._request(Op.WATCH, payload, router=router, path=path)

    @property
    def watching(self) -> bool:
        """False once the watch connection broke (watches must be set up again)."""
        return self._watch_router is not None and self._watch_router.alive
