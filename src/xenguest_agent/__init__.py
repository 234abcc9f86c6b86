"""xenguest-agent: a Xen guest agent for Linux and FreeBSD guests.

The package has no import-time side effects: the object graph (host, backend,
XenStore connection, publisher, daemon) is built by :mod:`xenguest_agent.cli`.
"""


from __future__ import annotations

__version__ = "1.0.0"
