"""Reading the agent's owned keys back from XenStore, safely and cheaply.

What is under an owned tree may be anything another writer put there: a node
with so many children that listing it fails (E2BIG: the reply would pass
XENSTORE_PAYLOAD_MAX, xenstored_core.c ``send_reply``), a chain a thousand
levels deep, a node the guest may not read (EACCES).  So the walk is iterative
(no recursion), descends only along the paths of the desired keys, and treats
every other child as one stale subtree to remove whole, without reading it:
the cost follows the desired keys, not what a hostile writer added.  A request
refused for one node (:data:`~xenguest_agent.xenstore.KEY_ERRORS`) skips that
node and nothing else.
"""

from __future__ import annotations

from xenguest_agent import schema
from xenguest_agent.records import dataclass, field
from xenguest_agent.xenstore import KEY_ERRORS, Transaction, XenStoreError, XenStoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, TypeVar
    T = TypeVar("T")



@dataclass
class ReadBack:
    """``found``: key -> value; None marks a node that is there but was not read
    (a stale subtree, or a node whose children could not be listed: removed
    whole, its desired keys written again).  ``unreadable``: (path, errno)."""

    found: Dict[str, Optional[str]] = field(default_factory=dict)
    unreadable: List[Tuple[str, int]] = field(default_factory=list)


def _ancestors(keys: Iterable[str]) -> Set[str]:
    """Every key and every node above it."""
    out: Set[str] = set()
    for key in keys:
        parts = key.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _safe(back: ReadBack, path: str, request: Callable[[str], T]) -> Tuple[bool, Optional[T]]:
    try:
        return True, request(path)
    except XenStoreError as exc:
        if isinstance(exc, XenStoreUnavailable) or exc.errno not in KEY_ERRORS:
            raise
        back.unreadable.append((path, exc.errno))
        return False, None


def read_back(tx: Transaction, keep: Mapping[str, str], roots: Optional[Iterable[str]]) -> ReadBack:
    """The owned keys below ``roots`` (owned paths; None: all of them) as XenStore
    holds them now, walking only towards the keys in ``keep``."""
    back = ReadBack()
    wanted = _ancestors(keep)
    start = list(schema.OWNED_TREES) + list(schema.OWNED_KEYS) if roots is None else list(roots)
    stack: List[str] = []
    for root in start:
        if root in schema.OWNED_KEYS:
            ok, value = _safe(back, root, tx.read)
            if ok and value is not None:
                back.found[root] = value
        elif schema.owns(root):
            stack.append(root)
    while stack:
        path = stack.pop()
        ok, children = _safe(back, path, tx.ls)
        if not ok:
            if path not in keep:  # cannot see what is inside: remove it whole
                back.found[path] = None
            continue
        if children is None:
            continue  # not there
        if path not in wanted and path not in schema.OWNED_TREES:
            back.found[path] = None  # a suspect path that leads to no desired key
            continue
        if path in keep:
            ok, value = _safe(back, path, tx.read)
            if ok and value is not None:
                back.found[path] = value
        for child in children:
            node = f"{path}/{child}"
            if node in wanted:
                stack.append(node)
            else:
                back.found[node] = None  # stale: removed whole, never read
    return back
