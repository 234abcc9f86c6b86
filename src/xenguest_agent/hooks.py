"""Administrator hook scripts around shutdown, suspend/resume and migration.

``<config dir>/hooks/<event>/`` holds the scripts for one event, run with
run-parts(8) semantics: names sorted in C order, only names of letters,
digits, ``_`` and ``-`` (so ``foo.dpkg-old`` and editor backups are ignored),
only executable regular files owned by root (or by the agent's own user) and
not writable by group or others; anything else is skipped with a warning,
because a hook runs as root.  Each runs with a fixed argv (its path and the
event), no shell, stdin from /dev/null, a timeout, and an environment that
says what happened; its exit status and output are logged.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

log = logging.getLogger(__name__)

#: Events with a hook directory.  pre-* run before the action, post-* after.
EVENTS = ("pre-shutdown", "pre-reboot", "pre-suspend", "post-resume", "post-migrate",
          "shutdown-refused")

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # run-parts' default (--lsbsysinit off)

OUTPUT_LIMIT = 4096  # bytes of a hook's output kept for the log


@dataclass(frozen=True)
class HookResult:
    path: str
    returncode: Optional[int]  # None: timed out or could not start
    output: str
    seconds: float


class Hooks:
    """Finds and runs the hooks of one configuration directory."""

    def __init__(self, directory: str, timeout: float = 30.0) -> None:
        self.directory = directory
        self.timeout = timeout

    def scripts(self, event: str) -> List[str]:
        """The runnable hooks of ``event`` in order; unsafe ones are skipped loudly."""
        folder = os.path.join(self.directory, event)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("hooks: cannot list %s: %s", folder, exc)
            return []
        allowed_owners = {0, os.geteuid()}
        found = []
        for name in names:
            path = os.path.join(folder, name)
            if not _NAME.match(name):
                log.debug("hooks: ignoring %s (name is not [A-Za-z0-9_-]+)", path)
                continue
            try:
                info = os.lstat(path)
            except OSError as exc:
                log.warning("hooks: skipping %s: %s", path, exc)
                continue
            if not stat.S_ISREG(info.st_mode):
                log.warning("hooks: skipping %s: not a regular file", path)
            elif not info.st_mode & stat.S_IXUSR:
                log.warning("hooks: skipping %s: not executable", path)
            elif info.st_uid not in allowed_owners:
                log.warning("hooks: skipping %s: owned by uid %d, not root", path, info.st_uid)
            elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                log.warning("hooks: skipping %s: writable by group or others", path)
            else:
                found.append(path)
        return found

    def run(self, event: str, details: Mapping[str, str]) -> Tuple[HookResult, ...]:
        """Run every hook of ``event`` in order; failures are logged, never raised."""
        if event not in EVENTS:
            raise ValueError(f"unknown hook event {event!r}")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C", "XENGUEST_EVENT": event}
        env.update({f"XENGUEST_{k.upper()}": v for k, v in details.items()})
        results = []
        for path in self.scripts(event):
            results.append(self._run_one(path, event, env))
        return tuple(results)

    def _run_one(self, path: str, event: str, env: Dict[str, str]) -> HookResult:
        started = time.monotonic()
        try:
            done = subprocess.run([path, event], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env, timeout=self.timeout,
                                  check=False, cwd="/")
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"")[-OUTPUT_LIMIT:].decode("utf-8", "replace")
            log.warning("hook %s (%s) killed after %.0fs timeout; output: %s", path, event,
                        self.timeout, output.strip() or "(none)")
            return HookResult(path, None, output, time.monotonic() - started)
        except OSError as exc:
            log.warning("hook %s (%s) could not run: %s", path, event, exc)
            return HookResult(path, None, "", time.monotonic() - started)
        output = done.stdout[-OUTPUT_LIMIT:].decode("utf-8", "replace")
        seconds = time.monotonic() - started
        level = logging.INFO if done.returncode == 0 else logging.WARNING
        log.log(level, "hook %s (%s) exited %d in %.2fs; output: %s", path, event, done.returncode,
                seconds, output.strip() or "(none)")
        return HookResult(path, done.returncode, output, seconds)
