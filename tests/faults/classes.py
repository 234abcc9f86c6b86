"""The fault classes: one small function each, registered in FAULTS.

Each function injects its fault into a Bed and lifts it (unless the fault is permanent by nature,
like a migration), then returns an Expect: how long the agent may take to get the tree right again
(``stated``, counted from the lift), checks polled with the tree (``check``: a list of problems,
empty when met) and checks made once after recovery (``final``).  The campaign adds what every
fault gets: the daemon alive with the same pid (unless ``restarted``), the tree equal to ``show``
plus the invariants, no canary, and a fresh free-memory figure published (the daemon still works).

Every class named in issue 9 is here, including those today's agent fails: a class is never dropped
or weakened because it fails.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from support.toolstack import Dom0Client
from xenguest_agent import schema

from .bed import Bed

Problems = Callable[[], List[str]]
BOTH = ("dom0", "guest")
GUEST = ("guest",)
GRACE = 0.5  # control.grace in the campaign's config (bed.py)


@dataclass
class Expect:
    stated: float = 2.5  # a poll (1 s) and a memory publish (at most one a second) included
    restarted: bool = False
    check: Optional[Problems] = None
    final: Optional[Problems] = None
    crash: Optional[str] = None       # the fault itself found the daemon dead or wedged
    note: str = ""
    cleanup: Optional[Callable[[], None]] = None  # after the checks (e.g. hooks back to trusted)
    since: Optional[float] = None  # time.monotonic() recovery is measured from (default: the lift)


@dataclass(frozen=True)
class FaultClass:
    name: str
    tiers: Tuple[str, ...]
    inject: Callable[[Bed, random.Random], Expect]
    doc: str


FAULTS: Dict[str, FaultClass] = {}


def fault(name: str, tiers: Tuple[str, ...], doc: str) -> Callable[[Callable[[Bed, random.Random],
                                                                              Expect]], None]:
    def register(fn: Callable[[Bed, random.Random], Expect]) -> None:
        FAULTS[name] = FaultClass(name, tiers, fn, doc)
    return register


def random_addresses(rng: random.Random) -> List[str]:
    third = rng.randrange(1, 250)
    addresses = [f"10.{rng.randrange(1, 250)}.{third}.{n + 1}" for n in range(rng.randint(1, 5))]
    if rng.random() < 0.3:
        addresses.append(f"fd00::{rng.randrange(1, 0xffff):x}")  # canonical (RFC 5952) form
    return addresses


def change_facts(bed: Bed, rng: random.Random) -> None:
    bed.set_nic("eth0", 0, random_addresses(rng))


# --- signals and restarts ----------------------------------------------------------------------

@fault("sighup-storm", BOTH, "100-2,000 SIGHUPs as fast as kill(2) goes (issue 9 item 1)")
def sighup_storm(bed: Bed, rng: random.Random) -> Expect:
    count = rng.randint(100, 2000)
    for _ in range(count):
        os.kill(bed.pid, signal.SIGHUP)
    return Expect(stated=3.0, note=f"{count} signals")


@fault("sigterm-restart", BOTH, "SIGTERM (plain, after a SIGHUP storm, or while two slow hooks "
       "run), then a fresh agent; measured from the SIGTERM (issue 9 item 1: stopped within 2 s)")
def sigterm_restart(bed: Bed, rng: random.Random) -> Expect:
    kind = rng.choice(["plain", "after-sighup-storm", "during-hooks"])
    change_facts(bed, rng)
    if kind == "after-sighup-storm":
        for _ in range(rng.randint(500, 3000)):
            os.kill(bed.pid, signal.SIGHUP)
    elif kind == "during-hooks":
        before = len(bed.marks_of("slow"))
        for n in (20, 21):
            bed.script_hook("pre-reboot", f"{n}-slow", f"echo slow >> {bed.marks}/slow\nsleep 8\n")
        bed.request_shutdown("reboot")
        bed.wait_until(lambda: [] if len(bed.marks_of("slow")) > before else ["not started"], 10.0)
    since = time.monotonic()
    code = bed.stop_agent(timeout=10.0)
    stopped = time.monotonic() - since
    crash = None if code == 0 else ("ignored SIGTERM for 10 s" if code is None else f"exit {code}")
    if kind == "during-hooks":
        bed.write("control/shutdown", "")  # the toolstack's request is over: not for the next agent
        bed.reset_hooks()
    bed.start_agent()
    return Expect(stated=3.0, restarted=True, crash=crash, since=since,
                  note=f"{kind}, stopped in {stopped:.2f}s")


# --- xenstored ---------------------------------------------------------------------------------

def restart_xenstored(bed: Bed, kill: bool, down: float, during: Callable[[], None]) -> None:
    """Stop (SIGKILL or SIGTERM) and start xenstored: a fresh, empty tree.  On the guest tier the
    domain is then rebuilt and introduced again (xenstored knows no domain it was not told of),
    with the guest's ring quiesced meanwhile, as around a resume."""
    bridge = bed.guest.bridge if bed.guest is not None else None
    if bridge is not None:
        bridge.suspend()
    try:
        bed.xs.kill() if kill else bed.xs.stop()
        during()
        time.sleep(down)
        bed.xs.start()
        assert bed.client is not None
        bed.client.close()
        if bed.guest is not None:
            bed.guest.toolstack.client.close()
            bed.guest.toolstack.create()
    finally:
        if bridge is not None:
            bridge.resume()


@fault("xenstored-killed", BOTH, "xenstored SIGKILLed, down 0-1 s while the facts change, "
       "restarted with an empty tree (guest tier: the domain introduced again)")
def xenstored_killed(bed: Bed, rng: random.Random) -> Expect:
    restart_xenstored(bed, True, rng.uniform(0, 1.0), lambda: change_facts(bed, rng))
    return Expect(stated=4.0)


@fault("xenstored-restarted", BOTH, "xenstored stopped (SIGTERM) and started again: an empty "
       "tree (guest tier: the domain introduced again)")
def xenstored_restarted(bed: Bed, rng: random.Random) -> Expect:
    restart_xenstored(bed, False, 0.0, lambda: None)
    return Expect(stated=4.0)


@fault("xenstored-sigstop", BOTH, "xenstored SIGSTOPped 0.2-2 s while the guest's facts change")
def xenstored_sigstop(bed: Bed, rng: random.Random) -> Expect:
    pid = bed.xs.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        change_facts(bed, rng)
        time.sleep(rng.uniform(0.2, 2.0))
    finally:
        os.kill(pid, signal.SIGCONT)
    return Expect(stated=3.0)


# --- transactions, quotas, permissions ----------------------------------------------------------

@fault("eagain-conflict", BOTH, "another client rewrites data/updated and attr/PVAddons/Installed "
       "in transactions, in a loop, 0.5-1.5 s, while the facts change (EAGAIN on commit)")
def eagain_conflict(bed: Bed, rng: random.Random) -> Expect:
    other = Dom0Client(bed.xs.socket_path)
    end, rounds = time.monotonic() + rng.uniform(0.5, 1.5), 0
    try:
        while time.monotonic() < end:
            tx = other.transaction_start()
            for key in (schema.UPDATED_KEY, schema.NUDGE_KEY):
                other.write(f"{bed.home}/{key}", "1", tx)
            other.transaction_end(tx)
            rounds += 1
            if rounds % 20 == 0:
                change_facts(bed, rng)
    finally:
        other.close()
    return Expect(note=f"{rounds} transactions")


@fault("quota-flip", GUEST, "the toolstack lowers the node quota below the guest's use "
       "(xenstore-control quota set nodes), the facts change, then the quota is raised again")
def quota_flip(bed: Bed, rng: random.Random) -> Expect:
    bed.xs.control("quota", "set", "nodes", str(rng.randint(1, 30)))
    try:
        bed.set_nic("eth0", 0, [f"10.9.{rng.randrange(250)}.{n + 1}" for n in range(6)])
        time.sleep(rng.uniform(0.7, 1.5))
    finally:
        bed.xs.control("quota", "set", "nodes", "1000")
    return Expect()


@fault("perm-flip-owned", GUEST, "attr/, attr/vif/ or data/ made read-only (n0 r5) or "
       "unreadable (n0) to the guest for 0.7-1.5 s while the facts change, then given back "
       "(issue 9 items 7 and 10)")
def perm_flip_owned(bed: Bed, rng: random.Random) -> Expect:
    target = f"{bed.home}/{rng.choice(['attr', 'attr/vif', 'data'])}"
    domid = bed.home.rsplit("/", 1)[1]
    perms = rng.choice([("n0", f"r{domid}"), ("n0",)])
    bed.xs.chmod(target, *perms, recursive=True)
    try:
        change_facts(bed, rng)
        bed.set_file("proc/sys/kernel/hostname", f"host{rng.randrange(1000)}\n")
        time.sleep(rng.uniform(0.7, 1.5))  # longer than poll_interval: the agent tries
    finally:
        bed.xs.chmod(target, f"n{domid}", recursive=True)
    return Expect(note=f"{target} {' '.join(perms)}")


@fault("perm-flip-control", GUEST, "control/ read-only to the guest while a reboot request "
       "arrives (no kernel): the action runs at most once (issue 9 item 11)")
def perm_flip_control(bed: Bed, rng: random.Random) -> Expect:
    domid = bed.home.rsplit("/", 1)[1]
    actions = len(bed.marks_of("actions"))
    bed.xs.chmod(f"{bed.home}/control", "n0", f"r{domid}", recursive=True)
    try:
        bed.request_shutdown("reboot")
        time.sleep(GRACE + rng.uniform(0.8, 1.5))
    finally:
        bed.xs.chmod(f"{bed.home}/control", f"n{domid}", recursive=True)
        bed.write("control/shutdown", "")  # the toolstack gives up on the request

    def final() -> List[str]:
        ran = len(bed.marks_of("actions")) - actions
        return [] if ran <= 1 else [f"one reboot request carried out {ran} times"]
    return Expect(final=final)


# --- control/shutdown ----------------------------------------------------------------------------

def hostile_value(rng: random.Random) -> str:
    kind = rng.choice(["long", "binary", "control", "word"])
    if kind == "long":
        return rng.choice(["reboot", "poweroff", "x"]) * rng.randint(200, 500)
    if kind == "binary":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))).decode(
            "utf-8", "surrogateescape")
    if kind == "control":
        return rng.choice(["reboot\n", "poweroff\r\n", "\x1b[2Jhalt", "halt\t", "re\x7fboot",
                           "\x01\x02\x03"])
    return rng.choice(["shutdown", "POWEROFF", "Reboot", "reboot; touch /tmp/x", "$(reboot)",
                       "s4", "crash", "suspend-to-disk", "halt now", "poweroff "])


def counters(bed: Bed) -> Tuple[int, int]:
    return len(bed.marks_of("actions")), len(bed.marks_of("hooks"))


@fault("shutdown-hostile", BOTH, "a hostile control/shutdown value (long, binary, control "
       "characters, unknown words): refused, nothing run, not acknowledged")
def shutdown_hostile(bed: Bed, rng: random.Random) -> Expect:
    value = hostile_value(rng)
    actions, hooks = counters(bed)
    bed.request_shutdown(value)
    time.sleep(GRACE + rng.uniform(0.3, 0.8))
    still = bed.read("control/shutdown")
    bed.write("control/shutdown", "")

    def final() -> List[str]:
        a, h = counters(bed)
        out = [f"{value[:20]!r} ran {a - actions} actions"] if a != actions else []
        out += [f"{value[:20]!r} ran {h - hooks} hooks"] if h != hooks else []
        out += [f"{value[:20]!r} was acknowledged"] if still != value else []
        return out
    return Expect(final=final, note=repr(value[:24]))


def acknowledged(bed: Bed) -> List[str]:
    value = bed.read("control/shutdown")
    return [] if value in ("", None) else [f"control/shutdown still {value[:20]!r}"]


@fault("shutdown-kernel", BOTH, "a valid request answered by a Linux kernel stand-in "
       "(drivers/xen/manage.c): acknowledged by it, no agent action")
def shutdown_kernel(bed: Bed, rng: random.Random) -> Expect:
    request = rng.choice(["poweroff", "reboot", "halt", "suspend"])
    actions, _ = counters(bed)
    kernel = bed.kernel().start()
    try:
        bed.request_shutdown(request)
        _, problems = bed.wait_until(lambda: acknowledged(bed), 10.0)
        time.sleep(GRACE + 0.3)  # past the grace: the agent must still not act
    finally:
        kernel.stop()

    def final() -> List[str]:
        out = list(problems)
        out += [] if kernel.taken() == [request] else [f"kernel took {kernel.taken()}"]
        ran = len(bed.marks_of("actions")) - actions
        return out + ([f"the agent also acted ({ran})"] if ran else [])
    return Expect(final=final, note=request)


@fault("shutdown-no-kernel", BOTH, "a valid request nobody else answers: poweroff/reboot/halt "
       "acknowledged after the grace and carried out once; suspend left alone")
def shutdown_no_kernel(bed: Bed, rng: random.Random) -> Expect:
    request = rng.choice(["poweroff", "reboot", "halt", "suspend"])
    actions, hooks = counters(bed)
    since = time.monotonic()
    bed.request_shutdown(request)
    if request == "suspend":  # only a kernel can suspend: not acknowledged, nothing run
        time.sleep(GRACE + 0.5)
        value = bed.read("control/shutdown")
        bed.write("control/shutdown", "")

        def final_suspend() -> List[str]:
            out = [] if value == "suspend" else [f"suspend request became {value!r}"]
            ran = len(bed.marks_of("actions")) - actions
            return out + ([f"{ran} actions for suspend"] if ran else [])
        return Expect(final=final_suspend, note=request)

    def final() -> List[str]:
        h = len(bed.marks_of("hooks"))
        out = [] if bed.marks_of("actions")[actions:] == [request] else \
            [f"actions {bed.marks_of('actions')[actions:]}, expected [{request!r}]"]
        return out + ([] if h - hooks == 1 else [f"trusted hook ran {h - hooks} times"])
    return Expect(stated=GRACE + 2.0, check=lambda: acknowledged(bed), final=final, note=request,
                  since=since)


# --- other writers in the agent's keys ----------------------------------------------------------

@fault("owned-deleted", BOTH, "an owned key or subtree removed by another writer (issue 9 "
       "item 10: repaired within 1 s)")
def owned_deleted(bed: Bed, rng: random.Random) -> Expect:
    keys = sorted(k for k in bed.expected() if schema.owns(k))
    target = rng.choice(keys + ["attr/vif", "attr/PVAddons", "attr/vif/0"])
    assert bed.client is not None
    bed.client.rm(f"{bed.home}/{target}")
    return Expect(note=target)


@fault("owned-overwritten", BOTH, "an owned key overwritten by another writer with a wrong value")
def owned_overwritten(bed: Bed, rng: random.Random) -> Expect:
    target = rng.choice(sorted(k for k in bed.expected() if schema.owns(k)))
    bed.write(target, rng.choice(["garbage", "", "9" * 400, "Unknown", "-1"]))
    return Expect(note=target)


@fault("vif-garbage", BOTH, "garbage written under attr/vif (unknown VIFs, extra slots, odd names)")
def vif_garbage(bed: Bed, rng: random.Random) -> Expect:
    choices = ["attr/vif/0/junk", "attr/vif/77/ipv4/0", "attr/vif/0/ipv4/9", "attr/vif/x",
               "attr/vif/0/ipv6/15"]
    for key in rng.sample(choices, rng.randint(1, 3)):
        bed.write(key, rng.choice(["6.6.6.6", "garbage", ""]))
    return Expect()


# --- suspend, resume, migration (xenopsd's part: support/toolstack.py) ---------------------------

@fault("suspend-resume", GUEST, "save/restore in place: the ring quiesced, the domain "
       "re-introduced, watches re-fire, open transactions fail with EAGAIN")
def suspend_resume(bed: Bed, rng: random.Random) -> Expect:
    assert bed.guest is not None
    change_facts(bed, rng)
    bed.guest.toolstack.simulate_suspend_resume()
    return Expect()


@fault("migration", GUEST, "live migration: a fresh tree and a new unique-domain-id")
def migration(bed: Bed, rng: random.Random) -> Expect:
    assert bed.guest is not None
    bed.guest.toolstack.simulate_migration()
    return Expect(stated=3.0)


# --- the guest tree ------------------------------------------------------------------------------

@fault("guest-tree", BOTH, "addresses, a NIC hot-plugged or removed, host name, os-release, memory")
def guest_tree(bed: Bed, rng: random.Random) -> Expect:
    what = rng.choice(["addresses", "nic", "hostname", "os-release"])
    if what == "addresses":
        change_facts(bed, rng)
    elif what == "nic":
        if "eth1" in bed.nics:
            bed.remove_nic("eth1")
        else:
            bed.set_nic("eth1", 1, random_addresses(rng))
    elif what == "hostname":
        bed.set_file("proc/sys/kernel/hostname", f"guest{rng.randrange(10000)}\n")
    else:
        version = f"{rng.randint(10, 13)}.{rng.randint(0, 9)}"
        bed.set_file("etc/os-release", f'PRETTY_NAME="Debian GNU/Linux {version}"\n'
                     f'NAME="Debian GNU/Linux"\nVERSION_ID="{version}"\nID=debian\n')
    return Expect(note=what)


@fault("odd-input", BOTH, "a NIC whose VIF id has thousands of digits (issue 9 item 8) for a "
       "while; non-ASCII host name or os-release (sanitised); a non-UTF-8 host name for a while")
def odd_input(bed: Bed, rng: random.Random) -> Expect:
    what = rng.choice(["huge-vif", "non-ascii", "non-utf8"])
    if what == "huge-vif":
        bed.set_nic("eth9", int("9" * rng.randint(1000, 4000)), ["10.99.0.1"])
        time.sleep(rng.uniform(0.6, 1.2))
        bed.remove_nic("eth9")
    elif what == "non-ascii":
        if rng.random() < 0.5:
            bed.set_file("proc/sys/kernel/hostname", "gäst-ünïcode☃\n")
        else:
            bed.set_file("etc/os-release", 'PRETTY_NAME="Débian ☃ GNU/Linux 12"\nNAME="Débian"\n'
                         'VERSION_ID="12"\nID=debian\n')
    else:
        bed.set_file("proc/sys/kernel/hostname", b"g\xff\xfeuest\n")
        time.sleep(rng.uniform(0.6, 1.2))
        bed.set_file("proc/sys/kernel/hostname", "guest1\n")
    return Expect(note=what)
