"""The pyxs adapter against Debian's real xenstored: each pyxs defect the adapter
works around is shown here, on the real daemon."""

import errno
import os
import signal
import threading

import pytest
from pyxs import Client

from support.waiting import wait_for
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable, parse_spec


def connected(xenstored, timeout=2.0):
    store = XenStore(xenstored.spec, timeout=timeout)
    store.connect()
    return store


def test_spec_parsing():
    assert parse_spec("unix:/run/xenstored/socket") == ("unix", "/run/xenstored/socket")
    assert parse_spec("/dev/xen/xenstore") == ("device", "/dev/xen/xenstore")
    for bad in ("unix:", "xenbus", "tcp://host:1"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_missing_device_names_the_path():
    store = XenStore("/dev/xen/no-such-xenbus")
    with pytest.raises(XenStoreUnavailable, match="/dev/xen/no-such-xenbus does not exist"):
        store.connect()


def test_relative_paths_land_in_the_home_and_round_trip(xenstored):
    store = connected(xenstored)
    try:
        store.write("data/os_name", "Debian GNU/Linux 12 (bookworm)")
        assert xenstored.read("/local/domain/0/data/os_name") == "Debian GNU/Linux 12 (bookworm)"
        assert store.read("data/os_name") == "Debian GNU/Linux 12 (bookworm)"
        assert store.read("data/absent") is None
        assert store.ls("data") == ["os_name"]
        assert store.ls("nowhere") is None
        store.rm("data/os_name")
        store.rm("data/os_name")  # removing what is gone is fine
        assert xenstored.read("/local/domain/0/data/os_name") is None
    finally:
        store.close()


def test_empty_value_is_written_though_pyxs_refuses_it(xenstored):
    with Client(router=None, unix_socket_path=str(xenstored.socket_path)) as client:
        with pytest.raises(ValueError):
            client.write(b"/local/domain/0/control/shutdown", b"")
    store = connected(xenstored)
    try:
        store.write("control/shutdown", "poweroff")
        store.write("control/shutdown", "")  # the acknowledgement the toolstack waits for
        assert xenstored.read("/local/domain/0/control/shutdown") == ""
    finally:
        store.close()


def test_errors_carry_the_errno(xenstored):
    store = connected(xenstored)
    try:
        with pytest.raises(XenStoreError) as caught:
            store.write("x" * 3000, "a path longer than xenstored accepts")
        assert caught.value.errno == errno.EINVAL
        with pytest.raises(XenStoreError) as caught:
            store.read("/bad path")
        assert caught.value.errno == errno.EINVAL
        assert store.connected  # a refused request leaves the connection usable
    finally:
        store.close()


GUARD = 60.0  # seconds: only bounds how long a failing test takes (a hang), proves nothing


def outcome_of(call):
    """Run ``call`` in a thread; its exception (or None), or a failure if it is still running
    after GUARD seconds (it hangs)."""
    result = []

    def run():
        try:
            call()
            result.append(None)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), f"still waiting after {GUARD:g}s: it hangs"
    return result[0]


def test_a_stopped_daemon_times_out_instead_of_hanging(xenstored):
    """The request ends while xenstored is still stopped (it can never answer), and by the
    adapter's own timeout: the message names it.  How long that took is not the point."""
    store = connected(xenstored, timeout=0.5)
    os.kill(xenstored.pid, signal.SIGSTOP)
    try:
        exc = outcome_of(lambda: store.read("data"))
        assert isinstance(exc, XenStoreUnavailable)
        assert "did not answer within 0.5s" in str(exc)
        assert _stopped(xenstored.pid)  # still stopped: it never answered
    finally:
        os.kill(xenstored.pid, signal.SIGCONT)
        store.close()


def _stopped(pid):
    """/proc/<pid>/stat field 3 is "T": stopped by a signal."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_killed_daemon_fails_fast_and_a_fresh_router_reconnects(xenstored):
    # a request timeout no test waits for: only noticing the dead router can end the read
    store = connected(xenstored, timeout=3600.0)
    store.write("data/a", "1")
    xenstored.kill()
    exc = outcome_of(lambda: store.read("data/a"))
    assert isinstance(exc, XenStoreUnavailable)
    assert "did not answer" not in str(exc)  # the dead router, not the timeout
    xenstored.start()
    # pyxs's own router cannot start twice: the reason the adapter builds a fresh one
    router = store._router
    with pytest.raises(RuntimeError, match="threads can only be started once"):
        router.thread.start()
    store.connect()
    store.write("data/a", "2")
    assert xenstored.read("/local/domain/0/data/a") == "2"
    store.close()


def test_watch_events_arrive_on_a_second_connection(xenstored):
    store = connected(xenstored)
    events = []
    seen = threading.Event()

    def on_event(path, token):
        events.append((path, token))
        if path.endswith("control/shutdown"):
            seen.set()

    store.on_event(on_event)
    try:
        store.watch("control/shutdown", "tok")
        xenstored.write("/local/domain/0/control/shutdown", "reboot")
        assert seen.wait(2.0)
        # the registration fires once by itself, then the write fires it
        assert ("control/shutdown", "tok") in events or \
            ("/local/domain/0/control/shutdown", "tok") in events
        assert store.watching
        # requests and watches do not share a connection
        assert store._watch_router is not store._router
    finally:
        store.close()


def test_transaction_conflict_is_eagain_and_transact_redoes_the_work(xenstored):
    store = connected(xenstored)
    try:
        store.write("data/counter", "1")
        tx = store.begin()
        value = tx.read("data/counter")
        xenstored.write("/local/domain/0/data/counter", "5")  # someone else, meanwhile
        tx.write("data/counter", str(int(value) + 1))
        assert tx.commit() is False
        assert xenstored.read("/local/domain/0/data/counter") == "5"

        attempts = []

        def work(tx):
            attempts.append(1)
            current = int(tx.read("data/counter"))
            if len(attempts) == 1:
                xenstored.write("/local/domain/0/data/counter", "7")
            tx.write("data/counter", str(current + 1))

        store.transact(work)
        assert len(attempts) == 2
        assert xenstored.read("/local/domain/0/data/counter") == "8"
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_request_in_flight_when_xenstored_dies(xenstored):
    """With a bare pyxs Client a request in flight when xenstored dies waits
    forever (its RVar is never set); the adapter gives up at once.

    "Forever" is shown by state, not by waiting: once pyxs's router thread has ended (the
    only thread that ever sets a reply, client.py Router.__call__), the request's RVar is still
    unset and RVar.get() waits for it without a timeout.  "At once" is shown the same way: the
    adapter's timeout is an hour, so only noticing the dead router can end its request."""
    client = Client(unix_socket_path=str(xenstored.socket_path))
    client.connect()
    store = connected(xenstored, timeout=3600.0)
    os.kill(xenstored.pid, signal.SIGSTOP)  # both requests are now in flight
    outcome = {}

    def bare():
        outcome["pyxs"] = client.read(b"/local/domain/0/x", b"default")

    def adapter():
        try:
            store.read("x")
        except XenStoreUnavailable as exc:
            outcome["adapter"] = exc

    threads = [threading.Thread(target=fn, daemon=True) for fn in (bare, adapter)]
    for thread in threads:
        thread.start()
    # in flight: each router holds the request's RVar (registered and sent under one lock)
    assert wait_for(lambda: len(client.router.rvars) == 1 and len(store._router.rvars) == 1), \
        "the requests were not sent"
    (pending,) = client.router.rvars.values()
    xenstored.kill()
    threads[1].join(GUARD)
    assert not threads[1].is_alive(), "the adapter still waits"
    assert "adapter" in outcome and "did not answer" not in str(outcome["adapter"])
    client.router.thread.join(GUARD)
    assert not client.router.thread.is_alive()  # nothing can set pyxs's reply any more
    assert pending.target is None and "pyxs" not in outcome
    assert threads[0].is_alive()  # blocked in RVar.get() on it
    store.close()
