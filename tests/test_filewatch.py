"""File-change events with the real kernel: inotify(7) on a temporary guest tree, and
poll(2) on the real /proc/sys/kernel/hostname inside a new UTS namespace.

What is expected comes from the kernel: renames into a watched directory are
IN_MOVED_TO, a write ends with IN_CLOSE_WRITE (inotify(7)); sethostname(2) calls
uts_proc_notify (kernel/utsname_sysctl.c) and proc_sys_poll (fs/proc/proc_sysctl.c)
then reports POLLERR|POLLPRI to every open file of the sysctl.
"""

import os
import select
import shutil
import subprocess
import sys
import textwrap

import pytest

from xenguest_agent.filewatch import (
    FileWatch,
    changed_collectors,
    plan,
    resolve,
    signatures,
)
from xenguest_agent.host import Host

TIMEOUT_MS = 10_000  # a failure guard only: each wait ends at the first event


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def replace(path, text):
    """What package managers, resolvconf and systemd-resolved do: write aside, rename over."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.rename(aside, path)


def relink(link, target):
    """ln -sf done atomically (a new link renamed over the old one)."""
    aside = link.with_name(link.name + ".new")
    aside.symlink_to(target)
    os.rename(aside, link)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "guest"
    write(root / "etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    write(root / "etc/debian_version", "12.5\n")
    write(root / "etc/hosts", "127.0.0.1 localhost\n")
    write(root / "run/systemd/resolve/stub-resolv.conf", "nameserver 127.0.0.53\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")  # absolute
    return root


@pytest.fixture
def watch(tree):
    fds_before = set(os.listdir("/proc/self/fd"))
    watch = FileWatch(Host(str(tree)), "linux")
    assert watch.start()
    yield watch
    watch.close()
    assert set(os.listdir("/proc/self/fd")) == fds_before  # every descriptor closed


def changes(watch):
    """Wait for the watch's fds as the daemon's poll loop would; what handle() returns."""
    poller = select.poll()
    for fd, mask in watch.fds():
        poller.register(fd, mask)
    ready = poller.poll(TIMEOUT_MS)
    assert ready, "no event within the guard timeout"
    out = set()
    for fd, _ in ready:
        out |= watch.handle(fd)
    return out


def test_rename_over_os_release_is_os(watch, tree):
    replace(tree / "etc/os-release", 'ID=debian\nVERSION_ID="13"\n')
    assert changes(watch) == {"os"}


def test_write_in_place_is_seen(watch, tree):
    (tree / "etc/debian_version").write_text("12.6\n")
    assert changes(watch) == {"os"}


def test_unrelated_files_in_the_same_directory_are_filtered(watch, tree):
    (tree / "etc/hosts").write_text("127.0.0.1 localhost other\n")
    replace(tree / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    (tree / "etc/os-release").write_text("ID=debian\n")  # the sentinel: one event we want
    assert changes(watch) == {"os"}  # and no "names" from the others


def test_symlink_target_replaced_in_its_own_directory(watch, tree):
    # systemd-resolved rewrites stub-resolv.conf by rename in /run/systemd/resolve;
    # /etc/resolv.conf, the link, does not change at all.
    replace(tree / "run/systemd/resolve/stub-resolv.conf", "nameserver 10.0.0.1\n")
    assert changes(watch) == {"names"}


def test_symlink_repointed_follows_the_new_target(watch, tree):
    write(tree / "run/resolvconf/resolv.conf", "nameserver 10.0.0.2\n")  # not watched yet
    relink(tree / "etc/resolv.conf", "/run/resolvconf/resolv.conf")
    assert changes(watch) == {"names"}
    replace(tree / "run/resolvconf/resolv.conf", "nameserver 10.0.0.3\n")
    assert changes(watch) == {"names"}
    # The old target no longer matters: its change is not reported (the sentinel after
    # it is the only event we get).
    replace(tree / "run/systemd/resolve/stub-resolv.conf", "nameserver 10.0.0.4\n")
    (tree / "etc/debian_version").write_text("12.7\n")
    assert changes(watch) == {"os"}


def test_a_missing_directory_is_watched_through_its_ancestor(tmp_path):
    root = tmp_path / "guest"
    write(root / "etc/os-release", "ID=debian\n")
    (root / "run").mkdir()
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")  # relative
    watch = FileWatch(Host(str(root)), "linux")
    assert watch.start()
    try:
        write(root / "run/systemd/resolve/stub-resolv.conf", "nameserver 127.0.0.53\n")
        assert changes(watch) == {"names"}  # run/systemd appeared
        # Now the real directory is watched: a later rename inside it is seen.
        while True:  # drain what the creation of the rest of the chain produced
            found = set()
            poller = select.poll()
            for fd, mask in watch.fds():
                poller.register(fd, mask)
            for fd, _ in poller.poll(0):
                found |= watch.handle(fd)
            if not found:
                break
        replace(root / "run/systemd/resolve/stub-resolv.conf", "nameserver 10.9.9.9\n")
        assert changes(watch) == {"names"}
    finally:
        watch.close()


def test_plan_resolves_links_inside_the_root(tree):
    planned = plan(Host(str(tree)), {"names": ("/etc/resolv.conf",)})
    assert planned == {
        str(tree / "etc"): {"resolv.conf": {"names"}},
        str(tree / "run/systemd/resolve"): {"stub-resolv.conf": {"names"}},
    }
    assert resolve(str(tree), "/etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"


def test_link_loops_end(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert resolve(str(tmp_path), "/a/x") is None
    assert plan(Host(str(tmp_path)), {"os": ("/a/x",)}) == {}


# --- FreeBSD: the parts that do not need kqueue ----------------------------------------------

def test_freebsd_is_refused_off_freebsd_and_leaks_nothing(tree):
    before = set(os.listdir("/proc/self/fd"))
    watch = FileWatch(Host(str(tree)), "freebsd")
    assert watch.start() is False  # select.kqueue exists only on the BSDs and macOS
    assert watch.fds() == []
    watch.close()
    assert set(os.listdir("/proc/self/fd")) == before


def test_freebsd_plan_covers_the_var_run_os_release_link(tmp_path):
    # FreeBSD 13+: /etc/os-release -> ../var/run/os-release (libexec/rc/rc.d/os-release)
    root = tmp_path / "guest"
    write(root / "var/run/os-release", "NAME=FreeBSD\nVERSION=14.1-RELEASE\n")
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../var/run/os-release")
    write(root / "etc/resolv.conf", "nameserver 10.0.0.1\n")
    planned = plan(Host(str(root)), {"os": ("/etc/os-release", "/var/run/os-release"),
                                     "names": ("/etc/resolv.conf",)})
    assert planned == {
        str(root / "etc"): {"os-release": {"os"}, "resolv.conf": {"names"}},
        str(root / "var/run"): {"os-release": {"os"}},
    }
    before = signatures(planned)
    replace(root / "var/run/os-release", "NAME=FreeBSD\nVERSION=14.2-RELEASE\n")
    assert changed_collectors(before, signatures(planned), planned) == {"os"}
    before = signatures(planned)
    (root / "etc/resolv.conf").unlink()
    assert changed_collectors(before, signatures(planned), planned) == {"names"}
    assert changed_collectors(before, before, planned) == frozenset()


# --- the host name: poll(2) on the real sysctl, in a UTS namespace of our own ------------------

def test_hostname_change_is_reported_by_poll():
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare(1) is missing (Debian package util-linux)", pytrace=False)
    script = textwrap.dedent("""
        import select, socket, sys
        from xenguest_agent.filewatch import FileWatch
        from xenguest_agent.host import Host

        watch = FileWatch(Host("/"), "linux")
        assert watch.start()
        hostname = [fd for fd, mask in watch.fds() if mask == select.POLLPRI]
        assert len(hostname) == 1, watch.fds()
        poller = select.poll()
        poller.register(hostname[0], select.POLLPRI)
        assert poller.poll(0) == [], "reported before any change"
        socket.sethostname("renamed-by-test")
        ready = poller.poll(10000)
        assert ready and ready[0][1] & select.POLLPRI, ready
        assert watch.handle(hostname[0]) == frozenset({"names"})
        assert poller.poll(0) == [], "reported twice for one change"
        watch.close()
        print("ok")
    """)
    done = subprocess.run([unshare, "--uts", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
