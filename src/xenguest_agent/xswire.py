"""What xenstored accepts and how it refuses: the wire's limits, node names, values and
error replies, kept apart from the transport (xenstore.py) so every request is checked
before anything is sent.

pyxs raises its own exceptions (``InvalidPayload`` for a payload over the limit, from the
``Packet`` constructor) and Python's ``UnicodeError`` for a non-ASCII path: here every
path, value and token is checked first (:func:`check_path`, :func:`check_value`), and each
refusal is an :class:`XenStoreError` with ``EINVAL`` about that one key, as xenstored would
answer.  The rules are xenstored's (xen-project/xen, 4.17):
xen/include/public/io/xs_wire.h (``XENSTORE_PAYLOAD_MAX``, ``XENSTORE_ABS_PATH_MAX``,
``XENSTORE_REL_PATH_MAX``) and tools/xenstore/xenstored_core.c (``is_valid_nodename``,
``valid_chars``).
"""

from __future__ import annotations

import errno
import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

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
    name = payload.rstrip(b"\0").decode("ascii", "replace")
    code = _EXTRA_ERRORS.get(name, getattr(errno, name, None) if name.isupper() else None)
    if not isinstance(code, int) or code <= 0:
        return XenStoreError(errno.EIO, f"xenstored answered {name!r}", path)
    return XenStoreError(code, f"{name} ({os.strerror(code)})", path)


def invalid(path: str, why: str) -> XenStoreError:
    return XenStoreError(errno.EINVAL, f"refused here, not sent: {why}", path)


def check_path(path: str, watch: bool = False) -> bytes:
    """``path`` encoded for the wire, or EINVAL (an XenStoreError) when
    xenstored would refuse it: its alphabet, no empty component, no trailing
    ``/``, the path length limits.  ``watch``: special watch names (``@...``)
    are allowed too."""
    if not path:
        return _raise(invalid(path, "empty path"))
    if not _NODE_NAME.fullmatch(path):
        return _raise(invalid(path, "characters outside xenstored's A-Z a-z 0-9 - / _ @"))
    special = path.startswith("@")
    if special and not watch:
        return _raise(invalid(path, "a special watch name is not a node"))
    if "//" in path or (path.endswith("/") and path != "/"):
        return _raise(invalid(path, "empty path component or trailing /"))
    if path.startswith("/"):
        home = _DOMAIN_HOME.match(path)
        if len(path) - (home.end() if home else 0) > XENSTORE_REL_PATH_MAX \
                or len(path) > XENSTORE_ABS_PATH_MAX:
            return _raise(invalid(path, "longer than xenstored accepts"))
    elif not special and len(path) > XENSTORE_REL_PATH_MAX:  # xenstored prefixes the home
        return _raise(invalid(path, f"longer than XENSTORE_REL_PATH_MAX ({XENSTORE_REL_PATH_MAX})"))
    return path.encode("ascii")


def check_value(path: str, value: str) -> bytes:
    """``value`` encoded, or EINVAL unless it is printable ASCII and fits one
    request's payload together with its path."""
    if not _PRINTABLE.fullmatch(value):
        raise invalid(path, "value is not printable ASCII")
    if len(path) + 1 + len(value) > XENSTORE_PAYLOAD_MAX:
        raise invalid(path, f"path and value exceed XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
    return value.encode("ascii")


def _raise(exc: XenStoreError) -> bytes:
    raise exc
