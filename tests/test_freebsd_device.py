"""The model of FreeBSD's /dev/xen/xenstore (tests/support/freebsd_device.py) against the real
xenstored: each rule of ``xs_dev_write`` (freebsd/freebsd-src sys/dev/xen/xenstore/xenstore_dev.c)
is shown next to what xenstored itself does with the same request, so a rule that the model
failed to apply would be seen passing through to xenstored."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Iterator, Tuple

import pytest

from support.freebsd_device import (
    PAGE_SIZE,
    POINTER_SIZE,
    WATCH_REPLY_FILLER,
    FreeBSDXenstoreDevice,
    parse_watch_payload,
)
from support.toolstack import (
    XS_DIRECTORY_PART,
    XS_INTRODUCE,
    XS_RESET_WATCHES,
    Dom0Client,
    XenStoreRefused,
)

HEADER = struct.Struct("=IIII")
XS_READ, XS_WATCH, XS_UNWATCH, XS_WRITE, XS_WATCH_EVENT, XS_ERROR = 2, 4, 5, 11, 15, 16


@pytest.fixture
def device(xenstored) -> Iterator[FreeBSDXenstoreDevice]:
    with FreeBSDXenstoreDevice(xenstored.socket_path) as dev:
        yield dev


def raw(path: str, op: int, payload: bytes, req_id: int = 7, tx_id: int = 0
        ) -> Tuple[int, int, int, bytes]:
    """One request on a fresh connection; the first reply that is not a watch event."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))  # blocking: a unix socket with a timeout fails EAGAIN on a full backlog
        sock.settimeout(5)
        sock.sendall(HEADER.pack(op, req_id, tx_id, len(payload)) + payload)
        buf = b""
        while True:
            while len(buf) < HEADER.size or len(buf) < HEADER.size + HEADER.unpack_from(buf)[3]:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            rop, rreq, rtx, length = HEADER.unpack_from(buf)
            body, buf = buf[HEADER.size:HEADER.size + length], buf[HEADER.size + length:]
            if rop != XS_WATCH_EVENT:
                return rop, rreq, rtx, body


def test_parse_watch_payload() -> None:
    assert parse_watch_payload(b"a/b\0tok\0") == (b"a/b", b"tok")
    assert parse_watch_payload(b"a/b\0tok") is None       # the token needs its NUL
    assert parse_watch_payload(b"a/b") is None


def test_a_token_already_registered_on_the_open_file_is_einval(xenstored, device) -> None:
    """xs_dev_write, case XS_WATCH: xs_dev_find_watch(u, token) != NULL -> EINVAL, whatever the
    path. xenstored itself accepts one token on two paths."""
    direct = Dom0Client(xenstored.socket_path)
    fbsd = Dom0Client(device.socket_path)
    other = Dom0Client(device.socket_path)
    try:
        direct.watch("/local/domain/0/domid", "tok")
        direct.watch("/local/domain/0/unique-domain-id", "tok")  # fine for xenstored
        fbsd.watch("/local/domain/0/domid", "tok")
        with pytest.raises(XenStoreRefused) as refused:
            fbsd.watch("/local/domain/0/unique-domain-id", "tok")
        assert refused.value.errno == errno.EINVAL
        with pytest.raises(XenStoreRefused):
            fbsd.watch("/local/domain/0/domid", "tok")  # the same pair again: also EINVAL
        other.watch("/local/domain/0/domid", "tok")     # another open file has its own list
        fbsd.watch("/local/domain/0/unique-domain-id", "tok2")
        assert sorted(device.watch_tokens()) == [["tok"], ["tok", "tok2"]]
    finally:
        for client in (direct, fbsd, other):
            client.close()


def test_watch_reply_is_a_pointer_sized_ok_and_events_carry_the_users_token(xenstored,
                                                                            device) -> None:
    """case XS_WATCH: msg.len = sizeof(ok) with ``static const char *ok`` (8 bytes on amd64),
    tx_id 0; xs_dev_watch_cb queues XS_WATCH_EVENT path NUL token NUL."""
    rop, rreq, rtx, body = raw(device.socket_path, XS_WATCH, b"/local/domain/0/x\0mine\0",
                               req_id=42, tx_id=0)
    assert (rop, rreq, rtx) == (XS_WATCH, 42, 0)
    assert len(body) == POINTER_SIZE == 8 and body == b"OK\0" + WATCH_REPLY_FILLER
    assert raw(xenstored.socket_path, XS_WATCH, b"/local/domain/0/x\0mine\0")[3] == b"OK\0"
    client = Dom0Client(device.socket_path)
    try:
        client.watch("/local/domain/0/y", "t1")
        assert client.wait_event(5) == ("/local/domain/0/y", "t1")  # fired once at once
        xenstored.write("/local/domain/0/y", "1")
        assert client.wait_event(5) == ("/local/domain/0/y", "t1")
        client.unwatch("/anything/else", "t1")  # found by token; the registered node goes
        xenstored.write("/local/domain/0/y", "2")
        client.watch("/local/domain/0/w", "t2")  # fires at once, after any event for y=2
        assert client.wait_event(5) == ("/local/domain/0/w", "t2")
    finally:
        client.close()


def test_unwatch_of_an_unknown_token_is_einval_not_enoent(xenstored, device) -> None:
    assert raw(device.socket_path, XS_UNWATCH, b"a\0nope\0")[3] == b"EINVAL\0"
    assert raw(xenstored.socket_path, XS_UNWATCH, b"a\0nope\0")[3] == b"ENOENT\0"


@pytest.mark.parametrize("op,payload", [
    (XS_DIRECTORY_PART, b"/local\x000\0"), (XS_RESET_WATCHES, b""),
    (XS_INTRODUCE, b"9\x001\x001\0")])
def test_operations_outside_the_switch_are_einval(xenstored, device, op: int,
                                                  payload: bytes) -> None:
    """xs_dev_write's default case. xenstored answers RESET_WATCHES itself."""
    assert raw(device.socket_path, op, payload) == (XS_ERROR, 7, 0, b"EINVAL\0")
    if op == XS_RESET_WATCHES:
        assert raw(xenstored.socket_path, op, payload)[0] == op
    assert device.refusals[-1][1] == op


def test_a_transaction_not_started_on_this_open_file_is_einval(xenstored, device) -> None:
    """'Check that this transaction id is not hijacked': xs_dev_find_transaction."""
    mine = Dom0Client(device.socket_path)
    try:
        tx = mine.transaction_start()
        assert raw(device.socket_path, XS_READ, b"/local\0", tx_id=tx) == (
            XS_ERROR, 7, tx, b"EINVAL\0")
        mine.write("/local/domain/0/t", "v", tx)
        assert mine.transaction_end(tx)
        with pytest.raises(XenStoreRefused) as refused:  # ended: no longer this file's
            mine.read("/local/domain/0/t", tx)
        assert refused.value.errno == errno.EINVAL
    finally:
        mine.close()
    assert xenstored.read("/local/domain/0/t") == "v"


def test_a_request_larger_than_a_page_fails_the_write(xenstored, device) -> None:
    """``if ((len + u->len) > sizeof(u->u.buffer)) return (EINVAL)``: header + payload must fit
    PAGE_SIZE. xenstored takes payloads up to XENSTORE_PAYLOAD_MAX (4096)."""
    fits = b"/local/domain/0/big\0" + b"v" * (PAGE_SIZE - HEADER.size - 20)
    assert HEADER.size + len(fits) == PAGE_SIZE
    assert raw(device.socket_path, XS_WRITE, fits)[0] == XS_WRITE
    too_big = fits + b"v"
    with pytest.raises(ConnectionError):
        raw(device.socket_path, XS_WRITE, too_big)
    assert "PAGE_SIZE" in device.refusals[-1][2]
    assert raw(xenstored.socket_path, XS_WRITE, too_big)[0] == XS_WRITE
    assert device.violations == []


def test_closing_the_open_file_removes_its_watches(xenstored, device) -> None:
    """xs_dev_dtor unregisters every watch of the open file."""
    client = Dom0Client(device.socket_path)
    client.watch("/local/domain/0/z", "t")
    assert device.open_files == 1
    client.close()
    from support.waiting import wait_for
    assert wait_for(lambda: device.open_files == 0)


def test_a_reply_larger_than_the_read_ring_is_recorded(xenstored, device) -> None:
    """xs_queue_reply: replies go through a PAGE_SIZE ring (KASSERT "xenstore reply too big");
    a value of more than PAGE_SIZE - 16 bytes cannot be read whole through FreeBSD's device."""
    value = b"v" * (PAGE_SIZE - HEADER.size + 1)  # "/h" keeps the WRITE within 4096 bytes
    assert raw(xenstored.socket_path, XS_WRITE, b"/h\0" + value)[0] == XS_WRITE
    assert raw(device.socket_path, XS_READ, b"/h\0") == (XS_READ, 7, 0, value)
    assert len(device.violations) == 1 and "read ring" in device.violations[0]


def test_the_agents_adapter_sees_an_oversized_request_as_a_broken_connection(xenstored,
                                                                             device) -> None:
    """On FreeBSD write(2) of the payload fails with EINVAL and pyxs raises ConnectionError: the
    adapter reports XenStoreUnavailable and a reconnect (a fresh open(2)) works. The agent's
    values are bounded far below (schema.MAX_VALUE_BYTES), so this is the failure mode, not a
    path the agent takes."""
    from xenguest_agent.schema import MAX_VALUE_BYTES
    from xenguest_agent.xenstore import XenStore, XenStoreUnavailable

    assert MAX_VALUE_BYTES + 200 < PAGE_SIZE - HEADER.size
    store = XenStore(device.spec, timeout=5)
    store.connect()
    try:
        with pytest.raises(XenStoreUnavailable):
            # path NUL value: 20 + 4060 = 4080 + 1 bytes, one over the page with the header
            store.write("/local/domain/0/big", "v" * (PAGE_SIZE - HEADER.size - 20 + 1))
        store.connect()
        store.write("/local/domain/0/big", "v" * MAX_VALUE_BYTES)
        assert store.read("/local/domain/0/big") == "v" * MAX_VALUE_BYTES
    finally:
        store.close()
