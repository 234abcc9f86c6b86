"""Hook fault classes (issue 9 items 2, 3 and 5), registered in classes.FAULTS.

Every one asks for a reboot with no kernel answering, so the agent (mode ``auto``) runs the
pre-reboot hooks, acknowledges after the grace period and runs the configured reboot command once.
An untrusted hook, when executed, creates the bed's canary file: the campaign counts each canary
as an untrusted execution.  The trusted hook (bed.reset_hooks) records its runs, so a check that
"nothing ran" cannot pass merely because no hook ever runs.
"""

from __future__ import annotations

import os
import random
import time
from typing import List

from .bed import Bed, script
from .classes import BOTH, GRACE, Expect, acknowledged, counters, fault

HOOK_TIMEOUT = 1.5  # control.hook_timeout in the campaign's config (bed.py)


def reboot_request(bed: Bed, stated: float, note: str, trusted_runs: bool = True) -> Expect:
    actions, hooks = counters(bed)
    since = time.monotonic()  # the grace period runs from the request, whatever hooks do
    bed.request_shutdown("reboot")

    def final() -> List[str]:
        done = bed.marks_of("actions")[actions:]
        out = [] if done == ["reboot"] else [f"actions {done}, expected ['reboot']"]
        ran = len(bed.marks_of("hooks")) - hooks
        if trusted_runs and ran != 1:
            out.append(f"the trusted hook ran {ran} times, expected once")
        return out
    return Expect(stated=stated, check=lambda: acknowledged(bed), final=final, note=note,
                  cleanup=bed.reset_hooks, since=since)


@fault("hook-slow", BOTH, "two pre-reboot shell hooks each starting `sleep 8` (their timeout is "
       "1.5 s): publishing goes on while they run, the grace period runs from the request, and "
       "each hook's whole process group dies at its timeout (issue 9 item 2)")
def hook_slow(bed: Bed, rng: random.Random) -> Expect:
    folder = bed.hooks / "pre-reboot"
    for n in (20, 21):
        script(folder / f"{n}-slow", f"echo slow >> {bed.marks}/slow\nsleep 8 &\n"
               f"echo $! >> {bed.marks}/slow-children\nwait\n")
    before, children = len(bed.marks_of("slow")), len(bed.marks_of("slow-children"))
    expect = reboot_request(bed, GRACE + 2.0, "2 x sleep 8")
    started, _ = bed.wait_until(
        lambda: [] if len(bed.marks_of("slow")) > before else ["no hook started"], 10.0)
    bed.bump_memory()
    # The two hooks hold a loop that runs them for 2 x 1.5 s: a fresh figure must land meanwhile.
    during, late = bed.wait_until(bed.problems, 2 * HOOK_TIMEOUT - 0.5)
    base_final = expect.final

    def final() -> List[str]:
        out = base_final() if base_final else []
        if started is None:
            out.append("the slow hook never started")
        elif during is None:
            out.append(f"nothing published while hooks ran: {late[:2]}")
        for pid in bed.marks_of("slow-children")[children:]:
            if alive(int(pid)):
                out.append(f"a hook's child (pid {pid}) outlived the hook's timeout")
        return out

    def cleanup() -> None:
        for pid in bed.marks_of("slow-children")[children:]:
            if alive(int(pid)):
                os.kill(int(pid), 9)
        bed.reset_hooks()
    expect.final, expect.cleanup = final, cleanup
    return expect


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@fault("hook-endless", BOTH, "a pre-reboot hook printing without end until its timeout "
       "(issue 9 item 3: output streamed and capped)")
def hook_endless(bed: Bed, rng: random.Random) -> Expect:
    line = "x" * 200
    script(bed.hooks / "pre-reboot" / "20-endless", f"while :; do echo {line}; done\n")
    return reboot_request(bed, GRACE + 2.0, "endless output")


def evil(bed: Bed) -> str:
    return f"touch {bed.canary}\n"


@fault("hook-untrusted-file", BOTH, "an untrusted pre-reboot hook that would create a canary: "
       "world-writable, foreign-owned, or a symlink into a world-writable directory "
       "(issue 9 item 5)")
def hook_untrusted_file(bed: Bed, rng: random.Random) -> Expect:
    kind = rng.choice(["world-writable-hook", "foreign-owner", "symlink"])
    folder = bed.hooks / "pre-reboot"
    target = script(bed.untrusted / "evil", evil(bed))
    if kind == "world-writable-hook":
        script(folder / "50-evil", evil(bed), mode=0o777)
    elif kind == "foreign-owner":
        os.chown(script(folder / "50-evil", evil(bed)), 65534, 65534)
    else:
        os.symlink(target, folder / "50-evil")
    return reboot_request(bed, GRACE + 2.0, kind)


@fault("hook-untrusted-place", BOTH, "a root-owned 0755 hook that would create a canary, in an "
       "untrusted place: a world-writable event or hooks directory, or swapped in for a checked "
       "hook (a symlink) while the hook before it runs (issue 9 item 5: the whole chain, checked "
       "on the descriptor that is executed)")
def hook_untrusted_place(bed: Bed, rng: random.Random) -> Expect:
    kind = rng.choice(["world-writable-dir", "world-writable-hooks-dir", "symlink-swap"])
    folder = bed.hooks / "pre-reboot"
    target = script(bed.untrusted / "evil", evil(bed))
    if kind == "symlink-swap":
        return symlink_swap(bed, folder, target)
    script(folder / "50-evil", evil(bed))
    os.chmod(folder if kind == "world-writable-dir" else bed.hooks, 0o777)
    # a fixed agent trusts nothing in that directory, the trusted hook included
    return reboot_request(bed, GRACE + 2.0, kind, trusted_runs=False)


def symlink_swap(bed: Bed, folder: "os.PathLike[str]", target: "os.PathLike[str]") -> Expect:
    """A checked hook replaced by a symlink into a world-writable directory while the hook
    before it runs: the check must be made on the descriptor that is executed."""
    from pathlib import Path
    folder = Path(folder)
    script(folder / "20-slow", f"echo slow >> {bed.marks}/slow\nsleep 0.8\n")
    script(folder / "30-victim", "exit 0\n")
    before = len(bed.marks_of("slow"))
    expect = reboot_request(bed, GRACE + 2.0, "symlink-swap")
    started, _ = bed.wait_until(
        lambda: [] if len(bed.marks_of("slow")) > before else ["20-slow not started"], 10.0)
    link = folder / ".30-victim.new"
    os.symlink(target, link)
    os.replace(link, folder / "30-victim")
    if started is None:
        expect.note += " (20-slow never started: swapped late)"
    return expect
