"""The daemon wired as ``xenguest-agent run`` wires it on a live guest with static IP on
(cli.py ``_run``), but on a guest tree and with commands recorded instead of run: for
tests/test_lazy_features.py, which reads what it imported from ``-X importtime``.

Usage: ``python -X importtime staticip_daemon.py SPEC ROOT COMMANDS``.  Imports only what
``run`` imports, so its import record is the daemon's; stops on SIGTERM.
"""

from __future__ import annotations

import os
import sys

from xenguest_agent.agent import Agent
from xenguest_agent.backends.addresses import CapturedAddresses
from xenguest_agent.backends.linux import LinuxBackend
from xenguest_agent.config import Config
from xenguest_agent.daemon import Daemon
from xenguest_agent.host import DEFAULT_COMMAND_TIMEOUT, CommandResult, Host
from xenguest_agent.publisher import Publisher
from xenguest_agent.sdnotify import Notifier
from xenguest_agent.staticip.driver import StaticIpDriver
from xenguest_agent.xenstore import XenStore


class Recorder:
    """A runner that appends each argv to a file and succeeds."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, argv: object, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> CommandResult:
        words = tuple(argv)  # type: ignore[call-overload]
        with open(self.path, "a") as out:
            out.write(" ".join(words) + "\n")
        return CommandResult(words, 0, "", "")


def main(spec: str, root: str, commands: str) -> int:
    host = Host(root, Recorder(commands))
    config = Config(poll_interval=600, interval=600)
    agent = Agent(LinuxBackend(host, CapturedAddresses(host)), config)
    store = XenStore(spec)
    static_ip = StaticIpDriver(host, agent.resolved_interfaces, enabled=True)
    daemon = Daemon(agent, store, Publisher(store), config,
                    notifier=Notifier.from_environ(os.environ), static_ip=static_ip)
    store.connect()
    try:
        daemon.install_signal_handlers()
        return daemon.run()
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
