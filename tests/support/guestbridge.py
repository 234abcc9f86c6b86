"""The guest side of a fake Xen guest's XenStore connection: the ring, as a guest kernel drives it.

Why: over xenstored's unix socket every client is dom0, so permissions, quotas and the relative path
of a real guest (``/local/domain/N``) are never exercised. With tests/xenstored/shim.c the real
xenstored maps domain N's ring page from a shared file and signals it through FIFOs; this module is
the other end, doing what the Linux xenbus driver does (drivers/xen/xenbus/xenbus_comms.c for the
ring, xenbus_xs.c for suspend/resume, xenbus_dev_frontend.c for user-space clients), and exposes the
connection to the agent as a unix socket speaking the plain xenstored wire protocol. ``XenStore(
"unix:" + bridge.socket_path)`` is then domain N, just as ``/dev/xen/xenbus`` would make it.

The ring (xen/include/public/io/xs_wire.h, struct xenstore_domain_interface)::

    char req[1024]; char rsp[1024];          offsets 0 and 1024
    uint32 req_cons, req_prod;               offsets 2048, 2052
    uint32 rsp_cons, rsp_prod;               offsets 2056, 2060
    uint32 server_features, connection, error

Indexes are free-running 32-bit counters (the byte is at ``index % 1024``); the producer copies data
and then publishes the new index with a single 32-bit store, the consumer reads the data and then
publishes its index. On x86 stores are not reordered with other stores, and CPython copies the data
before it executes the index store, so no explicit barrier is needed (it would be on Arm). A message
bigger than the free space is streamed in pieces; each side notifies the other after producing *and*
after consuming, or a writer waiting for space stalls.

Several clients share the one ring, as on Linux where every process opening /dev/xen/xenbus does:
request ids are rewritten and mapped back, each watch gets a ring-unique token so events go to the
client that registered it, and transaction ids (per connection in xenstored) pass through. When a
client disconnects its transactions are ended and its watches removed, like closing the device.

Suspend/resume (what a guest kernel does around a save, migration or checkpoint): ``suspend()``
stops sending and waits for replies in flight; the toolstack then re-introduces the domain, which
makes xenstored zero the ring indexes and drop the domain's watches and transactions;
``resume()`` re-registers every watch (each fires once) and answers any later use of a transaction
opened before the suspend with EAGAIN, then sends what the clients queued meanwhile.
"""

from __future__ import annotations

import logging
import mmap
import os
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

log = logging.getLogger(__name__)

RING_SIZE = 1024
PAGE_SIZE = 4096
# Offsets of the 32-bit fields after the two rings, as indexes into a memoryview cast to "I".
_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD, _FEATURES, _CONNECTION, _ERROR = range(7)
_INDEX_OFFSET = 2 * RING_SIZE
_INDEX_COUNT = 7

HEADER = struct.Struct("=IIII")  # type, req_id, tx_id, len (xsd_sockmsg, host byte order)
PAYLOAD_MAX = 4096               # XENSTORE_PAYLOAD_MAX
_U32 = 0xFFFFFFFF

# xs_wire.h enum xsd_sockmsg_type (the ones the bridge looks at).
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_WATCH_EVENT = 15
XS_ERROR = 16

_SUN_PATH_MAX = 100


class BridgeError(RuntimeError):
    """The bridge cannot work (files missing, ring broken, suspend did not drain)."""


def ring_path(shim_dir: Path, domid: int) -> Path:
    """The file the shim maps as domain ``domid``'s ring page (xengnttab_map_grant_ref)."""
    return Path(shim_dir) / f"domain-{domid}.ring"


def xenstored_fifo(shim_dir: Path) -> Path:
    """guest -> xenstored event channel (a FIFO read by the shim's xenevtchn handle)."""
    return Path(shim_dir) / "evtchn"


def guest_fifo(shim_dir: Path, domid: int) -> Path:
    """xenstored -> guest event channel (xenevtchn_notify writes to it)."""
    return Path(shim_dir) / f"domain-{domid}.evtchn"


def _make_fifo(path: Path) -> None:
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise BridgeError(f"{path} exists and is not a FIFO") from None


def _error_reply(op_req_id: int, tx_id: int, name: str) -> bytes:
    payload = name.encode() + b"\0"
    return HEADER.pack(XS_ERROR, op_req_id, tx_id, len(payload)) + payload


class _Client:
    """One agent connection: its socket, buffers, and what it holds on the shared ring."""

    def __init__(self, number: int, sock: socket.socket) -> None:
        self.number = number
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.transactions: Set[int] = set()
        #: Transactions opened before a suspend: any use gets EAGAIN (the kernel's answer).
        self.stale_transactions: Set[int] = set()
        #: (path, token as the client sent it) -> token on the ring.
        self.watches: Dict[Tuple[bytes, bytes], bytes] = {}
        self.closed = False


class _Pending:
    """A request on the ring: who gets the reply, under which request id."""

    __slots__ = ("client", "req_id", "op", "tx_id", "watch", "new_watch")

    def __init__(self, client: Optional[_Client], req_id: int, op: int, tx_id: int,
                 watch: Optional[Tuple[bytes, bytes]] = None, new_watch: bool = False) -> None:
        self.client = client        # None: the bridge's own request, reply dropped
        self.req_id = req_id
        self.op = op
        self.tx_id = tx_id
        self.watch = watch          # WATCH/UNWATCH: the client's (path, token)
        self.new_watch = new_watch  # WATCH: registered by this request (not a duplicate)


class GuestBridge:
    """Domain ``domid``'s XenStore ring, driven like a guest kernel and served on a unix socket.

    ``shim_dir`` is the xenstored's ``proc_xen_dir`` (its $XENSTORED_SHIM_DIR). Call ``start()``
    before the toolstack introduces the domain (the ring file must exist for xenstored to map it),
    ``close()`` at the end. Thread-safe: all ring and client state lives on one I/O thread, and the
    public methods hand work to it.
    """

    def __init__(self, shim_dir: os.PathLike[str] | str, domid: int,
                 socket_path: Optional[os.PathLike[str] | str] = None) -> None:
        self.shim_dir = Path(shim_dir)
        self.domid = int(domid)
        self._short_dir: Optional[str] = None
        if socket_path is None:
            socket_path = self.shim_dir / f"domain-{self.domid}.sock"
        socket_path = Path(socket_path)
        if len(str(socket_path)) > _SUN_PATH_MAX:
            # pytest's tmp_path can be too deep for sun_path (108 bytes).
            self._short_dir = tempfile.mkdtemp(prefix="xsguest-")
            socket_path = Path(self._short_dir) / "sock"
        self.socket_path = socket_path

        self._mm: Optional[mmap.mmap] = None
        self._idx: Optional[memoryview] = None
        self._to_xenstored = -1
        self._from_xenstored = -1
        self._listener: Optional[socket.socket] = None
        self._sel: Optional[selectors.BaseSelector] = None
        self._wake_r = self._wake_w = -1
        self._thread: Optional[threading.Thread] = None
        self._stop = False

        # Everything below is touched only on the I/O thread.
        self._calls: Deque[Tuple[Callable[[], object], "_Future"]] = deque()
        self._calls_lock = threading.Lock()
        self._clients: Dict[int, _Client] = {}
        self._next_client = 1
        self._next_req_id = 1
        self._next_token = 1
        self._pending: Dict[int, _Pending] = {}
        #: token on the ring -> (client, path, the client's own token)
        self._ring_watches: Dict[bytes, Tuple[_Client, bytes, bytes]] = {}
        self._out = bytearray()            # bytes not yet copied into the request ring
        self._in = bytearray()             # bytes read from the response ring, not yet parsed
        self._held: List[Tuple[_Client, bytes]] = []  # requests clients sent while suspended
        self._suspended = False   # no new requests go out
        self._frozen = False      # suspended and drained: the ring is not touched at all
        self._broken: Optional[str] = None
        self.requests_sent = 0
        self.watch_events = 0

    # --- life cycle ------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        """The agent's XenStore spec for this guest: ``unix:<socket_path>``."""
        return f"unix:{self.socket_path}"

    def start(self) -> "GuestBridge":
        """Create the ring page and both event channel FIFOs, listen, start the I/O thread."""
        if self._thread is not None:
            raise BridgeError("bridge already started")
        self.shim_dir.mkdir(parents=True, exist_ok=True)
        ring = ring_path(self.shim_dir, self.domid)
        # A fresh, zeroed page: what a newly built domain grants.
        with open(ring, "wb") as f:
            f.write(b"\0" * PAGE_SIZE)
        fd = os.open(ring, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._mm = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._idx = memoryview(self._mm)[_INDEX_OFFSET:_INDEX_OFFSET + 4 * _INDEX_COUNT].cast("I")

        for path in (xenstored_fifo(self.shim_dir), guest_fifo(self.shim_dir, self.domid)):
            _make_fifo(path)
        # O_RDWR on both: opening a FIFO's write end alone fails (ENXIO) while xenstored is not
        # running, and a read end alone reports EOF whenever no writer is connected.
        self._to_xenstored = os.open(xenstored_fifo(self.shim_dir),
                                     os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._from_xenstored = os.open(guest_fifo(self.shim_dir, self.domid),
                                       os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket_path))
        self._listener.listen(16)
        self._listener.setblocking(False)

        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "listener")
        self._sel.register(self._from_xenstored, selectors.EVENT_READ, "evtchn")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"guestbridge-dom{self.domid}",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, drop every client, unmap the ring. Safe to call twice."""
        if self._thread is not None:
            self._stop = True
            self._wake()
            self._thread.join(5)
            self._thread = None
        if self._sel is not None:
            for key in list(self._sel.get_map().values()):
                if isinstance(key.data, _Client):
                    key.data.sock.close()
            self._sel.close()
            self._sel = None
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
        for fd in (self._to_xenstored, self._from_xenstored, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._to_xenstored = self._from_xenstored = self._wake_r = self._wake_w = -1
        if self._idx is not None:
            self._idx.release()
            self._idx = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._short_dir:
            try:
                os.rmdir(self._short_dir)
            except OSError:
                pass
            self._short_dir = None

    def __enter__(self) -> "GuestBridge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the guest kernel does around a suspend ---------------------------------------

    def suspend(self, timeout: float = 5.0) -> None:
        """Stop sending (clients' requests are held), wait until no reply is outstanding, then
        stop touching the ring.

        Like Linux's xs_suspend() followed by the vCPUs stopping: after it returns the toolstack
        may re-introduce or release the domain. Watch events xenstored queues meanwhile are lost
        with the old connection, which is why resume() re-registers every watch.
        """
        self._call(self._do_suspend)
        deadline = time.monotonic() + timeout
        while not self._call(self._drained):
            if time.monotonic() >= deadline:
                raise BridgeError(f"suspend: {self._call(self._describe_pending)} still "
                                  f"outstanding after {timeout:g}s")
            time.sleep(0.001)

    def resume(self) -> None:
        """After the toolstack re-introduced the domain: forget the old ring position, re-register
        every watch (each fires once), make transactions opened before the suspend fail with
        EAGAIN, then send what the clients queued meanwhile (xs_resume() in Linux)."""
        self._call(self._do_resume)

    @property
    def suspended(self) -> bool:
        return self._suspended

    # --- introspection for tests ------------------------------------------------------------

    def ring_indexes(self) -> Tuple[int, int, int, int]:
        """(req_cons, req_prod, rsp_cons, rsp_prod) as they are in the shared page now."""
        idx = self._require_idx()
        return idx[_REQ_CONS], idx[_REQ_PROD], idx[_RSP_CONS], idx[_RSP_PROD]

    @property
    def ring_error(self) -> int:
        """The page's ``error`` field (xenstored sets it when it gives up on the ring)."""
        return self._require_idx()[_ERROR]

    @property
    def clients(self) -> int:
        return self._call(lambda: len(self._clients))

    def _require_idx(self) -> memoryview:
        if self._idx is None:
            raise BridgeError("bridge not started")
        return self._idx

    # --- hand-off to the I/O thread ---------------------------------------------------------

    def _call(self, fn: Callable[[], object], timeout: float = 10.0):
        if self._thread is None or not self._thread.is_alive():
            raise BridgeError("bridge is not running")
        if threading.current_thread() is self._thread:
            return fn()
        future = _Future()
        with self._calls_lock:
            self._calls.append((fn, future))
        self._wake()
        return future.result(timeout)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe already holds a wake-up; a closed one means we are stopping

    # --- the I/O thread ---------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sel is not None
        # xenstored may have answered before this thread started (or before a restart of it).
        self._pump()
        while not self._stop:
            for key, events in self._sel.select():
                what = key.data
                try:
                    if what == "listener":
                        self._accept()
                    elif what == "evtchn":
                        self._drain(self._from_xenstored)
                    elif what == "wake":
                        self._drain(self._wake_r)
                    elif isinstance(what, _Client):
                        if events & selectors.EVENT_READ:
                            self._client_readable(what)
                        if events & selectors.EVENT_WRITE and not what.closed:
                            self._client_flush(what)
                except Exception:  # one bad client or event must not stop the guest's XenStore
                    log.exception("guest bridge dom%d: error handling %r", self.domid, what)
            self._run_calls()
            # Whatever woke us, look at both rings: notifications coalesce, and the ones that
            # raced with the previous scan were drained above before this scan.
            self._pump()

    def _run_calls(self) -> None:
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            try:
                future.set(fn())
            except BaseException as exc:  # handed back to the caller's thread
                future.fail(exc)

    @staticmethod
    def _drain(fd: int) -> None:
        while True:
            try:
                if not os.read(fd, 4096):
                    return
            except BlockingIOError:
                return

    def _notify(self) -> None:
        """Raise the domain's event channel towards xenstored."""
        try:
            os.write(self._to_xenstored, struct.pack("=I", self.domid))
        except BlockingIOError:
            pass  # the FIFO is full of wake-ups already

    # --- the ring ---------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._broken or self._frozen:
            return
        self._write_ring()
        self._read_ring()

    def _write_ring(self) -> None:
        assert self._mm is not None and self._idx is not None
        idx, wrote = self._idx, False
        while self._out:
            cons, prod = idx[_REQ_CONS], idx[_REQ_PROD]
            used = (prod - cons) & _U32
            if used > RING_SIZE:
                self._break(f"request ring indexes corrupt (cons {cons}, prod {prod})")
                return
            space = min(RING_SIZE - used, RING_SIZE - prod % RING_SIZE, len(self._out))
            if space == 0:
                break  # xenstored notifies us when it has consumed
            start = prod % RING_SIZE
            self._mm[start:start + space] = self._out[:space]
            del self._out[:space]
            idx[_REQ_PROD] = (prod + space) & _U32  # one 32-bit store, after the data
            wrote = True
        if wrote:
            self._notify()

    def _read_ring(self) -> None:
        assert self._mm is not None and self._idx is not None
        idx, consumed = self._idx, False
        while True:
            cons, prod = idx[_RSP_CONS], idx[_RSP_PROD]
            avail = (prod - cons) & _U32
            if avail > RING_SIZE:
                self._break(f"response ring indexes corrupt (cons {cons}, prod {prod})")
                return
            if avail == 0:
                break
            start = cons % RING_SIZE
            n = min(avail, RING_SIZE - start)
            self._in += self._mm[RING_SIZE + start:RING_SIZE + start + n]
            idx[_RSP_CONS] = (cons + n) & _U32  # after copying the data out
            consumed = True
        if consumed:
            # xenstored may be waiting for room to finish a long reply or a watch event.
            self._notify()
        while len(self._in) >= HEADER.size:
            op, req_id, tx_id, length = HEADER.unpack_from(self._in)
            if length > PAYLOAD_MAX:
                self._break(f"reply with payload length {length} > {PAYLOAD_MAX}")
                return
            if len(self._in) < HEADER.size + length:
                break
            payload = bytes(self._in[HEADER.size:HEADER.size + length])
            del self._in[:HEADER.size + length]
            self._from_ring(op, req_id, tx_id, payload)
        if self._out:
            self._write_ring()

    def _break(self, why: str) -> None:
        # Like xenstored itself, give up on a ring whose indexes make no sense rather than
        # guess: a test must notice, not limp on.
        self._broken = why
        log.error("guest bridge dom%d: %s; ring abandoned", self.domid, why)
        for client in list(self._clients.values()):
            self._drop_client(client)

    def _send(self, op: int, tx_id: int, payload: bytes, pending: _Pending) -> None:
        req_id = self._next_req_id
        self._next_req_id = (self._next_req_id % 0x7FFFFFFF) + 1
        self._pending[req_id] = pending
        self._out += HEADER.pack(op, req_id, tx_id, len(payload)) + payload
        self.requests_sent += 1

    # --- replies and events from xenstored --------------------------------------------------

    def _from_ring(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if op == XS_WATCH_EVENT:
            self.watch_events += 1
            path, _, rest = payload.partition(b"\0")
            token = rest.split(b"\0", 1)[0]
            owner = self._ring_watches.get(token)
            if owner is None:
                return  # unwatched meanwhile, or its client left
            client, _, client_token = owner
            body = path + b"\0" + client_token + b"\0"
            self._to_client(client, HEADER.pack(XS_WATCH_EVENT, 0, 0, len(body)) + body)
            return
        pending = self._pending.pop(req_id, None)
        if pending is None:
            log.warning("guest bridge dom%d: reply to unknown request %d (op %d)", self.domid,
                        req_id, op)
            return
        client, ok = pending.client, op != XS_ERROR
        if pending.op == XS_TRANSACTION_START and ok and client is not None:
            new_tx = int(payload.rstrip(b"\0") or 0)
            client.transactions.add(new_tx)
            client.stale_transactions.discard(new_tx)
        elif pending.op == XS_TRANSACTION_END and client is not None:
            client.transactions.discard(pending.tx_id)
        elif pending.op == XS_WATCH and not ok and pending.new_watch:
            # E2BIG (watch quota), EINVAL...: it was never registered. A duplicate's EEXIST
            # leaves the first registration in place.
            self._forget_watch(client, pending.watch)
        elif pending.op == XS_UNWATCH and ok and pending.watch is not None:
            self._forget_watch(client, pending.watch)
        if client is None or client.closed:
            if not ok:
                log.debug("guest bridge dom%d: own request op %d failed: %r", self.domid,
                          pending.op, payload)
            return
        self._to_client(client, HEADER.pack(op, pending.req_id, tx_id, len(payload)) + payload)

    def _forget_watch(self, client: Optional[_Client], key: Optional[Tuple[bytes, bytes]]) -> None:
        if client is None or key is None:
            return
        token = client.watches.pop(key, None)
        if token is not None:
            self._ring_watches.pop(token, None)

    # --- clients ----------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            client = _Client(self._next_client, sock)
            self._next_client += 1
            self._clients[client.number] = client
            self._sel.register(sock, selectors.EVENT_READ, client)
            if self._broken:
                self._drop_client(client)

    def _client_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client(client)
            return
        client.inbuf += data
        while len(client.inbuf) >= HEADER.size:
            op, req_id, tx_id, length = HEADER.unpack_from(client.inbuf)
            if length > PAYLOAD_MAX:
                # xenstored closes such a socket connection too (E2BIG would desync the stream).
                log.warning("guest bridge dom%d: client %d sent length %d; dropping it",
                            self.domid, client.number, length)
                self._drop_client(client)
                return
            if len(client.inbuf) < HEADER.size + length:
                return
            message = bytes(client.inbuf[:HEADER.size + length])
            del client.inbuf[:HEADER.size + length]
            if self._suspended:
                self._held.append((client, message))
            else:
                self._request(client, message)

    def _request(self, client: _Client, message: bytes) -> None:
        op, req_id, tx_id, _ = HEADER.unpack_from(message)
        payload = message[HEADER.size:]
        if tx_id and tx_id in client.stale_transactions:
            # The transaction died with the old connection (resume): the kernel answers EAGAIN,
            # so the caller redoes its work, exactly as after a conflicting commit.
            if op == XS_TRANSACTION_END:
                client.stale_transactions.discard(tx_id)
            self._to_client(client, _error_reply(req_id, tx_id, "EAGAIN"))
            return
        if op == XS_WATCH:
            path, _, rest = payload.partition(b"\0")
            key = (path, rest.split(b"\0", 1)[0])
            # Linux registers a user-space watch under a kernel-unique token; so do we. Mapped
            # before sending: xenstored fires a new watch once right after its reply.
            token = client.watches.get(key)
            new = token is None
            if token is None:  # else the same path and token again: xenstored says EEXIST
                token = b"bridge-%d" % self._next_token
                self._next_token += 1
                client.watches[key] = token
                self._ring_watches[token] = (client, path, key[1])
            self._send(op, tx_id, path + b"\0" + token + b"\0",
                       _Pending(client, req_id, op, tx_id, key, new))
            return
        if op == XS_UNWATCH:
            path, _, rest = payload.partition(b"\0")
            key = (path, rest.split(b"\0", 1)[0])
            token = client.watches.get(key)
            if token is None:
                self._to_client(client, _error_reply(req_id, tx_id, "ENOENT"))
                return
            self._send(op, tx_id, path + b"\0" + token + b"\0",
                       _Pending(client, req_id, op, tx_id, key))
            return
        self._send(op, tx_id, payload, _Pending(client, req_id, op, tx_id))

    def _to_client(self, client: _Client, data: bytes) -> None:
        if client.closed:
            return
        client.outbuf += data
        self._client_flush(client)

    def _client_flush(self, client: _Client) -> None:
        assert self._sel is not None
        try:
            while client.outbuf:
                sent = client.sock.send(client.outbuf)
                del client.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._drop_client(client)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        if self._sel.get_key(client.sock).events != want:
            self._sel.modify(client.sock, want, client)

    def _drop_client(self, client: _Client) -> None:
        """Like closing /dev/xen/xenbus: end its transactions, remove its watches."""
        if client.closed:
            return
        client.closed = True
        if self._sel is not None:
            try:
                self._sel.unregister(client.sock)
            except (KeyError, ValueError):
                pass
        client.sock.close()
        self._clients.pop(client.number, None)
        self._held = [(c, m) for c, m in self._held if c is not client]
        for pending in self._pending.values():
            if pending.client is client:
                pending.client = None
        if self._broken:
            return
        for tx_id in sorted(client.transactions):
            self._send(XS_TRANSACTION_END, tx_id, b"F\0",
                       _Pending(None, 0, XS_TRANSACTION_END, tx_id))
        for (path, _), token in client.watches.items():
            self._ring_watches.pop(token, None)
            self._send(XS_UNWATCH, 0, path + b"\0" + token + b"\0",
                       _Pending(None, 0, XS_UNWATCH, 0))
        client.transactions.clear()
        client.watches.clear()

    # --- suspend and resume (on the I/O thread) ---------------------------------------------

    def _do_suspend(self) -> None:
        if self._suspended:
            raise BridgeError("already suspended")
        self._suspended = True

    def _drained(self) -> bool:
        """True once nothing is outstanding; from then on the ring is left alone, as by a
        suspended guest whose vCPUs no longer run. That matters: the re-introduce zeroes the
        indexes, and a consumer index stored after that would put the ring out of step for good
        (xenstored ignores a domain whose producer and consumer are more than 1,024 apart)."""
        if self._pending or self._out:
            return False
        self._frozen = True
        return True

    def _describe_pending(self) -> str:
        return f"{len(self._pending)} request(s) and {len(self._out)} unsent byte(s)"

    def _do_resume(self) -> None:
        if not self._suspended:
            raise BridgeError("not suspended")
        # The introduce zeroed the indexes; a reply or event half-read before it is gone.
        self._frozen = False
        self._in.clear()
        self._out.clear()
        for pending in self._pending.values():  # suspend() timed out: these never come back
            if pending.client is not None:
                self._to_client(pending.client, _error_reply(pending.req_id, pending.tx_id,
                                                             "EAGAIN"))
        self._pending.clear()
        for client in self._clients.values():
            client.stale_transactions |= client.transactions
            client.transactions.clear()
        # xenstored dropped every watch of the domain: register them again under the same ring
        # tokens, so each fires once and events still reach their clients.
        for token, (_, path, _) in self._ring_watches.items():
            self._send(XS_WATCH, 0, path + b"\0" + token + b"\0", _Pending(None, 0, XS_WATCH, 0))
        self._suspended = False
        held, self._held = self._held, []
        for client, message in held:
            if not client.closed:
                self._request(client, message)
        self._pump()


class _Future:
    """The result of a call run on the I/O thread."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: object = None
        self._error: Optional[BaseException] = None

    def set(self, value: object) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self, timeout: float):
        if not self._done.wait(timeout):
            raise BridgeError(f"guest bridge did not answer within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value


__all__ = ["BridgeError", "GuestBridge", "PAGE_SIZE", "RING_SIZE", "guest_fifo", "ring_path",
           "xenstored_fifo"]
