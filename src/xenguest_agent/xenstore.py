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
* pyxs raises its own exceptions (``InvalidPayload`` for a payload over the
  limit, from the ``Packet`` constructor) and Python's ``UnicodeError`` for a
  non-ASCII path: here every path, value and token is checked before anything
  is sent (:func:`check_path`, :func:`check_value`), and each refusal is an
  :class:`XenStoreError` with ``EINVAL`` about that one key, as xenstored would
  answer.  The rules are xenstored's (xen-project/xen, 4.17):
  xen/include/public/io/xs_wire.h (``XENSTORE_PAYLOAD_MAX``,
  ``XENSTORE_ABS_PATH_MAX``, ``XENSTORE_REL_PATH_MAX``) and
  tools/xenstore/xenstored_core.c (``is_valid_nodename``, ``valid_chars``).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time

from pyxs._internal import NUL, Op, Packet, next_rq_id
from pyxs.client import Router
from pyxs.connection import UnixSocketConnection, XenBusConnection
from pyxs.exceptions import PyXSError

from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Tuple
    EventCallback = Callable[[str, str], None]

log = get_logger(__name__)

DEFAULT_TIMEOUT = 5.0

#: xs_wire.h: the most a request's payload may hold ("Violating this is very bad").
XENSTORE_PAYLOAD_MAX = 4096
#: xs_wire.h: the longest absolute path (a domain's home prefix plus a relative path).
XENSTORE_ABS_PATH_MAX = 3072
#: xs_wire.h: the longest path below a domain's home; xenstored_core.c
#: ``is_valid_nodename`` applies it (its default ``quota_max_path_len``) to what
#: follows ``/local/domain/<id>/``, and to the whole of any other absolute path.
XENSTORE_REL_PATH_MAX = 2048
#: xenstored_core.c ``valid_chars``: the whole alphabet of a node name.
_NODE_NAME = re.compile(r"[A-Za-z0-9\-/_@]+")
#: xenstored_core.c ``is_valid_nodename``: ``sscanf(node, "/local/domain/%5u/%n")``.
_DOMAIN_HOME = re.compile(r"/local/domain/[0-9]{1,5}/")
#: What the agent writes as a value or token: printable 7-bit ASCII.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
#: Error names some xenstored sends that are not in xs_wire.h's xsd_errors:
#: oxenstored (XenServer's) answers a quota with "EQUOTA"
#: (tools/ocaml/xenstored/process.ml, Quota.Limit_reached).
_EXTRA_ERRORS = {"EQUOTA": errno.EDQUOT}



#: What xenstored refuses about one key, so that the others still go ahead.  From C
#: xenstored (xen-project/xen 4.17, tools/xenstore/):
#:
#: * EACCES: the node's or its parents' permissions (xenstored_core.c ``get_node``,
#:   ``errno_from_parents``);
#: * ENOSPC: a quota: nodes per domain (``create_node``), node size
#:   (``write_node_raw``), nodes per transaction (xenstored_transaction.c
#:   ``access_node``), and the node quota again at commit (``do_transaction_end``);
#: * E2BIG: a reply over XENSTORE_PAYLOAD_MAX, e.g. the child list of a node with
#:   too many children (xenstored_core.c ``send_reply``);
#: * EINVAL: a path xenstored refuses (``is_valid_nodename``; refused here first);
#: * EDQUOT: oxenstored's "EQUOTA" (see ``_EXTRA_ERRORS``).
#:
#: Not per key, so the request's round fails and is retried whole: EEXIST (only
#: a duplicate watch, xenstored_watch.c ``do_watch``), ENOMEM (xenstored's own
#: memory or the domain's memory quota, xenstored_domain.c ``domain_memory_add``:
#: every request fails alike), EAGAIN, EIO, and a lost connection.
KEY_ERRORS = frozenset({errno.EACCES, errno.ENOSPC, errno.E2BIG, errno.EINVAL, errno.EDQUOT})


class XenStoreError(Exception):
    """xenstored refused a request; ``errno`` says why (EACCES, ENOSPC, EAGAIN...)."""

    def __init__(self, code: int, message: str, path: Optional[str] = None) -> None:
        shown = path if path is None or len(path) <= 200 else f"{path[:200]}...({len(path)} chars)"
        super().__init__(f"{shown}: {message}" if path else message)
        self.errno = code
        self.path = path


class XenStoreUnavailable(XenStoreError):
    """No usable connection: not connected, the connection broke, or a reply timed out."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOTCONN, message)


def error_from_reply(payload: bytes, path: Optional[str] = None) -> XenStoreError:
    """An XS_ERROR reply (an errno name, NUL-terminated) as an XenStoreError.

    A name this platform has no errno for becomes EIO, with the name kept in
    the message (pyxs maps it to errno 0, which nothing can act on)."""
    name = payload.rstrip(NUL).decode("ascii", "replace")
    code = _EXTRA_ERRORS.get(name, getattr(errno, name, None) if name.isupper() else None)
    if not isinstance(code, int) or code <= 0:
        return XenStoreError(errno.EIO, f"xenstored answered {name!r}", path)
    return XenStoreError(code, f"{name} ({os.strerror(code)})", path)


def _invalid(path: str, why: str) -> XenStoreError:
    return XenStoreError(errno.EINVAL, f"refused here, not sent: {why}", path)


def check_path(path: str, watch: bool = False) -> bytes:
    """``path`` encoded for the wire, or EINVAL (an XenStoreError) when
    xenstored would refuse it: its alphabet, no empty component, no trailing
    ``/``, the path length limits.  ``watch``: special watch names (``@...``)
    are allowed too."""
    if not path:
        return _raise(_invalid(path, "empty path"))
    if not _NODE_NAME.fullmatch(path):
        return _raise(_invalid(path, "characters outside xenstored's A-Z a-z 0-9 - / _ @"))
    special = path.startswith("@")
    if special and not watch:
        return _raise(_invalid(path, "a special watch name is not a node"))
    if "//" in path or (path.endswith("/") and path != "/"):
        return _raise(_invalid(path, "empty path component or trailing /"))
    if path.startswith("/"):
        home = _DOMAIN_HOME.match(path)
        if len(path) - (home.end() if home else 0) > XENSTORE_REL_PATH_MAX \
                or len(path) > XENSTORE_ABS_PATH_MAX:
            return _raise(_invalid(path, "longer than xenstored accepts"))
    elif not special and len(path) > XENSTORE_REL_PATH_MAX:  # xenstored prefixes the home
        return _raise(_invalid(path, f"longer than XENSTORE_REL_PATH_MAX ({XENSTORE_REL_PATH_MAX})"))
    return path.encode("ascii")


def check_value(path: str, value: str) -> bytes:
    """``value`` encoded, or EINVAL unless it is printable ASCII and fits one
    request's payload together with its path."""
    if not _PRINTABLE.fullmatch(value):
        raise _invalid(path, "value is not printable ASCII")
    if len(path) + 1 + len(value) > XENSTORE_PAYLOAD_MAX:
        raise _invalid(path, f"path and value exceed XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
    return value.encode("ascii")


def _raise(exc: XenStoreError) -> bytes:
    raise exc


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
            raise _invalid(path or "", f"request over XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
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
