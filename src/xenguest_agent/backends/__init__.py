"""OS backends.  :func:`select_backend` is the one place that picks one."""

from __future__ import annotations

from xenguest_agent.backends.base import Backend
from xenguest_agent.host import Host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

if TYPE_CHECKING:
    from xenguest_agent.backends.addresses import AddressSource

SUPPORTED = ("linux", "freebsd")


class UnsupportedOS(Exception):
    """The running OS has no backend."""


def select_backend(os_name: str, host: Host,
                   addresses: "Optional[AddressSource]" = None) -> Backend:
    """The backend for ``os_name`` (``platform.system().lower()``), reading through ``host``.

    Backend modules are imported here, lazily, so importing the package does not
    import psutil or touch the OS."""
    name = os_name.lower()
    if name == "linux":
        from xenguest_agent.backends.linux import LinuxBackend
        return LinuxBackend(host, addresses)
    if name == "freebsd":
        from xenguest_agent.backends.freebsd import FreeBSDBackend
        return FreeBSDBackend(host, addresses)
    raise UnsupportedOS(f"no backend for {os_name!r} (supported: {', '.join(SUPPORTED)})")
