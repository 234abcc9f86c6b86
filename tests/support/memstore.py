"""An in-memory XenStore for unit tests of the publisher and agent logic.

It implements the part of :class:`xenguest_agent.xenstore.XenStore` those use
(read/write/rm/ls/begin/transact) with xenstored's tree semantics: writing a
node creates its parents with empty values, removing a node removes its
subtree, a directory lists child names.  It counts requests, and can be told
to refuse writes (``refuse``) or reads and listings (``unreadable``) of given
paths and below with an errno, so refusal handling is testable.
Everything it stands in for is also proven against the real xenstored
(tests/test_xenstore_real.py, tests/test_publish_real.py).
"""

from __future__ import annotations

import errno
from typing import Callable, Dict, List, Optional

from xenguest_agent.xenstore import Transaction, XenStoreError


class MemStore:
    def __init__(self) -> None:
        self.nodes: Dict[str, str] = {}
        self.requests: List[tuple] = []
        self.refuse: Dict[str, int] = {}
        self.unreadable: Dict[str, int] = {}

    # tree helpers
    def _parents(self, path: str) -> List[str]:
        parts = path.split("/")
        return ["/".join(parts[:i]) for i in range(1, len(parts))]

    @staticmethod
    def _check(rules: Dict[str, int], path: str) -> None:
        for prefix, code in rules.items():
            if path == prefix or path.startswith(prefix + "/"):
                raise XenStoreError(code, errno.errorcode[code], path)

    def read(self, path: str, tx_id: int = 0) -> Optional[str]:
        self.requests.append(("read", path))
        self._check(self.unreadable, path)
        return self.nodes.get(path)

    def write(self, path: str, value: str, tx_id: int = 0) -> None:
        self.requests.append(("write", path, value))
        self._check(self.refuse, path)
        for parent in self._parents(path):
            self.nodes.setdefault(parent, "")
        self.nodes[path] = value

    def rm(self, path: str, tx_id: int = 0) -> None:
        self.requests.append(("rm", path))
        self._check(self.refuse, path)
        for key in [k for k in self.nodes if k == path or k.startswith(path + "/")]:
            del self.nodes[key]

    def ls(self, path: str, tx_id: int = 0) -> Optional[List[str]]:
        self.requests.append(("ls", path))
        self._check(self.unreadable, path)
        if path not in self.nodes:
            return None
        depth = path.count("/") + 1
        return sorted({k.split("/")[depth] for k in self.nodes
                       if k.startswith(path + "/") and k.count("/") >= depth})

    def begin(self) -> Transaction:
        self.requests.append(("begin",))
        return Transaction(self, 1)  # type: ignore[arg-type]

    def _request(self, op: int, payload: bytes, tx_id: int = 0, **_: object) -> bytes:
        self.requests.append(("end", payload))
        return b"OK"

    def transact(self, work: Callable[[Transaction], object], attempts: int = 8) -> object:
        tx = self.begin()
        result = work(tx)
        tx.commit()
        return result

    def leaves(self, prefix: str = "") -> Dict[str, str]:
        """Leaf nodes (no children), optionally below a prefix."""
        keys = set(self.nodes)
        return {k: v for k, v in self.nodes.items()
                if not any(o.startswith(k + "/") for o in keys)
                and (not prefix or k == prefix or k.startswith(prefix + "/"))}

    def writes(self) -> List[str]:
        return [r[1] for r in self.requests if r[0] == "write"]

    def clear_log(self) -> None:
        self.requests.clear()
