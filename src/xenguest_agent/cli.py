"""Command-line entry point; the one place that reads the real OS and builds objects.

``xenguest-agent show`` needs no Xen: it prints what would be published.
``xenguest-agent run`` is the daemon.  Exit codes follow sysexits(3) (``os.EX_*``): 69
(EX_UNAVAILABLE) when XenStore cannot be reached, 78 (EX_CONFIG) for a bad
configuration, 70 (EX_SOFTWARE) for an unsupported OS; ``show`` into a closed pipe
exits 141, as a command stopped by SIGPIPE.
"""

from __future__ import annotations

import os
import sys

from xenguest_agent import __version__, schema
from xenguest_agent import log as logs
from xenguest_agent.agent import UPDATED_VALUE, Agent
from xenguest_agent.backends import UnsupportedOS, select_backend
from xenguest_agent.backends.base import Backend
from xenguest_agent.cliargs import OS_CHOICES, parse_run
from xenguest_agent.config import (
    FREEBSD_CONFIG_PATH,
    FREEBSD_HOOKS_DIR,
    LINUX_CONFIG_PATH,
    LINUX_HOOKS_DIR,
    LOG_LEVELS,
    Config,
    ConfigError,
    load_config,
)
from xenguest_agent.host import Host, SubprocessRunner
from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace
    from typing import Optional, Sequence, Union

    #: argparse's namespace, or cliargs' for the daemon's usual command line (same attributes)
    Args = Union[argparse.Namespace, SimpleNamespace]

log = get_logger(__name__)

EX_OK = os.EX_OK
EX_SOFTWARE = os.EX_SOFTWARE
EX_UNAVAILABLE = os.EX_UNAVAILABLE
EX_CONFIG = os.EX_CONFIG
#: what a shell reports for a command stopped by SIGPIPE (128 + 13): `show | head` exits so
EX_BROKEN_PIPE = 128 + 13


def _parser() -> argparse.ArgumentParser:
    import argparse  # not for the daemon's usual command line (cliargs.py)

    parser = argparse.ArgumentParser(
        prog="xenguest-agent",
        description="Xen guest agent: publishes guest facts to XenStore for XenServer/XCP-ng.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--root", default="/", metavar="DIR",
                         help="read /proc, /sys, /etc... under DIR (a captured fixture tree)")
        sub.add_argument("--config", metavar="FILE",
                         help=f"YAML config (default {LINUX_CONFIG_PATH}; FreeBSD {FREEBSD_CONFIG_PATH})")
        sub.add_argument("--os", choices=OS_CHOICES, default="auto",
                         help="backend to use (default: the running OS)")
        sub.add_argument("--log-level", choices=LOG_LEVELS, help="override the configured log level")

    show = commands.add_parser("show", help="print the keys and values that would be published")
    common(show)
    show.add_argument("--format", choices=("text", "json"), default="text")

    run = commands.add_parser("run", help="run the agent (publish to XenStore)")
    common(run)
    run.add_argument("--xenstore", metavar="SPEC",
                     help="device path (Linux /dev/xen/xenbus, FreeBSD /dev/xen/xenstore) "
                          "or unix:/path/to/xenstored/socket")
    run.add_argument("--once", action="store_true", help="publish one full round and exit")

    status = commands.add_parser(
        "status", help="what XenCenter and Xen Orchestra show for this guest, and why "
                       "(exit 1 when something xapi needs is missing)")
    common(status)
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.add_argument("--xenstore", metavar="SPEC",
                        help="device path or unix:/path/to/xenstored/socket (as for run)")
    return parser


def _os_name(choice: str) -> str:
    return os.uname().sysname.lower() if choice == "auto" else choice


def _config_path(args: Args, os_name: str) -> str:
    return args.config or (FREEBSD_CONFIG_PATH if os_name == "freebsd" else LINUX_CONFIG_PATH)


def _backend(args: Args, os_name: str) -> Backend:
    host = Host(args.root)
    if host.is_live:
        return select_backend(os_name, host)
    # a captured tree answers commands from its _commands/; Linux trees capture
    # `ip -json address` as a file; FreeBSD trees capture `ifconfig -a`, which the FreeBSD
    # backend reads addresses from when given no address source.  Only captured trees
    # need these modules: the daemon does not import them.
    from xenguest_agent.backends.addresses import CapturedAddresses
    from xenguest_agent.fixture import FixtureRunner
    host = Host(args.root, FixtureRunner(args.root))
    return select_backend(os_name, host, None if os_name == "freebsd" else CapturedAddresses(host))


def _show(args: Args, agent: Agent, xenstore: str) -> int:
    values = agent.render(agent.collect())
    values[schema.UPDATED_KEY] = UPDATED_VALUE
    ordered = dict(sorted(values.items()))
    try:
        if args.format == "json":
            import json  # only `show --format json` needs it
            json.dump(ordered, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            width = max((len(k) for k in ordered), default=0)
            for path, value in ordered.items():
                sys.stdout.write(f"{path:<{width}} = {value}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader left (`show | head`): stop quietly, like a tool SIGPIPE stops.  stdout now
        # points at /dev/null so the interpreter's last flush cannot fail again (Python's
        # signal documentation, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_BROKEN_PIPE
    if args.root == "/" and not xenstore.startswith("unix:") and not os.path.exists(xenstore):
        sys.stderr.write(
            f"note: no XenStore device at {xenstore}: this machine is not a Xen guest (or the "
            "xenbus device is missing), so `xenguest-agent run` cannot publish these keys here.\n")
    return EX_OK


def _run(args: Args, agent: Agent, config: Config, spec: str,
         backend: Backend) -> int:
    import time

    from xenguest_agent.control import Control
    from xenguest_agent.daemon import Daemon
    from xenguest_agent.filewatch import FileWatch
    from xenguest_agent.hooks import Hooks
    from xenguest_agent.publisher import Publisher
    from xenguest_agent.sdnotify import Notifier
    from xenguest_agent.xenstore import XenStore, XenStoreError

    try:
        store = XenStore(spec)
    except ValueError as exc:
        sys.stderr.write(f"xenguest-agent: --xenstore: {exc}\n")
        return EX_CONFIG
    # An absolute, per-OS hook directory, never one derived from --config (item 5); on a
    # captured tree, the tree's own (the machine's hooks are not the tree's).
    default_hooks = Host(args.root).path(FREEBSD_HOOKS_DIR if backend.name == "freebsd"
                                         else LINUX_HOOKS_DIR)
    hooks = Hooks(config.control.hooks_dir or default_hooks, config.control.hook_timeout)
    # On a captured tree (--root) the OS's own power commands are never used: a
    # test or a demo must not power off the machine it runs on.  Only commands
    # named in the configuration run there.
    defaults = backend.power_commands() if args.root == "/" else {}
    commands = {**defaults, **dict(config.control.commands)}
    # the kernel's flags survive a restart of the agent in /run (not on a captured tree)
    features_state = None
    if args.root == "/":
        features_state = ("/var/run" if backend.name == "freebsd" else "/run") + \
            "/xenguest-agent/kernel-features"
    control = Control(config.control, commands, hooks, backend.kernel_features,
                      backend.unadvertised_features, time.monotonic,
                      state_path=features_state)
    if args.root == "/" and config.control.pm_freeze_timeout and not args.once:
        backend.tune_suspend(config.control.pm_freeze_timeout)
    net_events = None
    if args.root == "/":  # a captured tree has no live kernel to listen to
        from xenguest_agent.netevents import NetworkEvents
        net_events = NetworkEvents(os_name=backend.name)
    shutdown_kind = None
    if args.root == "/":  # only a live system can be shutting down
        from xenguest_agent.shutdownstate import system_shutdown_kind
        runner = SubprocessRunner()
        shutdown_kind = lambda: system_shutdown_kind(runner)  # noqa: E731
    hotplug = None
    if args.root == "/" and backend.name == "linux" and not args.once:
        from xenguest_agent.hotplug import HotplugEvents, HotplugThread
        hotplug = HotplugThread(HotplugEvents.from_settings(
            Host(args.root), config.hotplug.online_cpus, config.hotplug.online_memory))
    state = None
    if args.root == "/" and not args.once:  # for `xenguest-agent status`; never a captured tree's
        from xenguest_agent.statefile import StateFile, state_path, wall_clock
        state = StateFile(state_path(backend.name))
        try:
            state.update(pid=os.getpid(), version=__version__, started=wall_clock(),
                         connected=False, xenstore=spec, refused=[])
        except OSError as exc:
            log.warning("cannot write the state file %s: %s", state.path, exc)
            state = None
    static_ip = None
    if args.root == "/" and not args.once:  # it reconfigures the live system's network
        from xenguest_agent.staticip.driver import StaticIpDriver
        static_ip = StaticIpDriver(Host(args.root), agent.resolved_interfaces,
                                   enabled=config.network.static_ip)
    daemon = Daemon(agent, store, Publisher(store), config, control=control, hooks=hooks,
                    net_events=net_events, file_watch=FileWatch(Host(args.root), backend.name),
                    notifier=Notifier.from_environ(os.environ), hotplug=hotplug, state=state,
                    static_ip=static_ip, shutdown_kind=shutdown_kind)
    log.info("xenguest-agent %s starting: %s backend, XenStore %s", __version__, backend.name, spec)
    try:
        store.connect()
        if not args.once:
            daemon.install_signal_handlers()
        return daemon.run(once=args.once)
    except XenStoreError as exc:
        sys.stderr.write(f"xenguest-agent: XenStore unavailable ({spec}): {exc}\n")
        return EX_UNAVAILABLE
    finally:
        store.close()


def _status(args: Args, spec: str, os_name: str) -> int:
    from xenguest_agent import guestprobe, status
    from xenguest_agent.statefile import StateFile, state_path
    from xenguest_agent.xenstore import XenStore, XenStoreUnavailable

    host = Host(args.root)
    try:
        store = XenStore(spec)
    except ValueError as exc:
        sys.stderr.write(f"xenguest-agent: --xenstore: {exc}\n")
        return EX_CONFIG
    try:
        store.connect()
        home = status.read_home(store)
        detected = status.pv_drivers_detected(store, home.tree)
    except XenStoreUnavailable as exc:
        sys.stderr.write(f"xenguest-agent: XenStore unavailable ({spec}): {exc}\n")
        return EX_UNAVAILABLE
    finally:
        store.close()
    path = host.path(state_path(os_name))
    state = StateFile.read(path)
    pid = state.get("pid") if state else None
    daemon = status.Daemon(path, state, isinstance(pid, int) and guestprobe.pid_alive(host, pid))
    report = status.diagnose(home.tree, guestprobe.domain_type(host, os_name), detected,
                             guestprobe.other_agents(host), daemon, tuple(home.unreadable),
                             home.truncated)
    import json

    text = (json.dumps(status.to_json(report), indent=2) + "\n" if args.format == "json"
            else status.to_text(report))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `status | head`: as in _show
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_BROKEN_PIPE
    return report.exit_status


def main(argv: Optional[Sequence[str]] = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = parse_run(words) or _parser().parse_args(words)
    os_name = _os_name(args.os)
    config_path = _config_path(args, os_name)
    try:
        config = load_config(config_path, required=bool(args.config))
    except ConfigError as exc:
        sys.stderr.write(f"xenguest-agent: bad configuration: {exc}\n")
        return EX_CONFIG
    with logs.to_stream(logs.LEVELS[args.log_level or config.log_level]):
        return _command(args, config, os_name)


def _command(args: Args, config: Config, os_name: str) -> int:
    try:
        backend = _backend(args, os_name)
    except UnsupportedOS as exc:
        sys.stderr.write(f"xenguest-agent: {exc}\n")
        return EX_SOFTWARE
    agent = Agent(backend, config)
    spec = getattr(args, "xenstore", None) or config.xenstore or backend.default_xenstore
    if args.command == "show":
        return _show(args, agent, spec)
    if args.command == "status":
        return _status(args, spec, backend.name)
    return _run(args, agent, config, spec, backend)
