"""The fault campaign: ``./dev faults [--count N] [--seed S] [--tier dom0|guest|both] [--short]``.

Faults are drawn with a seeded random.Random from classes.FAULTS, in shuffled cycles over every
(tier, class) pair, so every class is injected on every tier it applies to even in a short run.
After each fault (and its lift) the campaign waits, polling XenStore, until the tree is complete
and equal to the expected state (bed.Bed.problems) and the class's own checks hold; the time this
took is the recovery time, compared with the class's stated time.  The guard (stated time + GUARD
seconds) only bounds a fault that never recovers: its wrong or missing keys at the guard are the
"keys lost", and the bed is then repaired (SIGHUP, else a fresh agent) so one failure does not
cascade into the next faults.

At the end: CPU seconds over an idle window, open fds and VmRSS (/proc/PID/...), and a markdown
table per class and tier, written to docs/reliability.md by a full run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from support.xenstored import build_shim, check_requirements

from . import hookfaults  # noqa: F401  (registers the hook classes)
from .bed import Bed, proc_figures, trusted_base
from .classes import FAULTS, Expect, FaultClass

GUARD = 4.0          # seconds past a class's stated time before its keys count as lost
SETTLE_GUARD = 30.0  # first publish of a fresh agent, and the repair after a failed fault
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Record:
    tier: str
    name: str
    note: str = ""
    stated: float = 0.0
    seconds: Optional[float] = None
    crash: Optional[str] = None
    untrusted: bool = False
    lost: List[str] = field(default_factory=list)
    other: List[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.crash or self.untrusted or self.lost or self.other)


@dataclass
class Results:
    seed: int
    count: int
    tiers: Tuple[str, ...]
    records: List[Record] = field(default_factory=list)
    figures: Dict[str, Dict[str, object]] = field(default_factory=dict)
    wall: float = 0.0

    def failures(self) -> List[str]:
        """One line per failing (class, tier): what failed, how often, the first problems."""
        out = []
        for (name, tier), group in sorted(grouped(self.records).items()):
            bad = [r for r in group if r.failed]
            if not bad:
                continue
            kinds = []
            for label, n in (("crashes", sum(1 for r in bad if r.crash)),
                             ("untrusted executions", sum(1 for r in bad if r.untrusted)),
                             ("faults with keys lost", sum(1 for r in bad if r.lost)),
                             ("other check failures", sum(1 for r in bad if r.other))):
                if n:
                    kinds.append(f"{n} {label}")
            first = bad[0]
            detail = first.crash or "; ".join((first.lost + first.other)[:3]) or "canary created"
            out.append(f"{name} [{tier}]: {len(bad)}/{len(group)} failed ({', '.join(kinds)}); "
                       f"e.g. {first.note or '-'}: {detail}")
        return out


def grouped(records: Sequence[Record]) -> Dict[Tuple[str, str], List[Record]]:
    groups: Dict[Tuple[str, str], List[Record]] = {}
    for r in records:
        groups.setdefault((r.name, r.tier), []).append(r)
    return groups


def schedule(rng: random.Random, tiers: Sequence[str], count: int,
             only: Sequence[str] = ()) -> List[Tuple[str, FaultClass]]:
    pairs = [(t, c) for c in FAULTS.values() for t in c.tiers
             if t in tiers and (not only or c.name in only)]
    if not pairs:
        raise ValueError(f"no fault class matches {list(only)} on {list(tiers)}")
    order: List[Tuple[str, FaultClass]] = []
    while len(order) < count:
        cycle = list(pairs)
        rng.shuffle(cycle)
        order.extend(cycle)
    return order[:count]


class Campaign:
    def __init__(self, tiers: Sequence[str], say: "logging.Logger") -> None:
        self.tiers = tuple(tiers)
        self.say = say
        self.base = trusted_base()
        self.beds: Dict[str, Bed] = {}
        self.samples: Dict[str, List[Dict[str, float]]] = {}

    def __enter__(self) -> "Campaign":
        try:
            check_requirements()
            shim = build_shim()
            for tier in self.tiers:
                self.beds[tier] = Bed(tier, self.base, shim)
                self.beds[tier].start()
                self.fresh_agent(self.beds[tier])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for bed in self.beds.values():
            bed.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def fresh_agent(self, bed: Bed) -> None:
        bed.stop_agent()
        bed.start_agent()
        seconds, problems = bed.wait_until(lambda: self.tree_problems(bed), SETTLE_GUARD)
        if seconds is None:
            raise RuntimeError(f"[{bed.tier}] a fresh agent did not publish the expected tree "
                               f"within {SETTLE_GUARD:g} s: {problems[:5]}\n{bed.log_tail()}")
        self.samples.setdefault(bed.tier, []).append({**proc_figures(bed.pid), "pid": bed.pid})

    @staticmethod
    def tree_problems(bed: Bed) -> List[str]:
        if not bed.alive():
            return [f"the daemon is not running (exit {bed.proc.returncode if bed.proc else '-'})"]
        return bed.problems()

    def repair(self, bed: Bed) -> None:
        """After a failed fault: a full republish (SIGHUP); if that does not do, a fresh agent."""
        if bed.alive():
            os.kill(bed.pid, signal.SIGHUP)
            if bed.wait_until(lambda: self.tree_problems(bed), 5.0)[0] is not None:
                return
        self.say.info("[%s] repair: starting a fresh agent", bed.tier)
        self.fresh_agent(bed)

    def one(self, tier: str, fc: FaultClass, rng: random.Random) -> Record:
        bed = self.beds[tier]
        pid = bed.pid
        record = Record(tier, fc.name)
        try:
            expect = fc.inject(bed, rng)
        except Exception:  # the harness's own failure: reported, never hidden
            expect = Expect()
            record.other.append("harness: " + traceback.format_exc(limit=3).replace("\n", " | "))
        record.note, record.stated = expect.note, expect.stated
        if not expect.restarted and bed.proc is not None and bed.pid != pid:
            record.other.append(f"pid changed {pid} -> {bed.pid}")
        bed.bump_memory()  # the daemon must still publish: a new figure after every fault

        def ok() -> List[str]:
            return self.tree_problems(bed) + (expect.check() if expect.check else [])
        offset = time.monotonic() - expect.since if expect.since is not None else 0.0
        seconds, _ = bed.wait_until(ok, expect.stated + GUARD)
        record.seconds = None if seconds is None else seconds + offset
        if expect.final is not None:
            wait = 3.0 if record.seconds is not None else 0.0
            record.other += bed.wait_until(expect.final, wait)[1]
        if expect.crash or not bed.alive():
            record.crash = expect.crash or f"exited {bed.proc.returncode if bed.proc else '?'}"
        elif record.seconds is None:
            record.lost = bed.problems()
            if expect.check is not None:
                record.other += expect.check()
        if bed.canary.exists():
            record.untrusted = True
            bed.canary.unlink()
        if expect.cleanup is not None:
            expect.cleanup()
        if record.crash:
            self.say.info("[%s] %s: %s\n%s", tier, fc.name, record.crash, bed.log_tail())
            self.fresh_agent(bed)
        elif record.failed:
            self.repair(bed)
        if bed.alive():
            self.samples[tier].append({**proc_figures(bed.pid), "pid": bed.pid})
        return record

    def idle(self, seconds: float) -> Dict[str, Dict[str, object]]:
        """CPU seconds each agent used over ``seconds`` of nothing happening; fds and RSS of the
        first agent after its first publish, at the end, and the most seen after any fault."""
        start = {t: proc_figures(b.pid) for t, b in self.beds.items() if b.alive()}
        time.sleep(seconds)
        figures: Dict[str, Dict[str, object]] = {}
        for tier, bed in self.beds.items():
            samples = self.samples[tier]
            end = proc_figures(bed.pid) if bed.alive() else None
            same = [s for s in samples if s["pid"] == bed.pid]
            figures[tier] = {
                "idle_seconds": seconds,
                "idle_cpu": None if end is None or tier not in start
                else round(float(end["cpu"]) - float(start[tier]["cpu"]), 3),
                "fds_first": samples[0]["fds"], "rss_first_kib": samples[0]["rss_kib"],
                "fds_this_start": same[0]["fds"] if same else None,
                "rss_this_start_kib": same[0]["rss_kib"] if same else None,
                "fds_end": end["fds"] if end else None,
                "rss_end_kib": end["rss_kib"] if end else None,
                "fds_max": max(s["fds"] for s in samples),
                "rss_max_kib": max(s["rss_kib"] for s in samples),
                "agents_started": len({s["pid"] for s in samples}),
            }
        return figures


def run(count: int, seed: int, tiers: Sequence[str], idle: float,
        say: Optional[logging.Logger] = None, only: Sequence[str] = ()) -> Results:
    say = say or logging.getLogger("faults")
    logging.getLogger("xenguest_agent").disabled = True  # `show` runs in-process: keep it quiet
    rng = random.Random(seed)
    results = Results(seed, count, tuple(tiers))
    started = time.monotonic()
    with Campaign(tiers, say) as campaign:
        for n, (tier, fc) in enumerate(schedule(rng, tiers, count, only), 1):
            # each fault its own stream: what a fault draws never depends on how long another ran
            record = campaign.one(tier, fc, random.Random(f"{seed}:{n}"))
            results.records.append(record)
            state = "FAIL" if record.failed else "ok"
            say.info("%4d/%d %-6s %-19s %-4s %s %s", n, count, tier, fc.name, state,
                     "-" if record.seconds is None else f"{record.seconds:.2f}s", record.note[:40])
            if record.failed:
                say.info("      %s", (record.crash or "; ".join(record.lost + record.other)
                                      or "canary created")[:400])
        results.figures = campaign.idle(idle)
    results.wall = time.monotonic() - started
    return results


# --- the report --------------------------------------------------------------------------------

def table(results: Results) -> str:
    rows = ["| class | tier | injected | recovered | within stated time | stated (s) | "
            "median (s) | max (s) | crashes | untrusted executions | keys lost | other failures |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, tier), group in sorted(grouped(results.records).items()):
        times = [r.seconds for r in group if r.seconds is not None]
        stated = max(r.stated for r in group)
        rows.append("| {} | {} | {} | {} | {} | {:g} | {} | {} | {} | {} | {} | {} |".format(
            name, tier, len(group), len(times),
            sum(1 for r in group if r.seconds is not None and r.seconds <= r.stated), stated,
            f"{statistics.median(times):.2f}" if times else "-",
            f"{max(times):.2f}" if times else "-",
            sum(1 for r in group if r.crash), sum(1 for r in group if r.untrusted),
            sum(len(r.lost) for r in group), sum(1 for r in group if r.other)))
    total = results.records
    rows.append("| **all** | | {} | {} | {} | | | | {} | {} | {} | {} |".format(
        len(total), sum(1 for r in total if r.seconds is not None),
        sum(1 for r in total if r.seconds is not None and r.seconds <= r.stated),
        sum(1 for r in total if r.crash), sum(1 for r in total if r.untrusted),
        sum(len(r.lost) for r in total), sum(1 for r in total if r.other)))
    return "\n".join(rows)


def resources(results: Results) -> str:
    rows = ["| tier | idle CPU (s over idle window) "
            "| fds first / at this agent's start / end / max "
            "| VmRSS KiB first / at this agent's start / end / max | agents started |",
            "|---|---:|---|---|---:|"]
    for tier, f in results.figures.items():
        rows.append(f"| {tier} | {f['idle_cpu']} over {f['idle_seconds']:g} s | "
                    f"{f['fds_first']} / {f['fds_this_start']} / {f['fds_end']} / {f['fds_max']} | "
                    f"{f['rss_first_kib']} / {f['rss_this_start_kib']} / {f['rss_end_kib']} / "
                    f"{f['rss_max_kib']} | {f['agents_started']} |")
    return "\n".join(rows)


def machine() -> str:
    load = os.getloadavg()
    xs = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "xen-utils-4.17"],
                        capture_output=True, text=True, check=False).stdout or "?"
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the "
            f"end, Linux {platform.release()}, Python {platform.python_version()}, Debian "
            f"xen-utils-4.17 {xs} (xenstored)")


def commit() -> str:
    head = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return head or "unknown"


def report(results: Results, command: str) -> str:
    failures = results.failures()
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit {commit()}: "
        f"`{command}`, seed "
        f"{results.seed}, {results.count} faults on {', '.join(results.tiers)}, "
        f"{results.wall / 60:.1f} min wall. Machine: {machine()}.",
        "", table(results), "", resources(results), "",
        "Failing classes:" if failures else "No failures.", ""]
    lines += [f"- {line}" for line in failures]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, text: str) -> None:
    """Replace the section between the result markers of docs/reliability.md."""
    begin, end = "<!-- campaign result: begin -->", "<!-- campaign result: end -->"
    doc = path.read_text()
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev faults", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, help="faults to inject (default 1000; short: 60)")
    parser.add_argument("--seed", type=int, help="random seed (default: from the clock; printed)")
    parser.add_argument("--tier", choices=("dom0", "guest", "both"), default="both")
    parser.add_argument("--short", action="store_true", help="60 faults, a 3 s idle window, "
                        "no docs update (what tests/test_faults_short.py runs)")
    parser.add_argument("--idle", type=float, help="idle window in seconds (default 60; short 3)")
    parser.add_argument("--only", default="", metavar="CLASS,...",
                        help="inject only these classes (for debugging; no docs update)")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    args = parser.parse_args(argv)
    count = args.count or (60 if args.short else 1000)
    seed = args.seed if args.seed is not None else int(time.time())
    idle = args.idle if args.idle is not None else (3.0 if args.short else 60.0)
    tiers = ("dom0", "guest") if args.tier == "both" else (args.tier,)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    command = " ".join(["./dev faults", *(argv if argv is not None else sys.argv[1:])])
    if "--seed" not in command:
        command += f" --seed {seed}"
    print(f"fault campaign: {count} faults, seed {seed}, tiers {', '.join(tiers)}", flush=True)
    only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(only) - set(FAULTS))
    if unknown:
        parser.error(f"unknown classes {unknown}; known: {', '.join(sorted(FAULTS))}")
    results = run(count, seed, tiers, idle, only=only)
    text = report(results, command)
    print("\n" + text)
    if not args.short and not args.no_doc and not only:
        write_doc(REPO / "docs" / "reliability.md", text)
        print("written to docs/reliability.md")
    return 1 if results.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
