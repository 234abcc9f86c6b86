"""The daemon's own command line, ``xenguest-agent run [options]``, read without argparse.

Why: argparse, with what it imports and caches (gettext, its compiled patterns), is a large
share of an idle daemon's memory (docs/performance.md), and the daemon is started with the
same short command line every time (systemd's ExecStart, rc.d, OpenRC).  So a command line
made only of ``run`` and its known options, each written out in full, is read here; any
other (``--help``, ``--version``, ``show``, ``status``, an abbreviation, an unknown or
malformed option, a value that looks like an option) goes to the argparse parser in cli.py,
which gives its usual help and errors.  ``tests/test_cliargs.py`` holds this reader to the
argparse parser on every command line it accepts.
"""

from __future__ import annotations

from types import SimpleNamespace

from xenguest_agent.config import LOG_LEVELS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional, Sequence, Tuple

#: ``--os``: the backends there are, or the running OS (cli.py gives argparse the same)
OS_CHOICES = ("auto", "linux", "freebsd")
#: ``run``'s options that take a value: name -> (attribute, allowed values or None for any)
_VALUED: Dict[str, Tuple[str, Optional[Tuple[str, ...]]]] = {
    "--root": ("root", None),
    "--config": ("config", None),
    "--os": ("os", OS_CHOICES),
    "--log-level": ("log_level", LOG_LEVELS),
    "--xenstore": ("xenstore", None),
}
_DEFAULTS = {"command": "run", "root": "/", "config": None, "os": "auto", "log_level": None,
             "xenstore": None, "once": False}


def parse_run(argv: Sequence[str]) -> Optional[SimpleNamespace]:
    """The namespace argparse would give for ``argv`` when it is a plain ``run`` command
    line; None for anything else (argparse then reads it)."""
    if not argv or argv[0] != "run":
        return None
    values = dict(_DEFAULTS)
    rest = list(argv[1:])
    while rest:
        word = rest.pop(0)
        if word == "--once":
            values["once"] = True
            continue
        name, equals, value = word.partition("=")
        spec = _VALUED.get(name)
        if spec is None:
            return None
        if not equals:
            if not rest:
                return None
            value = rest.pop(0)
        attribute, choices = spec
        if not value or value.startswith("-") or (choices is not None and value not in choices):
            return None  # argparse's own rules (and messages) for these
        values[attribute] = value
    return SimpleNamespace(**values)
