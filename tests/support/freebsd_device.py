"""A model of FreeBSD's ``/dev/xen/xenstore``, as a unix-socket proxy in front of a real xenstored.

Why: on Linux the agent talks to ``/dev/xen/xenbus`` (drivers/xen/xenbus/xenbus_dev_frontend.c),
which accepts nearly anything xenstored accepts. FreeBSD's device is a different, stricter piece
of code, and a FreeBSD guest only works if the agent lives within its rules. This module enforces
them, as read in freebsd/freebsd-src ``sys/dev/xen/xenstore/xenstore_dev.c`` (main, identical in
releng/13 and releng/14 for everything below), so that the real agent can be run against the real
xenstored (dom0 socket, or a guest domain's ring bridge) *through* FreeBSD's semantics.

Each accepted connection is one ``open(2)`` of the device (``xs_dev_open`` allocates a fresh
``struct xs_dev_data``: no watches, no transactions, an empty write buffer); each gets its own
upstream connection, which plays the kernel's connection to xenstored. Rules, per open file:

* **Requests are processed one at a time, synchronously** (``xs_dev_write`` calls
  ``xs_dev_request_and_reply``, which sends the request and sleeps for its reply under
  ``xs.request_mutex``): the next request of this open file is looked at only after the reply of
  the previous one is queued.
* **Size** (``xs_dev_write``): the header and payload of one request must fit the per-open
  buffer ``union { struct xsd_sockmsg msg; char buffer[PAGE_SIZE]; }``; a write that would pass
  ``PAGE_SIZE`` bytes (4096 on amd64 and arm64) fails with ``EINVAL`` from ``write(2)`` itself and
  leaves what was already buffered (pyxs writes the header, then the payload, so the header stays
  and the open file is wedged). A socket cannot fail one ``send``, so the model takes the
  request and then closes the connection: through pyxs the agent's adapter sees the connection
  break in both cases (``XenStoreUnavailable``). Recorded in :attr:`refusals`.
* **Operations** (the ``switch`` in ``xs_dev_write``): TRANSACTION_START, TRANSACTION_END,
  DIRECTORY, READ, GET_PERMS, RELEASE, GET_DOMAIN_PATH, WRITE, MKDIR, RM, SET_PERMS are passed
  through; WATCH and UNWATCH are handled by the device; everything else (DIRECTORY_PART,
  RESET_WATCHES, INTRODUCE, IS_DOMAIN_INTRODUCED, CONTROL, ...) gets an ``XS_ERROR`` "EINVAL".
* **Transactions**: a passed-through request with a non-zero ``tx_id`` that was not started on
  this open file gets "EINVAL" ("Check that this transaction id is not hijacked",
  ``xs_dev_find_transaction``). A reply of type TRANSACTION_START registers the id; a reply of
  type TRANSACTION_END forgets it (the kernel overwrites the request's type with the reply's in
  ``xs_dev_request_and_reply``, so an XS_ERROR reply to TRANSACTION_END leaves the id known).
* **Watches**: XS_WATCH's payload must hold two NUL-terminated strings (path, token), else
  "EINVAL" (``xs_dev_watch_message_parse``); **a token already registered on this open file is
  refused with "EINVAL"** (``xs_dev_find_watch``), whatever the path: Linux's device and xenstored
  would accept it. The kernel registers its own watch for the path (``xs_register_watch``); an
  error there is returned as XS_ERROR. XS_UNWATCH of a token not registered here is "EINVAL"
  (xenstored would say ENOENT); otherwise the watch is removed and the reply is "OK" whatever
  ``xs_unregister_watch`` did.
* **The WATCH/UNWATCH reply** is synthesised by the device: ``msg.len = sizeof(ok)`` where
  ``ok`` is ``static const char *ok = "OK"``: the size of a *pointer*, 8 bytes on 64-bit
  kernels, so the payload is "OK", a NUL and 5 bytes of whatever follows the literal in the
  kernel's read-only data. The model sends "OK\\0" and 5 non-NUL filler bytes, so a client that
  trusts the payload (or expects xenstored's 3-byte "OK\\0") is caught. ``tx_id`` is set to 0.
* **Errors**: ``xs_dev_return_error`` answers XS_ERROR with the request's ``req_id`` and
  ``tx_id`` and the errno's name from ``xsd_errors``.
* **Events**: ``xs_dev_watch_cb`` queues ``XS_WATCH_EVENT`` (req_id = tx_id = 0) with the path
  and the client's own token, only for watches registered on this open file.
* **The read ring**: replies and events go through a ``PAGE_SIZE`` ring (``read_buffer``,
  ``xs_queue_reply`` asserts that what is unread fits). One message bigger than the ring can
  never be read whole; the model records it in :attr:`violations` (tests assert there are
  none). How much the client has not read yet is invisible through a socket: not modelled.
* **Reads block regardless of O_NONBLOCK** (``xs_dev_read`` sleeps in ``tsleep`` until the ring
  has data, ignoring ``ioflag``). Irrelevant through a socket and for pyxs: pyxs opens the
  device without O_NONBLOCK and reads only after ``select()`` said readable (``xs_dev_poll``
  reports POLLIN when the ring is not empty), so it never relies on EAGAIN.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import tempfile
import threading
from collections import deque
from typing import Deque, Dict, List, Optional, Set, Tuple

from .toolstack import (
    HEADER,
    XS_DIRECTORY,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_PERMS,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RM,
    XS_SET_PERMS,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    frame,
    take_message,
)

log = logging.getLogger(__name__)


#: sys/amd64/include/param.h and sys/arm64/include/param.h: PAGE_SIZE (1 << PAGE_SHIFT, 12).
PAGE_SIZE = 4096
#: sizeof(const char *) on the 64-bit kernels FreeBSD runs Xen guests on (amd64, arm64).
POINTER_SIZE = 8


#: The cases of xs_dev_write's switch that are passed to xenstored.
PASSED_THROUGH = frozenset({XS_TRANSACTION_START, XS_TRANSACTION_END, XS_DIRECTORY, XS_READ,
                            XS_GET_PERMS, XS_RELEASE, XS_GET_DOMAIN_PATH, XS_WRITE, XS_MKDIR,
                            XS_RM, XS_SET_PERMS})

#: errno -> name, as xsd_errors (xs_wire.h) spells them.
_ERROR_NAMES = {errno.EINVAL: "EINVAL", errno.EACCES: "EACCES", errno.EEXIST: "EEXIST",
                errno.EISDIR: "EISDIR", errno.ENOENT: "ENOENT", errno.ENOMEM: "ENOMEM",
                errno.ENOSPC: "ENOSPC", errno.EIO: "EIO", errno.ENOTEMPTY: "ENOTEMPTY",
                errno.ENOSYS: "ENOSYS", errno.EROFS: "EROFS", errno.EBUSY: "EBUSY",
                errno.EAGAIN: "EAGAIN", errno.EISCONN: "EISCONN", errno.E2BIG: "E2BIG",
                errno.EPERM: "EPERM"}

#: What follows "OK\0" in the 8-byte reply: unknown kernel bytes; deliberately not NUL.
WATCH_REPLY_FILLER = b"\xa5" * (POINTER_SIZE - 3)

_SUN_PATH_MAX = 100


def error_message(req_id: int, tx_id: int, code: int) -> bytes:
    """xs_dev_return_error: XS_ERROR with the errno's name (unknown ones become EINVAL)."""
    payload = _ERROR_NAMES.get(code, "EINVAL").encode() + b"\0"
    return frame(XS_ERROR, req_id, tx_id, payload)


def parse_watch_payload(payload: bytes) -> Optional[Tuple[bytes, bytes]]:
    """xs_dev_watch_message_parse: two NUL-terminated strings (path, token), else None."""
    path_end = payload.find(b"\0")
    if path_end < 0:
        return None
    token_end = payload.find(b"\0", path_end + 1)
    if token_end < 0:
        return None
    return payload[:path_end], payload[path_end + 1:token_end]


class _OpenFile:
    """One open(2) of the device: xs_dev_data, plus the kernel's connection upstream."""

    def __init__(self, number: int, client: socket.socket, upstream: socket.socket) -> None:
        self.number = number
        self.client = client
        self.upstream = upstream
        self.inbuf = bytearray()           # bytes written by the client, not yet a full request
        self.upbuf = bytearray()           # bytes from xenstored, not yet a full message
        self.outbuf = bytearray()          # the read ring, as far as the socket lets us see
        self.backlog: Deque[bytes] = deque()
        #: The request waiting for xenstored's reply: op, req_id, tx_id, watch token and path.
        self.pending: Optional[Tuple[int, int, int, bytes, bytes]] = None
        self.watches: Dict[bytes, bytes] = {}                        # token -> path
        self.transactions: Set[int] = set()
        self.closed = False


class FreeBSDXenstoreDevice:
    """``/dev/xen/xenstore`` of a FreeBSD guest, served on a unix socket (``spec``) and backed by
    ``upstream`` (xenstored's socket, or a GuestBridge socket for an unprivileged domain)."""

    def __init__(self, upstream: os.PathLike[str] | str, page_size: int = PAGE_SIZE) -> None:
        self.upstream_path = str(upstream)
        self.page_size = page_size
        self._dir = tempfile.mkdtemp(prefix="fbsd-xs-")
        self.socket_path = os.path.join(self._dir, "xenstore")
        if len(self.socket_path) >= _SUN_PATH_MAX:
            raise RuntimeError(f"socket path too long: {self.socket_path}")
        #: (open file number, op, reason) for every request the device refused or could not take.
        self.refusals: List[Tuple[int, int, str]] = []
        #: Things FreeBSD's device could not have delivered (a reply bigger than the read ring).
        self.violations: List[str] = []
        self.opens = 0
        self._files: Dict[int, _OpenFile] = {}
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._sel: Optional[selectors.DefaultSelector] = None
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread: Optional[threading.Thread] = None

    @property
    def spec(self) -> str:
        return "unix:" + self.socket_path

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "FreeBSDXenstoreDevice":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="freebsd-xenstore-dev", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for item in list(self._files.values()):
            self._drop(item)
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    def __enter__(self) -> "FreeBSDXenstoreDevice":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def open_files(self) -> int:
        with self._lock:
            return len(self._files)

    def watch_tokens(self) -> List[List[str]]:
        """The tokens registered on each open file (for assertions)."""
        with self._lock:
            return [sorted(t.decode() for t in f.watches) for f in self._files.values()]

    # --- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sel is not None
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data == "wake":
                    os.read(self._wake_r, 64)
                elif key.data == "accept":
                    self._accept()
                else:
                    side, item = key.data
                    if side == "client":
                        self._client_readable(item)
                    else:
                        self._upstream_readable(item)

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream_path)
            except OSError as exc:
                log.warning("freebsd device: upstream %s: %s", self.upstream_path, exc)
                upstream.close()
                client.close()
                continue
            client.setblocking(True)
            upstream.setblocking(True)
            with self._lock:
                self.opens += 1
                item = _OpenFile(self.opens, client, upstream)
                self._files[item.number] = item
            self._sel.register(client, selectors.EVENT_READ, ("client", item))
            self._sel.register(upstream, selectors.EVENT_READ, ("upstream", item))

    def _drop(self, item: _OpenFile) -> None:
        """close(2): xs_dev_dtor ends the open file's transactions and removes its watches; the
        upstream connection closing does the same in xenstored."""
        if item.closed:
            return
        item.closed = True
        with self._lock:
            self._files.pop(item.number, None)
        for sock in (item.client, item.upstream):
            if self._sel is not None:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            sock.close()

    def _to_client(self, item: _OpenFile, message: bytes) -> None:
        """xs_queue_reply: one message into the read ring."""
        if len(message) > self.page_size:
            op, req_id, _, length = HEADER.unpack_from(message)
            self.violations.append(f"open file {item.number}: a {length}-byte reply (op {op}, "
                                   f"req {req_id}) does not fit the {self.page_size}-byte read ring")
        try:
            item.client.sendall(message)
        except OSError:
            self._drop(item)

    # --- requests (xs_dev_write) -------------------------------------------------------------

    def _client_readable(self, item: _OpenFile) -> None:
        try:
            data = item.client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(item)
            return
        item.inbuf += data
        while len(item.inbuf) >= HEADER.size:
            op, _, _, length = HEADER.unpack_from(item.inbuf)
            if HEADER.size + length > self.page_size:
                # "if ((len + u->len) > sizeof(u->u.buffer)) return (EINVAL);": the write of the
                # payload fails. The whole request is taken first (a client's send never fails
                # here), then the open file is closed: the client's next read sees it broken.
                if len(item.inbuf) < HEADER.size + length and length <= 16 * self.page_size:
                    return
                why = f"write(2) EINVAL: request larger than PAGE_SIZE ({HEADER.size} + {length})"
                self.refusals.append((item.number, op, why))
                self._drop(item)
                return
            if len(item.inbuf) < HEADER.size + length:
                return
            item.backlog.append(bytes(item.inbuf[:HEADER.size + length]))
            del item.inbuf[:HEADER.size + length]
        self._next_request(item)

    def _next_request(self, item: _OpenFile) -> None:
        while item.pending is None and item.backlog and not item.closed:
            self._request(item, item.backlog.popleft())

    def _refuse(self, item: _OpenFile, op: int, req_id: int, tx_id: int, why: str) -> None:
        self.refusals.append((item.number, op, why))
        self._to_client(item, error_message(req_id, tx_id, errno.EINVAL))

    def _send_upstream(self, item: _OpenFile, op: int, req_id: int, tx_id: int, payload: bytes,
                       token: bytes = b"", path: bytes = b"") -> None:
        item.pending = (op, req_id, tx_id, token, path)
        try:
            item.upstream.sendall(frame(op, req_id, tx_id, payload))
        except OSError:
            self._drop(item)

    def _request(self, item: _OpenFile, message: bytes) -> None:
        op, req_id, tx_id, _ = HEADER.unpack_from(message)
        payload = message[HEADER.size:]
        if op in PASSED_THROUGH:
            if tx_id != 0 and tx_id not in item.transactions:
                self._refuse(item, op, req_id, tx_id, f"transaction {tx_id} not opened here")
                return
            self._send_upstream(item, op, req_id, tx_id, payload)
        elif op == XS_WATCH:
            parsed = parse_watch_payload(payload)
            if parsed is None:
                self._refuse(item, op, req_id, 0, "XS_WATCH payload is not path NUL token NUL")
                return
            path, token = parsed
            if token in item.watches:
                self._refuse(item, op, req_id, 0,
                             f"XS_WATCH token {token.decode(errors='replace')!r} is already "
                             f"registered on this open file (path {path.decode(errors='replace')})")
                return
            self._send_upstream(item, op, req_id, 0, path + b"\0" + token + b"\0", token, path)
        elif op == XS_UNWATCH:
            parsed = parse_watch_payload(payload)
            if parsed is None or parsed[1] not in item.watches:
                self._refuse(item, op, req_id, 0, "XS_UNWATCH of a token not registered here")
                return
            token = parsed[1]
            # found by token alone; the kernel unregisters the node it registered, whatever
            # path this request names
            path = item.watches.pop(token)
            self._send_upstream(item, op, req_id, 0, path + b"\0" + token + b"\0", token, path)
        else:
            self._refuse(item, op, req_id, tx_id, f"operation {op} is not in xs_dev_write's switch")

    # --- replies and events from xenstored -----------------------------------------------------

    def _upstream_readable(self, item: _OpenFile) -> None:
        try:
            data = item.upstream.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(item)  # xenstored went away: the guest's device would hang; close it
            return
        item.upbuf += data
        message = take_message(item.upbuf)
        while message is not None:
            self._from_upstream(item, *message)
            if item.closed:
                return
            message = take_message(item.upbuf)
        self._next_request(item)

    def _from_upstream(self, item: _OpenFile, op: int, req_id: int, tx_id: int,
                       payload: bytes) -> None:
        if op == XS_WATCH_EVENT:
            parsed = parse_watch_payload(payload)
            if parsed is not None and parsed[1] in item.watches:
                self._to_client(item, frame(XS_WATCH_EVENT, 0, 0, payload))
            return
        if item.pending is None:
            self.violations.append(f"open file {item.number}: unexpected reply op {op}")
            return
        rop, rreq, rtx, token, path = item.pending
        item.pending = None
        if rop == XS_WATCH:
            if op == XS_ERROR:  # xs_register_watch failed: its errno goes back
                self._to_client(item, frame(XS_ERROR, rreq, 0, payload))
                return
            item.watches[token] = path
            self._ok(item, XS_WATCH, rreq)
            return
        if rop == XS_UNWATCH:
            self._ok(item, XS_UNWATCH, rreq)  # xs_unregister_watch's outcome is not reported
            return
        # xs_dev_request_and_reply overwrote the request's type and len with the reply's
        if op == XS_TRANSACTION_START:
            try:
                item.transactions.add(int(payload.rstrip(b"\0") or b"0"))
            except ValueError:
                self.violations.append(f"open file {item.number}: transaction id {payload!r}")
        elif op == XS_TRANSACTION_END:
            item.transactions.discard(rtx)
        self._to_client(item, frame(op, rreq, rtx, payload))

    def _ok(self, item: _OpenFile, op: int, req_id: int) -> None:
        """The device's own reply: msg.len = sizeof(ok), a pointer's size."""
        body = b"OK\0" + WATCH_REPLY_FILLER
        self._to_client(item, frame(op, req_id, 0, body))


__all__ = [
    "PAGE_SIZE",
    "PASSED_THROUGH",
    "POINTER_SIZE",
    "WATCH_REPLY_FILLER",
    "FreeBSDXenstoreDevice",
    "error_message",
    "parse_watch_payload",
]
