"""Bounds and value checks for the configuration (used by config.py).

Each check takes the Python value PyYAML constructed and returns the setting, or
raises ValueError (or TypeError) with what was expected; config.py adds file, line and key.
Each bound says why it is what it is.
"""

from __future__ import annotations

import math
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable
    Check = Callable[[Any], Any]

# --- bounds -----------------------------------------------------------------------------
# Each bound keeps a value inside what the daemon can act on; why each one, in docs and here:

MAX_CONFIG_BYTES = 256 * 1024  # the documented example is 2 KiB; a bigger file is a mistake
MAX_DEPTH = 16        # the deepest valid key is 4 levels (control.commands.<request>.<argv>)
MAX_PATH = 4096       # PATH_MAX on Linux (linux/limits.h); FreeBSD's is 1024, checked by open(2)
DAY = 86400.0
# xenopsd waits domain_shutdown_ack_timeout = 60 s for an acknowledgement of
# control/shutdown (xen-api ocaml/xenopsd/lib/xenops_server.ml) and then fails the
# operation; the agent's take-over must acknowledge well before that.
MAX_GRACE = 50.0
# VIF ids are the XenStore device numbers under device/vif/.  xapi hands out 0..15
# (ocaml/xapi/xapi_vm_helpers.ml, allowed_VIF_devices_{HVM,PV}); libxl numbers devices
# from 0 upwards (libxl__device_nextid).  65535 is far beyond both and keeps every
# path built from an id short (item 8: thousands of digits made an invalid path).
MAX_VIF_ID = 65535
# Interface names: Linux net/core/dev.c dev_valid_name() refuses a name of IFNAMSIZ
# (16) bytes or more (the terminating NUL must fit), ".", ".." and any '/', ':' or
# white space; FreeBSD's IFNAMSIZ is 16 too (sys/net/if.h).
IFNAMSIZ = 16
MAX_PATTERNS = 64
MAX_STATIC_VIFS = 64
MAX_ARGV = 64

# --- checks: each takes a YAML value, returns the setting or raises ValueError ----------



def brief(text: str) -> str:
    """At most 60 characters of ``text`` for an error message."""
    return text if len(text) <= 60 else text[:57] + "..."


def show(value: Any) -> str:
    """A short repr for an error message (a value may be megabytes long)."""
    try:
        return brief(repr(value))
    except (ValueError, RecursionError):  # an int past the str() digit limit, a cycle
        return f"<a {type(value).__name__} too large to print>"


def number(low: float, high: float, integer: bool = False) -> Check:
    """A finite number in [low, high] (NaN compares false with every bound, so it is
    refused by name first: a NaN interval or timeout never expires)."""
    kind = "an integer" if integer else "a number"
    expected = f"expected {kind} from {low:g} to {high:g}"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise TypeError(expected)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{expected} (not NaN or infinity)")
        if not low <= value <= high:
            raise ValueError(expected)
        return value if integer else float(value)
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def choice(*choices: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value.lower()
    return check


def tristate(value: Any) -> str:
    """auto, true or false (YAML's booleans too): hotplug.online_cpus/online_memory."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return value.lower()
    raise ValueError("expected auto, true or false")


def optional(check: Check) -> Check:
    def wrapped(value: Any) -> Any:
        return None if value is None else check(value)
    return wrapped


def text(value: Any, what: str = "a non-empty string", limit: int = MAX_PATH) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise ValueError(f"expected {what} (at most {limit} characters, no NUL)")
    return value


def string(value: Any) -> str:
    return text(value)


def absolute_path(value: Any) -> str:
    path = text(value, "an absolute path")
    if not path.startswith("/"):
        raise ValueError("expected an absolute path (a relative one depends on the working directory)")
    return os.path.normpath(path)


def patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or len(value) > MAX_PATTERNS
            or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)):
        raise ValueError(f"expected a list of at most {MAX_PATTERNS} interface name patterns")
    return tuple(value)


def interface_name(name: Any) -> bool:
    return (isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogatepass")) < IFNAMSIZ
            and name not in (".", "..") and not any(c in "/:" or c.isspace() for c in name))


def vif_map(value: Any) -> tuple[tuple[str, int], ...]:
    expected = (f"expected interface name (under {IFNAMSIZ} bytes, no '/', ':' or space): "
                f"VIF id (an integer from 0 to {MAX_VIF_ID})")
    if not isinstance(value, dict) or len(value) > MAX_STATIC_VIFS:
        raise ValueError(f"expected a mapping of at most {MAX_STATIC_VIFS} interface names to VIF ids")
    out = []
    for name, vif in value.items():
        if (not interface_name(name) or isinstance(vif, bool) or not isinstance(vif, int)
                or not 0 <= vif <= MAX_VIF_ID):
            raise ValueError(expected)
        out.append((name, vif))
    return tuple(sorted(out))


def commands(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise TypeError("expected a mapping of request (poweroff, reboot, halt) to a command list")
    out = []
    for request, argv in value.items():
        if request not in ("poweroff", "reboot", "halt"):
            raise ValueError(f"unknown request {show(request)} (poweroff, reboot, halt)")
        if (not isinstance(argv, list) or not 0 < len(argv) <= MAX_ARGV
                or not all(isinstance(a, str) and a and len(a) <= MAX_PATH and "\0" not in a
                           for a in argv)):
            raise ValueError(f"{request}: expected a non-empty list of arguments (no shell, no NUL)")
        if not argv[0].startswith("/"):
            # Run as root: no search of $PATH for the program.
            raise ValueError(f"{request}: the program must be an absolute path")
        out.append((request, tuple(argv)))
    return tuple(sorted(out))
