"""sd_notify(3) through a real AF_UNIX datagram socket, as systemd listens for it.

The expectations follow systemd's sd_notify(3) and sd_watchdog_enabled(3) and
src/libsystemd/sd-daemon/sd-daemon.c: NOTIFY_SOCKET is a path or, with a leading '@',
an abstract name; one datagram per message; WATCHDOG_USEC in microseconds, ignored
when WATCHDOG_PID names another process; a keep-alive at half the timeout.
"""

import logging
import os
import socket
import uuid

import pytest

from xenguest_agent.sdnotify import Notifier


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    """systemd's end: a bound datagram socket and the NOTIFY_SOCKET value naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        spec = address
    else:
        name = f"xenguest-agent-test-{uuid.uuid4().hex}"
        address = "\0" + name
        spec = "@" + name
    sock.bind(address)
    sock.settimeout(10)
    yield sock, spec
    sock.close()


def received(sock):
    return sock.recv(4096).decode()


def test_messages_arrive_one_datagram_each(listener):
    sock, spec = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": spec})
    try:
        assert notifier.enabled
        notifier.ready()
        notifier.status("published 42 keys\nfrom eth0")
        notifier.stopping()
        assert received(sock) == "READY=1"
        assert received(sock) == "STATUS=published 42 keys from eth0"  # one line
        assert received(sock) == "STOPPING=1"
    finally:
        notifier.close()


def test_reloading_carries_the_monotonic_time(listener):
    # systemd 253+ (Type=notify-reload) wants MONOTONIC_USEC= with RELOADING=1.
    sock, spec = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": spec}, clock=lambda: 12.5)
    try:
        notifier.reloading()
        assert received(sock) == "RELOADING=1\nMONOTONIC_USEC=12500000"
    finally:
        notifier.close()


def test_watchdog_pings_at_half_the_timeout(listener):
    sock, spec = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": spec, "WATCHDOG_USEC": "30000000",
                                      "WATCHDOG_PID": str(os.getpid())})
    try:
        assert notifier.watchdog_interval == 15.0
        notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"
    finally:
        notifier.close()


@pytest.mark.parametrize("environ", [
    {},                                                            # no watchdog configured
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": str((1 << 64) - 1)},                         # USEC_INFINITY
    {"WATCHDOG_USEC": "nonsense"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},            # for another process
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"},
])
def test_watchdog_disabled_sends_nothing(listener, environ):
    sock, spec = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": spec, **environ})
    try:
        assert notifier.watchdog_interval is None
        notifier.watchdog()
        notifier.ready()  # the next datagram is READY, so no WATCHDOG=1 was sent
        assert received(sock) == "READY=1"
    finally:
        notifier.close()


def test_watchdog_pid_unset_means_this_process(listener):
    _sock, spec = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": spec, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval == 1.0
    notifier.close()


def test_unset_socket_is_a_silent_notifier():
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready()
    notifier.watchdog()
    notifier.close()


def test_unsupported_address_is_refused_once(caplog):
    with caplog.at_level(logging.WARNING):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not an AF_UNIX socket" in caplog.text


def test_a_vanished_socket_never_raises_and_is_logged_once(tmp_path, caplog):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone"),
                                      "WATCHDOG_USEC": "1000000"})
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(5):
                notifier.ready()
                notifier.watchdog()
        assert caplog.text.count("cannot notify systemd") == 1
    finally:
        notifier.close()


def test_a_full_socket_never_blocks(tmp_path):
    """systemd not reading (a hung PID 1, a full queue): sendto with MSG_DONTWAIT fails
    with EAGAIN instead of blocking the agent's loop."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        for _ in range(10_000):  # far more than the receive queue holds (net.unix.max_dgram_qlen)
            notifier.status("x" * 1000)
        assert notifier._failed  # EAGAIN was met (and logged once), nothing blocked
    finally:
        notifier.close()
        sock.close()
