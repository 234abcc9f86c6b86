#!/usr/bin/env python3
"""Benchmark: what the agent costs, measured against Debian's real xenstored.

Prints a table (it asserts nothing): start-up to first full publish, RSS,
CPU and wall time of one collect+diff cycle, XenStore requests and CPU while
idle (from xenstored's own -T trace and the process's CPU counters).

    ./dev bench            full run (idle window 60 s)
    ./dev bench --quick    CI mode (idle window 10 s, fewer repetitions)

Run from the repository root; it uses the test bed in tests/support.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import psutil  # noqa: E402
from support.guestroot import GuestRoot  # noqa: E402
from support.xenstored import Xenstored, build_shim, check_requirements  # noqa: E402

from xenguest_agent.agent import Agent  # noqa: E402
from xenguest_agent.backends.addresses import CapturedAddresses  # noqa: E402
from xenguest_agent.backends.linux import LinuxBackend  # noqa: E402
from xenguest_agent.config import Config  # noqa: E402
from xenguest_agent.host import Host  # noqa: E402
from xenguest_agent.publisher import Publisher  # noqa: E402
from xenguest_agent.xenstore import XenStore  # noqa: E402

HOME = "/local/domain/0"


def wait_for_write(xs: Xenstored, path: str, since: int, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if xs.count("WRITE", since=since, prefix=path):
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"no WRITE of {path} within {timeout}s")


def start_agent(xs: Xenstored, root: Path, config: Path) -> "tuple[subprocess.Popen, float]":
    mark = xs.mark()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "xenguest_agent", "run", "--xenstore", xs.spec,
                             "--root", str(root), "--os", "linux", "--config", str(config),
                             "--log-level", "warning"], cwd=REPO)
    published = wait_for_write(xs, "data/updated", mark)
    return proc, published - started


def bench(quick: bool) -> None:
    check_requirements()
    shim = build_shim()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xga-bench-") as tmp:
        work = Path(tmp)
        guest = GuestRoot(work / "guest")
        config = work / "config.yaml"
        config.write_text("poll_interval: 1\n" if quick else "poll_interval: 5\n")
        with Xenstored(work / "xs", shim=shim) as xs:
            # start-up to first full publish (process spawn included), and RSS
            startups, rss = [], []
            for _ in range(3 if quick else 7):
                xs.restart()
                proc, seconds = start_agent(xs, guest.root, config)
                startups.append(seconds)
                time.sleep(0.2)
                rss.append(psutil.Process(proc.pid).memory_info().rss)
                proc.terminate()
                proc.wait(10)
            rows.append(("start-up to first full publish (median)", f"{statistics.median(startups) * 1000:.0f} ms",
                         "< 500 ms"))
            rows.append(("RSS after start-up (median)", f"{statistics.median(rss) / 2**20:.1f} MiB", "<= 20 MiB"))

            # idle: requests and CPU over a window with nothing changing
            xs.restart()
            proc, _ = start_agent(xs, guest.root, config)
            time.sleep(1.0)
            process = psutil.Process(proc.pid)
            cpu0 = sum(process.cpu_times()[:2])
            mark = xs.mark()
            window = 10.0 if quick else 60.0
            time.sleep(window)
            requests = xs.trace_requests()[mark:]
            cpu = sum(process.cpu_times()[:2]) - cpu0
            rss_idle = process.memory_info().rss
            proc.terminate()
            proc.wait(10)
            writes = sum(1 for r in requests if r.op in ("WRITE", "RM"))
            poll = 1.0 if quick else 5.0
            rows.append((f"XenStore writes per idle minute ({window:.0f} s window, poll {poll:g} s)",
                         f"{writes * 60 / window:.0f}", "0"))
            rows.append(("XenStore requests per idle hour (all ops, extrapolated)",
                         f"{len(requests) * 3600 / window:.0f}", "only memory changes"))
            rows.append(("CPU seconds per idle hour (extrapolated)", f"{cpu * 3600 / window:.1f} s",
                         "~0"))
            rows.append(("RSS after the idle window", f"{rss_idle / 2**20:.1f} MiB", "<= 20 MiB, no growth"))

            # one collect+diff cycle, in process, warm
            xs.restart()
            store = XenStore(xs.spec)
            store.connect()
            host = Host(str(guest.root))
            agent = Agent(LinuxBackend(host, CapturedAddresses(host)), Config())
            publisher = Publisher(store)
            agent.publish(store, publisher)
            walls, cpus = [], []
            for _ in range(100 if quick else 500):
                w0, c0 = time.perf_counter(), time.process_time()
                agent.publish(store, publisher)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
            store.close()
            rows.append(("collect+diff cycle, wall (median)", f"{statistics.median(walls) * 1000:.2f} ms", "<= 5 ms"))
            rows.append(("collect+diff cycle, CPU (median)", f"{statistics.median(cpus) * 1000:.2f} ms", "<= 5 ms"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>12}  target")
    print("-" * (width + 30))
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>12}  {target}")
    print(f"\nmachine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, mode {'quick' if quick else 'full'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short idle window (CI)")
    bench(parser.parse_args().quick)


if __name__ == "__main__":
    main()
