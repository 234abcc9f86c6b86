"""One tier of the fault campaign: the real xenstored, a synthetic guest tree, the real agent CLI.

Two tiers (issue 9, "The fault campaign"):

* ``dom0``: the agent connects to xenstored's unix socket; relative paths resolve to
  /local/domain/0 and no permission or quota applies;
* ``guest``: the agent is domain 5 behind the guest-side ring (tests/support/guestbridge.py), built
  and introduced like xenopsd does (tests/support/toolstack.py): real permissions and quotas.

The agent is ``python -m xenguest_agent run`` in a subprocess against a writable GuestRoot.  The
expected state is what ``xenguest-agent show --format json`` computes for the current tree (run
in-process here, with the same --root, --os and --config), checked key by key through an
independent wire client (Dom0Client, not the agent's adapter), plus hand-checked invariants that
do not come from the agent's code at all (see ``invariants``).

Hooks run as root, so the campaign's configuration and hook directories live in a chain that is
root-owned and not group/other-writable up to / (``trusted_base``): a fixed agent must run them,
and only them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple, Union

from support.guestroot import GuestRoot
from support.toolstack import Dom0Client, GuestDomain, GuestKernel
from support.xenstored import Xenstored
from xenguest_agent import cli, schema
from xenguest_agent.config import ConfigError, parse_config

GUEST_DOMID = 5
#: The agent may use at most this much address space: an agent that keeps a hook's endless
#: output in memory fails here instead of taking the shared machine down with it.
AGENT_ADDRESS_SPACE = 1 << 30
#: Hooks the campaign uses (a reboot request is what triggers them: see classes.py).
HOOK_EVENTS = ("pre-reboot", "pre-shutdown")
STEP = 0.03


def trusted_base() -> Path:
    """A fresh directory whose whole chain up to / is root-owned and not writable by group or
    others (issue 9, item 5): /run/xenguest-agent-faults-<pid>.  Fails loudly otherwise."""
    base = Path(f"/run/xenguest-agent-faults-{os.getpid()}")
    base.mkdir(mode=0o755, exist_ok=True)
    os.chmod(base, 0o755)
    for part in [base, *base.parents]:
        info = os.stat(part)
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RuntimeError(f"{part} is not root-owned 0755-like: hooks there are untrusted "
                               "(run the campaign as root on a normal /run)")
    return base


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("#!/bin/sh\n" + body)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def hooks_dir_supported(hooks: Path) -> bool:
    """``control.hooks_dir`` is being added by another branch: write it only when the agent
    under test knows the key (an unknown key is a configuration error, exit 78).  Probed with the
    campaign's own (existing, trusted) directory, in case the key's check looks at it.  Without
    the key, hooks are found in <config dir>/hooks, which is the same directory."""
    try:
        parse_config(f"control:\n  hooks_dir: {hooks}\n", "<probe>")
    except ConfigError:
        return False
    return True


def proc_figures(pid: int) -> Dict[str, float]:
    """CPU seconds (utime+stime, /proc/PID/stat fields 14-15), open fds, VmRSS in KiB."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # fields 14, 15 counting from 1
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"cpu": cpu, "fds": fds, "rss_kib": rss, "state": fields[0] == "T"}


class Bed:
    """One tier: its xenstored, (guest) domain, guest tree, config, hooks and agent process."""

    def __init__(self, tier: str, base: Path, shim: Path) -> None:
        self.tier = tier
        self.dir = base / tier
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.xs = Xenstored(self.dir / "xenstored", shim=shim,
                            domains=(GUEST_DOMID,) if tier == "guest" else ())
        self.guest: Optional[GuestDomain] = None
        self.root = GuestRoot(self.dir / "root")
        #: name -> (VIF id, addresses): what the tree says, for the hand-checked invariant
        self.nics: Dict[str, Tuple[Optional[int], List[str]]] = {"eth0": (0, ["10.0.0.2"])}
        self.memory = 1523400
        self.etc = self.dir / "etc"
        self.hooks = self.etc / "hooks"
        self.marks = self.dir / "marks"
        self.canary = self.dir / "canary"
        self.untrusted = self.dir / "untrusted"  # world-writable: an unprivileged user's
        self.config = self.etc / "config.yaml"
        self.log = self.dir / "agent.log"
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.client: Optional[Dom0Client] = None
        self._expected: Optional[Dict[str, str]] = None

    # --- set-up ------------------------------------------------------------------------------

    @property
    def home(self) -> str:
        return f"/local/domain/{GUEST_DOMID if self.tier == 'guest' else 0}"

    @property
    def spec(self) -> str:
        return self.guest.spec if self.guest is not None else self.xs.spec

    def start(self) -> "Bed":
        self.xs.start()
        if self.tier == "guest":
            self.guest = GuestDomain(self.xs, GUEST_DOMID).start()
        self.client = Dom0Client(self.xs.socket_path)
        for d in (self.etc, self.hooks, self.marks):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        self.untrusted.mkdir(exist_ok=True)
        os.chmod(self.untrusted, 0o777)
        commands = {r: script(self.etc / f"fake-{r}", f"echo {r} >> {self.marks}/actions\n")
                    for r in ("poweroff", "reboot", "halt")}
        self.reset_hooks()
        # The smallest intervals the configuration allows (config.py bounds them to >= 1 s).
        lines = ["poll_interval: 1", "log_level: info",
                 "memory:", "  min_interval: 1", "  threshold_kib: 0", "  threshold_percent: 0",
                 "control:", "  mode: auto", "  grace: 0.5", "  hook_timeout: 1.5"]
        if hooks_dir_supported(self.hooks):
            lines.append(f"  hooks_dir: {self.hooks}")
        lines.append("  commands:")
        lines += [f"    {r}: [{p}]" for r, p in commands.items()]
        self.config.write_text("\n".join(lines) + "\n")
        os.chmod(self.config, 0o644)
        return self

    def reset_hooks(self) -> None:
        """Every hook event directory back to one trusted hook that records its runs."""
        for event in HOOK_EVENTS:
            folder = self.hooks / event
            if folder.is_dir():
                for entry in folder.iterdir():
                    entry.unlink()
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(folder, 0o755)
            script(folder / "10-trusted", f"echo \"trusted $1\" >> {self.marks}/hooks\n")
        os.chmod(self.hooks, 0o755)

    def script_hook(self, event: str, name: str, body: str, mode: int = 0o755) -> Path:
        return script(self.hooks / event / name, body, mode)

    def kernel(self) -> GuestKernel:
        """A Linux kernel's shutdown watcher on this tier's connection (started by the caller)."""
        bridge = self.guest.bridge if self.guest is not None \
            else SimpleNamespace(socket_path=self.xs.socket_path)
        return GuestKernel(bridge, "linux")  # type: ignore[arg-type]

    # --- the agent ---------------------------------------------------------------------------

    def argv(self) -> List[str]:
        return [sys.executable, "-m", "xenguest_agent", "run", "--xenstore", self.spec,
                "--root", str(self.root.root), "--os", "linux", "--config", str(self.config)]

    def start_agent(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv())}\n".encode())
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        # prlimit from here, not preexec_fn: the bed runs threads (bridge, kernel stand-ins)
        resource.prlimit(self.proc.pid, resource.RLIMIT_AS,
                         (AGENT_ADDRESS_SPACE, AGENT_ADDRESS_SPACE))

    def stop_agent(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM and wait; None if it ignored SIGTERM for ``timeout`` (then it is killed)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, limit: int = 1500) -> str:
        try:
            return self.log.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop_agent()
        if self.client is not None:
            self.client.close()
        if self.guest is not None:
            self.guest.close()
        self.xs.close()

    # --- the guest tree (what the harness changes; the expected state follows it) -------------

    def set_nic(self, name: str, vif: Optional[int], addresses: List[str]) -> None:
        if name in self.root.links:
            self.root.set_addresses(name, addresses)
        else:
            self.root.nic(name, vif, f"00:16:3e:00:01:{len(self.root.links):02x}", addresses)
        self.nics[name] = (vif, list(addresses))
        self._expected = None

    def remove_nic(self, name: str) -> None:
        import shutil
        shutil.rmtree(self.root.root / "sys/class/net" / name, ignore_errors=True)
        self.root.links.pop(name, None)
        self.nics.pop(name, None)
        self.root.file("_capture/ip-address.json", json.dumps(list(self.root.links.values())))
        self._expected = None

    def set_file(self, relative: str, text: Union[str, bytes]) -> None:
        if isinstance(text, bytes):
            (self.root.root / relative).write_bytes(text)
        else:
            self.root.file(relative, text)
        self._expected = None

    def bump_memory(self) -> None:
        """A new free-memory figure: every check then also proves the daemon still publishes."""
        self.memory = 1_000_000 + (self.memory + 7919) % 900_000
        self.root.set_memory(self.memory)
        self._expected = None

    def expected(self) -> Dict[str, str]:
        """What ``xenguest-agent show --format json`` says for the current tree."""
        if self._expected is None:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                code = cli.main(["show", "--root", str(self.root.root), "--os", "linux",
                                 "--config", str(self.config), "--format", "json"])
            if code != 0:
                raise RuntimeError(f"xenguest-agent show exited {code}")
            self._expected = json.loads(out.getvalue())
        return dict(self._expected)

    # --- the published tree, read through an independent client -----------------------------

    def owned_state(self) -> Dict[str, str]:
        """Every leaf below the agent's owned trees and every owned key, as XenStore has them."""
        assert self.client is not None
        client, home, found = self.client, self.home, {}

        def walk(relative: str) -> None:
            children = client.ls(f"{home}/{relative}")
            if children is None:
                return
            if not children:
                value = client.read(f"{home}/{relative}")
                if value is not None:
                    found[relative] = value
            for child in children:
                walk(f"{relative}/{child}")

        for tree in schema.OWNED_TREES:
            walk(tree)
        for key in schema.OWNED_KEYS:
            value = client.read(f"{home}/{key}")
            if value is not None:
                found[key] = value
        return found

    def invariants(self, state: Dict[str, str]) -> List[str]:
        """Checks written by hand from xapi's readers, independent of ``show``:
        xapi_pv_driver_version.ml needs decimal Major/Minor versions; squeezed needs
        data/updated; xapi_guest_agent.ml copies attr/vif/N/ipv4/* as the VIF's addresses,
        which must be exactly the addresses the guest tree has."""
        problems = []
        for name in ("MajorVersion", "MinorVersion"):
            value = state.get(f"attr/PVAddons/{name}")
            if value is None or not value.isdigit():
                problems.append(f"invariant: attr/PVAddons/{name} is {value!r}, not a "
                                "non-negative decimal integer")
        problems += [f"invariant: {k} is not printable ASCII: {v[:40]!r}" for k, v in state.items()
                     if any(not " " <= c <= "~" for c in v)]
        if "data/updated" not in state:
            problems.append("invariant: data/updated missing")
        for name, (vif, addresses) in self.nics.items():
            if vif is None or len(str(vif)) > 9:
                continue
            for family in (4, 6):
                want = sorted(a for a in addresses if (":" in a) == (family == 6))
                prefix = f"attr/vif/{vif}/ipv{family}/"
                have = sorted(v for k, v in state.items() if k.startswith(prefix))
                if have != want:
                    problems.append(f"invariant: {name} (vif {vif}) ipv{family} published "
                                    f"{have}, tree has {want}")
        return problems

    def problems(self) -> List[str]:
        """Why the tree is not (yet) right: [] when it is complete and equal to ``expected``."""
        try:
            state = self.owned_state()
        except (OSError, ValueError) as exc:
            if self.client is not None:
                self.client.close()
            return [f"cannot read the tree: {exc}"]
        expected = self.expected()
        out = [f"missing {k} (expected {v!r})" for k, v in expected.items() if k not in state]
        out += [f"{k} = {state[k][:60]!r}, expected {v!r}" for k, v in expected.items()
                if k in state and state[k] != v]
        # The kernel writes (and the agent re-writes) control/feature-*: `show` cannot know them.
        out += [f"unexpected {k} = {v[:60]!r}" for k, v in state.items()
                if k not in expected and not k.startswith("control/feature-")]
        return out + self.invariants(state)

    def wait_until(self, ok: Callable[[], List[str]], guard: float) -> Tuple[Optional[float],
                                                                             List[str]]:
        """Poll ``ok`` (a list of problems) until it is empty: (seconds, []) or (None, problems)
        after ``guard`` seconds.  Only a failure guard: the machine is shared and loaded."""
        start = time.monotonic()
        while True:
            problems = ok()
            if not problems:
                return time.monotonic() - start, []
            if time.monotonic() - start >= guard:
                return None, problems
            time.sleep(STEP)

    def marks_of(self, name: str) -> List[str]:
        path = self.marks / name
        return path.read_text().splitlines() if path.exists() else []

    def write(self, relative: str, value: str) -> None:
        assert self.client is not None
        self.client.write(f"{self.home}/{relative}", value)

    def read(self, relative: str) -> Optional[str]:
        assert self.client is not None
        return self.client.read(f"{self.home}/{relative}")

    def request_shutdown(self, value: str) -> None:
        """What the toolstack writes: xenopsd's transaction in the guest tier, a write on dom0."""
        if self.guest is not None:
            self.guest.toolstack.request_shutdown(value)
        else:
            self.write("control/shutdown", value)
