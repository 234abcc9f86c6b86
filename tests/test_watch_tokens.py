"""One token per watch, on every OS.

FreeBSD's /dev/xen/xenstore keeps a list of (token, watch) per open file and refuses an XS_WATCH
whose token is already in it with EINVAL (freebsd/freebsd-src
sys/dev/xen/xenstore/xenstore_dev.c, ``xs_dev_write`` case XS_WATCH, ``xs_dev_find_watch``);
Linux's xenbus device and xenstored accept it. The daemon sets all its watches on one connection
(``XenStore.watch`` uses one dedicated watch connection), so any token used twice breaks FreeBSD.
The end-to-end proof through the device model is tests/test_freebsd_device_agent.py; this test
catches a reuse without xenstored.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from support.memstore import MemStore
from xenguest_agent import schema
from xenguest_agent.agent import Agent
from xenguest_agent.backends.freebsd import FreeBSDBackend
from xenguest_agent.config import Config
from xenguest_agent.control import SHUTDOWN_KEY, Control
from xenguest_agent.daemon import Daemon
from xenguest_agent.fixture import FixtureRunner
from xenguest_agent.hooks import Hooks
from xenguest_agent.host import CommandResult, Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStoreError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "freebsd" / "14-one-nic"


class FreeBSDWatchStore(MemStore):
    """MemStore plus watches with the FreeBSD device's per-open-file token rule."""

    def __init__(self) -> None:
        super().__init__()
        self.watches: Dict[str, str] = {}  # token -> path
        self.refused: List[Tuple[str, str]] = []
        self.callback: Optional[Callable[[str, str], None]] = None

    def on_event(self, callback: Callable[[str, str], None]) -> None:
        self.callback = callback

    def on_lost(self, callback: Callable[[], None]) -> None:
        pass  # this store's connection never ends

    def watch(self, path: str, token: str) -> None:
        if token in self.watches:  # xs_dev_find_watch(u, token) != NULL -> EINVAL
            self.refused.append((path, token))
            raise XenStoreError(errno.EINVAL, "EINVAL", path)
        self.watches[token] = path

    @property
    def watching(self) -> bool:
        return True


def no_command(argv, timeout: float = 5.0) -> CommandResult:
    return CommandResult(tuple(argv), 127, "", "not run in this test")


def test_every_watch_of_a_session_has_its_own_token(tmp_path: Path) -> None:
    store = FreeBSDWatchStore()
    store.write("domid", "5")
    store.write("unique-domain-id", "00000000-0000-0000-0000-000000000005")
    backend = FreeBSDBackend(Host(str(FIXTURE), FixtureRunner(str(FIXTURE))))
    config = Config()
    hooks = Hooks(str(tmp_path / "hooks"), config.control.hook_timeout)
    control = Control(config.control, {}, hooks, backend.kernel_features,
                      backend.unadvertised_features, lambda: 0.0)
    daemon = Daemon(Agent(backend, config), store, Publisher(store), config,  # type: ignore[arg-type]
                    control=control, hooks=hooks)
    assert daemon.run(once=True) == 0
    assert store.refused == []
    # control/shutdown, the two domain keys, and one watch per owned key and tree (what the
    # agent keeps true: another writer's change is seen and repaired, publisher.py)
    owned = list(schema.OWNED_TREES + schema.OWNED_KEYS)
    assert sorted(store.watches.values()) == sorted(["domid", "unique-domain-id", SHUTDOWN_KEY,
                                                     *owned])
    assert store.leaves("data").get("data/updated") == "1"  # the first publish completed
