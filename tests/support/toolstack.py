"""What xenopsd does to a guest's XenStore, over the dom0 socket of the test bed's real xenstored.

Why: the agent's behaviour around shutdown requests, suspend/resume and migration can only be
proven if something plays the toolstack's part exactly: build the guest's home with the real
permissions, introduce the domain, ask for a shutdown in one transaction and wait for the
acknowledgement, and rebuild the tree on "migration". Each step cites the xenopsd code it copies
(xapi's ocaml/xenopsd/xc/domain.ml, Domain.make and Domain.shutdown/shutdown_wait_for_ack).

``GuestDomain`` puts the pieces together: a xenstored that knows domain N, the toolstack, and the
guest's ring (tests/support/guestbridge.py) served to the agent as ``spec``.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .guestbridge import GuestBridge
from .xenstored import Xenstored

HEADER = struct.Struct("=IIII")

# xs_wire.h enum xsd_sockmsg_type
XS_CONTROL = 0
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22

#: Directories xenopsd creates writable by the guest (Domain.make, "create read/write nodes for the
#: guest to use"). The agent writes data/, attr/, xenserver/attr/, control/ and feature/.
GUEST_WRITABLE = ("device", "device/vbd", "device/vif", "feature", "error", "drivers", "control",
                  "attr", "xenserver/attr", "data", "messages", "vm-data", "hvmloader", "rrd")
#: Written by xenopsd right after building the tree (Domain.make).
PLATFORM_FEATURES = {
    "control/platform-feature-multiprocessor-suspend": "1",
    "control/platform-feature-xs_reset_watches": "1",
    "control/has-vendor-device": "0",
}
SHUTDOWN_REASONS = ("poweroff", "reboot", "halt", "suspend", "s3")
#: Under libxl control/ itself is read-only to the guest, and only these nodes in it are made
#: writable (empty) at creation (libxl_create.c, libxl__domain_make; feature-s3/s4 for HVM).
LIBXL_CONTROL_RW = ("shutdown", "feature-poweroff", "feature-reboot", "feature-suspend",
                    "feature-s3", "feature-s4", "sysrq")

#: The "mfn" given in XS_INTRODUCE. 4.17 maps the ring by grant reference and ignores it, but
#: compares it on a re-introduce of a live domain, so it must stay the same for a domain.
RING_MFN = 0xFEFFF
#: The guest's end of the xenstore event channel (any number: the shim routes by domid).
GUEST_PORT = 1
_ERRNO_NAMES = {name: code for code, name in errno.errorcode.items()}


class XenStoreRefused(OSError):
    """xenstored answered XS_ERROR; ``errno`` is the code it named (e.g. EACCES)."""


def xenopsd_perms(domid: int, writable: bool) -> Tuple[str, ...]:
    """The permissions xenopsd sets (xenopsd/xc/xenbus_utils.ml):

    * roperm_for_guest: owner dom0, others nothing, the guest may read: ``n0 r<domid>``;
    * rwperm_for_guest: owner *the guest*, others nothing: ``n<domid>``. Owning the node is what
      lets the guest write it and create children (which it then owns too).
    """
    return (f"n{domid}",) if writable else ("n0", f"r{domid}")


def frame(op: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """One wire message: ``struct xsd_sockmsg`` (xen/include/public/io/xs_wire.h) + payload."""
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


def take_message(buf: bytearray) -> Optional[Tuple[int, int, int, bytes]]:
    """Remove and return the first whole message in ``buf`` (op, req_id, tx_id, payload), or
    None while the message is incomplete."""
    if len(buf) < HEADER.size:
        return None
    op, req_id, tx_id, length = HEADER.unpack_from(buf)
    if len(buf) < HEADER.size + length:
        return None
    payload = bytes(buf[HEADER.size:HEADER.size + length])
    del buf[:HEADER.size + length]
    return op, req_id, tx_id, payload


class Dom0Client:
    """A minimal synchronous client of xenstored's unix socket (dom0: no permission checks).

    It speaks the plain wire protocol, so connected to a GuestBridge socket it is the guest
    instead (GuestKernel uses it that way).

    Independent of the agent's adapter on purpose: the toolstack must not share the code under
    test. Watch events that arrive while waiting for a reply are kept for ``wait_event()``.
    """

    def __init__(self, socket_path: os.PathLike[str] | str, timeout: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._buf = bytearray()
        self._events: List[Tuple[str, str]] = []
        self._req_id = 0

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def _read_message(self, timeout: Optional[float]) -> Optional[Tuple[int, int, int, bytes]]:
        sock = self._connect()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = take_message(self._buf)
            if message is not None:
                return message
            remaining = self.timeout if deadline is None else deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                return None
            data = sock.recv(65536)
            if not data:
                self.close()
                raise ConnectionError("xenstored closed the dom0 connection")
            self._buf += data

    def request(self, op: int, payload: bytes, tx_id: int = 0) -> bytes:
        """Send one request, return the reply payload; XenStoreRefused on XS_ERROR."""
        self._req_id = (self._req_id + 1) & 0x7FFFFFFF
        self._connect().sendall(frame(op, self._req_id, tx_id, payload))
        while True:
            message = self._read_message(self.timeout)
            if message is None:
                self.close()
                raise TimeoutError(f"xenstored did not answer op {op} within {self.timeout:g}s")
            rop, req_id, _, reply = message
            if rop == XS_WATCH_EVENT:
                path, token = reply.rstrip(b"\0").split(b"\0", 1)
                self._events.append((path.decode(), token.decode()))
                continue
            if req_id != self._req_id:
                continue  # a late reply to a request that timed out
            if rop == XS_ERROR:
                name = reply.rstrip(b"\0").decode()
                raise XenStoreRefused(_ERRNO_NAMES.get(name, errno.EIO), name)
            return reply

    def wait_event(self, timeout: float) -> Optional[Tuple[str, str]]:
        """The next watch event (path, token), or None after timeout."""
        if self._events:
            return self._events.pop(0)
        message = self._read_message(timeout)
        while message is not None:
            rop, _, _, reply = message
            if rop == XS_WATCH_EVENT:
                path, token = reply.rstrip(b"\0").split(b"\0", 1)
                return path.decode(), token.decode()
            message = self._read_message(timeout)
        return None

    def drop_events(self) -> None:
        """Forget watch events not yet taken (e.g. of a watch just removed)."""
        self._events.clear()

    # --- node operations (tx 0 unless given) ---------------------------------------------

    def read(self, path: str, tx: int = 0) -> Optional[str]:
        try:
            return self.request(XS_READ, path.encode() + b"\0", tx).decode("utf-8",
                                                                          "surrogateescape")
        except XenStoreRefused as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def write(self, path: str, value: str, tx: int = 0) -> None:
        self.request(XS_WRITE, path.encode() + b"\0" + value.encode("utf-8", "surrogateescape"),
                     tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.request(XS_MKDIR, path.encode() + b"\0", tx)

    def rm(self, path: str, tx: int = 0) -> None:
        try:
            self.request(XS_RM, path.encode() + b"\0", tx)
        except XenStoreRefused as exc:
            if exc.errno != errno.ENOENT:
                raise

    def ls(self, path: str, tx: int = 0) -> Optional[List[str]]:
        try:
            reply = self.request(XS_DIRECTORY, path.encode() + b"\0", tx)
        except XenStoreRefused as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return [n.decode() for n in reply.split(b"\0") if n]

    def set_perms(self, path: str, perms: Sequence[str], tx: int = 0) -> None:
        self.request(XS_SET_PERMS, path.encode() + b"\0" + b"".join(p.encode() + b"\0"
                                                                     for p in perms), tx)

    def get_perms(self, path: str, tx: int = 0) -> List[str]:
        reply = self.request(XS_GET_PERMS, path.encode() + b"\0", tx)
        return [p.decode() for p in reply.split(b"\0") if p]

    def watch(self, path: str, token: str) -> None:
        self.request(XS_WATCH, path.encode() + b"\0" + token.encode() + b"\0")

    def unwatch(self, path: str, token: str) -> None:
        self.request(XS_UNWATCH, path.encode() + b"\0" + token.encode() + b"\0")

    def transaction_start(self) -> int:
        return int(self.request(XS_TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        """True if committed; False on EAGAIN (a conflict: redo)."""
        try:
            self.request(XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        except XenStoreRefused as exc:
            if exc.errno == errno.EAGAIN:
                return False
            raise
        return True

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        self.request(XS_INTRODUCE, f"{domid}\0{mfn}\0{port}\0".encode())

    def release(self, domid: int) -> None:
        self.request(XS_RELEASE, f"{domid}\0".encode())

    def is_introduced(self, domid: int) -> bool:
        return self.request(XS_IS_DOMAIN_INTRODUCED, f"{domid}\0".encode()).rstrip(b"\0") == b"T"


class Toolstack:
    """xenopsd's part for domain ``domid``: build the home, introduce, ask for shutdowns,
    suspend/resume and migrate. ``bridge`` (the guest's kernel side) is needed for the last two.

    ``unique_domain_id=False`` is plain xl (libxl writes none); ``control_writable=False`` lays
    out ``control/`` as libxl does: read-only to the guest except the pre-created, empty nodes of
    LIBXL_CONTROL_RW, so any other write there fails with EACCES; shutdown requests are then
    plain writes, like libxl's (a remove and re-create would lose the node's permissions).
    """

    def __init__(self, xenstored: Xenstored, domid: int, bridge: Optional[GuestBridge] = None, *,
                 unique_domain_id: bool = True, control_writable: bool = True,
                 extra_keys: Optional[Dict[str, str]] = None) -> None:
        self.xenstored = xenstored
        self.domid = int(domid)
        self.bridge = bridge
        self.with_unique_domain_id = unique_domain_id
        self.control_writable = control_writable
        self.extra_keys = dict(extra_keys or {})
        self.unique_domain_id: Optional[str] = None
        self.generation = 0
        self.client = Dom0Client(xenstored.socket_path)

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    def close(self) -> None:
        self.client.close()

    # --- building and introducing ----------------------------------------------------------

    def build_home(self) -> Optional[str]:
        """Create /local/domain/N as xenopsd's Domain.make does, in one transaction, then the
        keys it writes after; returns the new unique-domain-id (None in plain-xl mode)."""
        home, domid = self.home, self.domid
        writable = [d for d in GUEST_WRITABLE if self.control_writable or d != "control"]

        def build(tx: int) -> None:
            c = self.client
            c.rm(home, tx)  # "Clear any existing rubbish in xenstored"
            c.mkdir(home, tx)
            c.set_perms(home, xenopsd_perms(domid, writable=False), tx)
            for d in ("cpu", "memory"):
                c.mkdir(f"{home}/{d}", tx)
                c.set_perms(f"{home}/{d}", xenopsd_perms(domid, writable=False), tx)
            if not self.control_writable:
                c.mkdir(f"{home}/control", tx)
                c.set_perms(f"{home}/control", xenopsd_perms(domid, writable=False), tx)
                for name in LIBXL_CONTROL_RW:
                    c.write(f"{home}/control/{name}", "", tx)
                    c.set_perms(f"{home}/control/{name}", xenopsd_perms(domid, writable=True),
                                tx)
            for d in writable:
                c.mkdir(f"{home}/{d}", tx)
                c.set_perms(f"{home}/{d}", xenopsd_perms(domid, writable=True), tx)
            c.write(f"{home}/vm", f"/vm/{self.vm_uuid}", tx)
            c.write(f"{home}/name", f"guest-{domid}", tx)
            c.write(f"{home}/domid", str(domid), tx)

        self._transaction(build)
        # Written outside the transaction, like xenopsd (xs.Xs.write after Xs.transaction); they
        # inherit the parent's permissions: read-only for the guest under a read-only control/.
        for key, value in {**PLATFORM_FEATURES, **self.extra_keys}.items():
            self.client.write(f"{home}/{key}", value)
        self.unique_domain_id = None
        if self.with_unique_domain_id:
            # CA-30811: "let the linux guest agent easily determine if this is a fresh domain
            # even if the domid hasn't changed (consider cross-host migrate)".
            self.unique_domain_id = str(uuid.uuid4())
            self.client.write(f"{home}/unique-domain-id", self.unique_domain_id)
        self.generation += 1
        return self.unique_domain_id

    @property
    def vm_uuid(self) -> str:
        return str(uuid.UUID(int=self.domid))

    def introduce(self) -> None:
        """XS_INTRODUCE: xenstored maps the ring (the bridge's file) and binds the event channel.
        Re-introducing a live domain resets its connection: ring indexes zeroed, watches and
        transactions dropped."""
        self.client.introduce(self.domid, RING_MFN, GUEST_PORT)

    def release(self) -> None:
        """XS_RELEASE: xenstored forgets the domain and deletes every node it owns."""
        self.client.release(self.domid)

    def create(self) -> Optional[str]:
        """Build the home, then introduce the domain: the guest can talk from then on."""
        uid = self.build_home()
        self.introduce()
        return uid

    def _transaction(self, work, attempts: int = 20) -> None:
        for _ in range(attempts):
            tx = self.client.transaction_start()
            try:
                work(tx)
            except BaseException:
                self.client.transaction_end(tx, commit=False)
                raise
            if self.client.transaction_end(tx):
                return
            time.sleep(0.001)
        raise XenStoreRefused(errno.EAGAIN, f"transaction conflicted {attempts} times")

    # --- shutdown requests -----------------------------------------------------------------

    def request_shutdown(self, reason: str) -> None:
        """Domain.shutdown: in one transaction, fail if the home is gone, remove control/shutdown
        ("the guest may well still shutdown for the previous reason... give it a kick again")
        and write the reason. Any string is accepted, so tests can send garbage. In libxl
        layout (control_writable=False) a plain write instead."""
        path = f"{self.home}/control/shutdown"
        if not self.control_writable:
            self.client.write(path, reason)  # libxl__domain_pvcontrol: one plain write
            return

        def ask(tx: int) -> None:
            if self.client.read(self.home, tx) is None:
                raise XenStoreRefused(errno.ENOENT, f"{self.home} does not exist")
            self.client.rm(path, tx)
            self.client.write(path, reason, tx)

        self._transaction(ask)

    def wait_for_ack(self, timeout: float = 60.0) -> bool:
        """Domain.shutdown_wait_for_ack: True once control/shutdown is "" or gone, False after
        timeout (xenopsd's default is 60 s; tests pass much less). Watch-driven, like xenopsd."""
        path = f"{self.home}/control/shutdown"
        token = f"ack-{time.monotonic_ns()}"
        deadline = time.monotonic() + timeout
        self.client.watch(path, token)
        try:
            while True:
                if self.client.read(path) in ("", None):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.client.wait_event(remaining)
        finally:
            self.client.unwatch(path, token)
            self.client.drop_events()

    def shutdown(self, reason: str, timeout: float = 60.0) -> bool:
        self.request_shutdown(reason)
        return self.wait_for_ack(timeout)

    # --- suspend/resume and migration ------------------------------------------------------

    def _need_bridge(self) -> GuestBridge:
        if self.bridge is None:
            raise RuntimeError("this toolstack has no guest bridge")
        return self.bridge

    def simulate_suspend_resume(self) -> None:
        """A save/restore on the same host with the same tree: the guest kernel quiesces its
        ring, the toolstack re-introduces the domain (xenstored resets the connection), the
        kernel re-registers its watches (each fires once) and a transaction that spanned the
        suspend fails with EAGAIN. The tree and unique-domain-id stay.

        Only the XenStore side: the ``control/shutdown`` = ``suspend`` handshake that starts a
        real suspend is the caller's (``shutdown("suspend")``), so tests can run either alone."""
        bridge = self._need_bridge()
        bridge.suspend()
        try:
            self.introduce()
        finally:
            bridge.resume()

    def simulate_migration(self) -> Optional[str]:
        """A live migration as the guest sees it: suspended on the source, then running on a
        destination whose tree is fresh (xenopsd builds it anew; the tree is not migrated) with
        a new unique-domain-id. Everything the guest published is gone until rewritten.
        Returns the new unique-domain-id."""
        bridge = self._need_bridge()
        bridge.suspend()
        try:
            self.release()          # the source domain goes: xenstored deletes its nodes
            self.client.rm(self.home)
            uid = self.build_home()  # the destination's Domain.make
            self.introduce()
        finally:
            bridge.resume()
        return uid

    def destroy(self, remove_home: bool = True) -> None:
        """Destroy the domain: the shim reports it dying and xenstored, told by VIRQ_DOM_EXC,
        drops its connection and the nodes the domain owns (asynchronously: poll
        ``client.is_introduced``); then xenopsd removes the home (Domain.destroy)."""
        shim_dir = Path(self.xenstored.proc_xen_dir)
        (shim_dir / f"domain-{self.domid}.dying").touch()
        fd = os.open(shim_dir / "evtchn", os.O_RDWR | os.O_NONBLOCK)
        try:
            os.write(fd, struct.pack("=I", 0x40000000 | 3))  # VIRQ_DOM_EXC
        finally:
            os.close(fd)
        if remove_home:
            self.client.rm(self.home)


#: What each guest kernel handles and acknowledges on control/shutdown, and the control/feature-*
#: flags it writes once at boot. Linux: drivers/xen/manage.c (shutdown_handlers; "suspend" needs
#: CONFIG_HIBERNATE_CALLBACKS, on in distribution kernels). FreeBSD: sys/dev/xen/control/control.c,
#: which advertises nothing; FreeBSD before the fix acknowledged only "suspend".
KERNELS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "linux": (("poweroff", "halt", "reboot", "suspend"), ("poweroff", "reboot", "suspend")),
    "freebsd": (("poweroff", "halt", "reboot", "suspend"), ()),
    "freebsd-old": (("suspend",), ()),
    "none": ((), ()),  # an HVM guest without PV drivers: nothing watches control/shutdown
}


class ShutdownWatcher:
    """A guest kernel's watch on ``control/shutdown``, served on its own thread over the guest's
    ring (the bridge socket is the kernel's connection).  Subclasses model one kernel's handler
    in ``_handle`` and ``_carried_out`` what it performs; ``taken()`` lists those actions."""

    def __init__(self, bridge: GuestBridge, name: str) -> None:
        self.client = Dom0Client(bridge.socket_path)
        self.name = name
        self._actions: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _watch(self, token: str) -> None:
        self.client.watch("control/shutdown", token)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.client.close()

    def taken(self) -> List[str]:
        with self._lock:
            return list(self._actions)

    def _carried_out(self, action: str) -> None:
        with self._lock:
            self._actions.append(action)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.client.wait_event(0.05) is not None:
                    self._handle()
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # the bridge is suspended or the domain gone: keep watching

    def _handle(self) -> None:
        raise NotImplementedError


class GuestKernel(ShutdownWatcher):
    """The guest kernel's shutdown watcher, as a client of the guest's ring (the bridge socket).

    Like Linux's shutdown_handler(): on every event, in a transaction, read control/shutdown,
    ignore an empty value, write "" for a command it handles (unknown ones are left alone), retry
    the transaction on EAGAIN, then "perform" the action: here it is appended to ``actions``.
    The feature flags are written once at start, never again: after a migration they are gone
    until the agent writes them back. Writes refused with EACCES (libxl's read-only control/) are
    ignored, as the kernel does.
    """

    def __init__(self, bridge: GuestBridge, flavour: str = "linux") -> None:
        if flavour not in KERNELS:
            raise ValueError(f"unknown kernel flavour {flavour!r}: one of {sorted(KERNELS)}")
        super().__init__(bridge, f"kernel-{flavour}")
        self.flavour = flavour
        self.handles, self.features = KERNELS[flavour]

    def start(self) -> "GuestKernel":
        for name in self.features:
            try:
                self.client.write(f"control/feature-{name}", "1")
            except XenStoreRefused as exc:
                if exc.errno != errno.EACCES:
                    raise
        if self.handles:
            self._watch("kernel-shutdown")
        return self

    def _handle(self) -> None:
        while True:
            tx = self.client.transaction_start()
            try:
                value = self.client.read("control/shutdown", tx)
                handled = bool(value) and value in self.handles
                if handled:  # "Only acknowledge commands which we are prepared to handle"
                    self.client.write("control/shutdown", "", tx)
            except XenStoreRefused:
                value = None
            if not value:  # "Ignore read errors and empty reads"
                self._abort(tx)
                return
            if self.client.transaction_end(tx, commit=True):
                break
        if handled:
            self._carried_out(value)

    def _abort(self, tx: int) -> None:
        try:
            self.client.transaction_end(tx, commit=False)
        except XenStoreRefused:
            pass  # ended already (EAGAIN after a resume)


class GuestDomain:
    """A real xenstored, a toolstack and the guest's ring for one unprivileged domain.

    ``spec`` is what the agent connects to (``XenStore(spec)``): it is domain ``domid``, with
    relative paths under ``home``, permissions checked and quotas applied. ``kernel`` names a
    guest kernel flavour (KERNELS) whose shutdown watcher runs on the same ring; None for none.
    """

    def __init__(self, xenstored: Xenstored, domid: int = 5, kernel: Optional[str] = None,
                 **toolstack_options: object) -> None:
        if domid not in xenstored.domains:
            raise ValueError(f"xenstored must be started with domains=({domid},): permissions "
                             "naming an unknown domain are ignored")
        self.xenstored = xenstored
        self.domid = domid
        self.bridge = GuestBridge(xenstored.proc_xen_dir, domid)
        self.toolstack = Toolstack(xenstored, domid, self.bridge, **toolstack_options)
        #: The guest kernel's shutdown watcher (a KERNELS flavour), or None: no one but the
        #: agent handles control/shutdown.
        self.kernel = GuestKernel(self.bridge, kernel) if kernel else None

    @property
    def spec(self) -> str:
        return self.bridge.spec

    @property
    def home(self) -> str:
        return self.toolstack.home

    def start(self) -> "GuestDomain":
        self.bridge.start()
        try:
            self.toolstack.create()
            if self.kernel is not None:
                self.kernel.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.stop()
        self.toolstack.close()
        self.bridge.close()

    def __enter__(self) -> "GuestDomain":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Dom0Client", "GUEST_WRITABLE", "GuestDomain", "GuestKernel", "KERNELS",
           "LIBXL_CONTROL_RW", "PLATFORM_FEATURES", "SHUTDOWN_REASONS",
           "Toolstack", "XenStoreRefused", "xenopsd_perms"]
