"""Every path and value the adapter sends is bounded, and every failure is the
agent's own XenStoreError, per key (issue 9, item 8).

The limits come from Xen's public wire header and C xenstored (xen-project/xen,
RELEASE-4.17.7, the daemon the test bed runs):

* xen/include/public/io/xs_wire.h: ``XENSTORE_PAYLOAD_MAX 4096`` (a request's
  payload), ``XENSTORE_ABS_PATH_MAX 3072`` and ``XENSTORE_REL_PATH_MAX 2048``.
* tools/xenstore/xenstored_core.c, ``is_valid_nodename``: an absolute path, no
  trailing ``/`` and no ``//``; what follows ``/local/domain/<id>/`` (or the
  whole path, elsewhere) is at most ``quota_max_path_len`` (default
  XENSTORE_REL_PATH_MAX) long; ``valid_chars``:
  only ``A-Z a-z 0-9 - / _ @``.  ``canonicalize`` prefixes a relative path with
  the connection's home, so a relative path is bounded by the relative limit.

Each refusal must cost no request: xenstored's -T trace shows none.
"""

import errno

import pytest
from pyxs.exceptions import PyXSError

from support.toolstack import XS_WRITE, Dom0Client, XenStoreRefused
from xenguest_agent.xenstore import XenStore, XenStoreError, error_from_reply

HOME = "/local/domain/0"


@pytest.fixture
def store(xenstored):
    store = XenStore(xenstored.spec, timeout=2.0)
    store.connect()
    yield store
    store.close()


def refused_without_sending(xenstored, store, request):
    mark = xenstored.mark()
    with pytest.raises(XenStoreError) as caught:
        request()
    assert caught.value.errno == errno.EINVAL, caught.value
    assert not isinstance(caught.value.__cause__, PyXSError)
    assert xenstored.count(since=mark) == 0  # refused here, nothing sent
    assert store.connected
    return caught.value


def test_a_vif_id_of_thousands_of_digits_is_one_refused_key(xenstored, store):
    # pyxs's Packet raises InvalidPayload (not an XenStoreError) for a payload
    # over XENSTORE_PAYLOAD_MAX: this crashed `run`
    path = "attr/vif/" + "9" * 5000 + "/ipv4/0"
    refused_without_sending(xenstored, store, lambda: store.write(path, "10.0.0.2"))
    refused_without_sending(xenstored, store, lambda: store.read(path))
    refused_without_sending(xenstored, store, lambda: store.ls(path))
    refused_without_sending(xenstored, store, lambda: store.rm(path))
    store.write("data/ok", "1")  # the connection still works
    assert xenstored.read(f"{HOME}/data/ok") == "1"


def test_relative_path_limit_is_xenstoreds(xenstored, store):
    longest = "data/" + "a" * (2048 - len("data/"))  # XENSTORE_REL_PATH_MAX exactly
    store.write(longest, "1")  # xenstored takes it
    assert xenstored.read(f"{HOME}/{longest}") == "1"
    refused_without_sending(xenstored, store, lambda: store.write(longest + "b", "1"))


def test_absolute_path_limit(xenstored, store):
    # below /local/domain/<id>/ the relative limit applies; elsewhere the absolute one
    longest = f"{HOME}/data/" + "a" * (2048 - len("data/"))
    store.write(longest, "1")
    refused_without_sending(xenstored, store, lambda: store.write(longest + "b", "1"))
    # any other absolute path: is_valid_nodename's local_off is 0, so the whole
    # path is held to quota_max_path_len (XENSTORE_REL_PATH_MAX), not to 3072
    outside = "/tool/" + "b" * (2048 - len("/tool/"))
    store.write(outside, "1")
    refused_without_sending(xenstored, store, lambda: store.write(outside + "c", "1"))


@pytest.mark.parametrize("path", ["data/a b", "data/caf\u00e9", "data//x", "data/x/", "data/x\x00y",
                                  "data/a.b", ""])
def test_names_xenstored_refuses_are_refused_here(xenstored, store, path):
    refused_without_sending(xenstored, store, lambda: store.write(path, "1"))


def test_xenstored_itself_refuses_those_names(xenstored):
    """The local rule is xenstored's: the same names sent raw (by the test bed's
    own wire client, not the adapter) get EINVAL back, and its alphabet passes."""
    client = Dom0Client(xenstored.socket_path)
    try:
        for name in ("data/a.b", "data/a b", "data//x", "data/x/", "data/caf\u00e9"):
            with pytest.raises(XenStoreRefused) as caught:
                client.request(XS_WRITE, f"{HOME}/{name}".encode() + b"\x001")
            assert caught.value.errno == errno.EINVAL, name
        client.write(f"{HOME}/data/A-z_0@9", "1")
        with pytest.raises(XenStoreRefused) as caught:
            client.write(f"{HOME}/data/" + "a" * 2044, "1")  # 2049 after the home
        assert caught.value.errno == errno.EINVAL
    finally:
        client.close()


@pytest.mark.parametrize("value", ["caf\u00e9", "line\nbreak", "tab\there", "\x7f", "\x00"])
def test_values_must_be_printable_ascii(xenstored, store, value):
    refused_without_sending(xenstored, store, lambda: store.write("data/x", value))


def test_value_over_the_payload_limit_is_refused(xenstored, store):
    path = "data/x"
    fits = "v" * (4096 - len(path) - 1)  # path NUL value == XENSTORE_PAYLOAD_MAX
    store.write(path, fits)
    assert xenstored.read(f"{HOME}/{path}") == fits
    refused_without_sending(xenstored, store, lambda: store.write(path, fits + "v"))


def test_empty_value_and_watch_paths_still_work(xenstored, store):
    store.write("control/shutdown", "")
    assert xenstored.read(f"{HOME}/control/shutdown") == ""
    store.on_event(lambda path, token: None)
    store.watch("@releaseDomain", "tok-special")  # special watch paths start with @
    refused_without_sending(xenstored, store, lambda: store.watch("data/a b", "tok"))


def test_every_error_name_maps_to_an_errno():
    """oxenstored (XenServer's xenstored) answers a node quota with "EQUOTA"
    (tools/ocaml/xenstored/process.ml, Quota.Limit_reached), a name that is not
    in xs_wire.h's xsd_errors: pyxs maps it to errno 0.  It is a per-key quota
    refusal, like C xenstored's ENOSPC."""
    assert error_from_reply(b"EQUOTA\x00").errno == errno.EDQUOT
    assert error_from_reply(b"ENOSPC\x00").errno == errno.ENOSPC
    assert error_from_reply(b"E2BIG\x00").errno == errno.E2BIG
    unknown = error_from_reply(b"EWHATEVER\x00")
    assert unknown.errno == errno.EIO and "EWHATEVER" in str(unknown)
