"""hooks.py: off-loop jobs, process groups, bounded output, and trust (issue 9 items 2, 3, 5).

Hooks run as root, so the tests build their hook directories under ``trusted_tmp`` (a directory
whose every ancestor is root-owned and not group/other-writable, see conftest.py); pytest's own
tmp_path is under /tmp (mode 1777), from which no hook may run.
"""

import os
import threading

import pytest

from support.waiting import wait_for
from xenguest_agent import hooks as hooks_module
from xenguest_agent import trust
from xenguest_agent.hooks import OUTPUT_LIMIT, Hooks

GUARD = 30  # seconds: a failure guard on a loaded machine, never a speed claim


def write_hook(folder, name, body, mode=0o755):
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    path = folder / name
    path.write_text(body)
    os.chmod(path, mode)
    return path


def run(hooks, event, details=None):
    job = hooks.start(event, details or {})
    assert job.wait(GUARD), "the hook job never finished"
    return job.results


def alive(pid):
    """True while ``pid`` exists and is not a zombie (/proc/<pid>/stat, field 3)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hooks_run_in_order_with_environment_and_unsafe_ones_skipped(trusted_tmp, tmp_path, caplog):
    out = tmp_path / "out.txt"
    pre = trusted_tmp / "hooks" / "pre-shutdown"
    write_hook(pre, "20-second", f"#!/bin/sh\necho \"2 $1 $XENGUEST_REQUEST $XENGUEST_HOOK\" >> {out}\n")
    write_hook(pre, "10-first", f"#!/bin/sh\necho \"1 $1 $XENGUEST_EVENT\" >> {out}\nexit 3\n")
    write_hook(pre, "30-world-writable", f"#!/bin/sh\necho bad >> {out}\n", 0o757)
    write_hook(pre, "35-group-writable", f"#!/bin/sh\necho bad >> {out}\n", 0o775)
    write_hook(pre, "40-not-executable", f"#!/bin/sh\necho bad >> {out}\n", 0o644)
    write_hook(pre, "50.dpkg-old", f"#!/bin/sh\necho bad >> {out}\n")
    (pre / "60-dir").mkdir()
    os.mkfifo(pre / "70-fifo")
    results = run(Hooks(str(trusted_tmp / "hooks"), 30.0), "pre-shutdown", {"request": "poweroff"})
    assert out.read_text() == ("1 pre-shutdown pre-shutdown\n"
                               f"2 pre-shutdown poweroff {pre / '20-second'}\n")
    assert [(r.returncode, r.status) for r in results] == [(3, "exited"), (0, "exited")]
    skipped = " ".join(r.getMessage() for r in caplog.records if "skipping" in r.getMessage())
    for name in ("30-world-writable", "35-group-writable", "40-not-executable", "60-dir", "70-fifo"):
        assert name in skipped
    assert "50.dpkg-old" not in skipped  # ignored silently, like run-parts


def test_relative_directory_is_refused():
    with pytest.raises(ValueError):
        Hooks("etc/hooks", 30.0)


def test_world_writable_directory_in_the_chain_refuses_every_hook(trusted_tmp, tmp_path, caplog):
    out = tmp_path / "ran"
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-note", f"#!/bin/sh\necho ran > {out}\n")
    os.chmod(trusted_tmp, 0o1777)  # like /tmp: world-writable, even with the sticky bit
    assert run(Hooks(str(trusted_tmp / "hooks"), 30.0), "post-resume") == ()
    assert not out.exists()
    assert any("writable by group or others" in r.getMessage() for r in caplog.records)


def test_directory_under_tmp_is_refused(tmp_path, caplog):
    """pytest's tmp_path is under /tmp (1777): what `--config /tmp/x.yaml` used to trust."""
    out = tmp_path / "ran"
    write_hook(tmp_path / "hooks" / "post-resume", "10-note", f"#!/bin/sh\necho ran > {out}\n")
    assert run(Hooks(str(tmp_path / "hooks"), 30.0), "post-resume") == ()
    assert not out.exists()
    assert any("/tmp is writable by group or others" in r.getMessage() for r in caplog.records)


def test_symlinked_component_is_not_followed(trusted_tmp, tmp_path, caplog):
    out = tmp_path / "ran"
    write_hook(trusted_tmp / "real" / "post-resume", "10-note", f"#!/bin/sh\necho ran > {out}\n")
    os.symlink(trusted_tmp / "real", trusted_tmp / "hooks")
    assert run(Hooks(str(trusted_tmp / "hooks"), 30.0), "post-resume") == ()
    assert not out.exists()
    assert any("is a symlink" in r.getMessage() for r in caplog.records)


def test_hook_swapped_for_a_symlink_by_the_previous_hook_is_not_run(trusted_tmp, tmp_path, caplog):
    """Issue 9 item 5: while one hook runs, the next is replaced by a symlink to a script
    that is not trusted (here: in /tmp).  The listing is done; the open must refuse it."""
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\necho evil >> {tmp_path}/ran\n")
    evil.chmod(0o777)
    pre = trusted_tmp / "hooks" / "pre-reboot"
    target = write_hook(pre, "20-target", f"#!/bin/sh\necho good >> {tmp_path}/ran\n")
    write_hook(pre, "10-swapper", f"#!/bin/sh\nrm {target}\nln -s {evil} {target}\n")
    results = run(Hooks(str(trusted_tmp / "hooks"), 30.0), "pre-reboot")
    assert [r.path for r in results] == [str(pre / "10-swapper")]
    assert not (tmp_path / "ran").exists()  # neither the evil script nor the good one ran
    assert any("20-target is a symlink" in r.getMessage() for r in caplog.records)


def test_what_runs_is_the_descriptor_that_was_checked(trusted_tmp, tmp_path, monkeypatch):
    """The name is replaced (by a rename over it) after the hook was opened and checked
    and before it is executed: the checked file's content runs, not the new one."""
    pre = trusted_tmp / "hooks" / "pre-shutdown"
    hook = write_hook(pre, "10-hook", f"#!/bin/sh\necho checked >> {tmp_path}/ran\n")
    other = write_hook(trusted_tmp, "other", f"#!/bin/sh\necho swapped >> {tmp_path}/ran\n")
    checked = hooks_module.open_trusted_hook

    def open_then_swap(directory_fd, name, shown):
        fd = checked(directory_fd, name, shown)
        os.rename(other, hook)  # the race, made deterministic
        return fd

    monkeypatch.setattr(hooks_module, "open_trusted_hook", open_then_swap)
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 30.0), "pre-shutdown")
    assert result.returncode == 0
    assert (tmp_path / "ran").read_text() == "checked\n"


def test_start_returns_at_once_and_notifies_when_finished(trusted_tmp, tmp_path):
    gate = tmp_path / "gate"
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-wait",
               f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n")
    notified = threading.Event()
    job = Hooks(str(trusted_tmp / "hooks"), 60.0, notify=notified.set).start("post-resume", {})
    assert not job.done and not notified.is_set()  # the hook waits for the gate: start did not
    gate.touch()
    assert notified.wait(GUARD) and job.done
    assert [r.status for r in job.results] == ["exited"]


def test_timeout_kills_the_whole_process_group(trusted_tmp, tmp_path):
    """A shell hook's background sleep dies with it (issue 9 item 2)."""
    pidfile = tmp_path / "pid"
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-slow",
               f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 0.5), "post-resume")
    assert result.status == "timeout" and result.returncode is None
    grandchild = int(pidfile.read_text())
    assert wait_for(lambda: not alive(grandchild), timeout=GUARD), "the background sleep survived"


def test_hook_exiting_with_a_background_child_holding_its_output_is_finished(trusted_tmp, tmp_path):
    """Waiting on the process, not on pipe EOF: the sleep keeps stdout open for 300 s."""
    pidfile = tmp_path / "pid"
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-bg",
               f"#!/bin/sh\necho started\nsleep 300 &\necho $! > {pidfile}\nexit 0\n")
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 120.0), "post-resume")
    try:
        assert (result.status, result.returncode) == ("exited", 0)
        assert result.output == "started\n"
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_endless_output_is_bounded_and_the_hook_killed_at_the_timeout(trusted_tmp):
    """Issue 9 item 3: an endless writer reached 1.7 GB; what is kept is bounded."""
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-yes",
               "#!/bin/sh\nexec yes xenguest-agent-output\n")
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 1.0), "post-resume")
    assert result.status == "timeout"
    assert len(result.output.encode()) <= OUTPUT_LIMIT
    assert result.output.startswith("xenguest-agent-output\n")  # the head is kept
    assert result.dropped > 0


def test_large_output_keeps_head_and_tail(trusted_tmp):
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-big",
               "#!/bin/sh\necho FIRST\nhead -c 10000000 /dev/zero | tr '\\0' x\necho\necho LAST\n")
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 60.0), "post-resume")
    assert result.status == "exited" and len(result.output.encode()) <= OUTPUT_LIMIT
    assert result.output.startswith("FIRST\n") and result.output.endswith("LAST\n")
    assert result.dropped == 6 + 10_000_000 + 1 + 5 - OUTPUT_LIMIT


def test_cancel_kills_the_running_hook_and_runs_no_more(trusted_tmp, tmp_path):
    pidfile = tmp_path / "pid"
    folder = trusted_tmp / "hooks" / "pre-shutdown"
    write_hook(folder, "10-slow", f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    write_hook(folder, "20-next", f"#!/bin/sh\ntouch {tmp_path}/next\n")
    hooks = Hooks(str(trusted_tmp / "hooks"), 600.0)
    job = hooks.start("pre-shutdown", {})
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=GUARD)
    hooks.cancel_all()
    assert job.wait(GUARD)
    assert [r.status for r in job.results] == ["cancelled"]
    assert not (tmp_path / "next").exists()
    assert wait_for(lambda: not alive(int(pidfile.read_text())), timeout=GUARD)


def test_jobs_run_one_after_another_in_start_order(trusted_tmp, tmp_path):
    out = tmp_path / "order"
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-a",
               f"#!/bin/sh\nsleep 0.3\necho resume >> {out}\n")
    write_hook(trusted_tmp / "hooks" / "post-migrate", "10-b", f"#!/bin/sh\necho migrate >> {out}\n")
    hooks = Hooks(str(trusted_tmp / "hooks"), 30.0)
    first, second = hooks.start("post-resume", {}), hooks.start("post-migrate", {})
    assert second.wait(GUARD) and first.done
    assert out.read_text() == "resume\nmigrate\n"


def test_command_runs_after_the_hooks_with_its_own_timeout(trusted_tmp, tmp_path):
    out = tmp_path / "order"
    write_hook(trusted_tmp / "hooks" / "pre-shutdown", "10-hook", f"#!/bin/sh\necho hook >> {out}\n")
    hooks = Hooks(str(trusted_tmp / "hooks"), 30.0)
    hooks.start("pre-shutdown", {})
    job = hooks.start_command("poweroff", ["sh", "-c", f"echo command >> {out}"], 30.0)
    assert job.wait(GUARD)
    assert out.read_text() == "hook\ncommand\n"
    slow = hooks.start_command("poweroff", ["sleep", "300"], 0.3)
    assert slow.wait(GUARD) and [r.status for r in slow.results] == ["timeout"]


def test_missing_command_is_reported_not_raised():
    job = Hooks("/nonexistent", 30.0).start_command("halt", ["/nonexistent/halt"], 5.0)
    assert job.wait(GUARD)
    assert [r.status for r in job.results] == ["failed"]


def test_unknown_event_and_the_removed_shutdown_refused_event():
    hooks = Hooks("/nonexistent", 30.0)
    for event in ("nope", "shutdown-refused"):  # never fired: removed (issue 10)
        with pytest.raises(ValueError):
            hooks.start(event, {})


def test_no_hook_directory_is_no_hook():
    assert run(Hooks("/nonexistent/hooks", 30.0), "post-resume") == ()


def test_a_hook_that_cannot_be_executed_is_a_result_not_an_exception(trusted_tmp):
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-bad", "#!/nonexistent/interpreter\n")
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 30.0), "post-resume")
    assert result.status == "failed" and result.returncode is None
    assert "No such file or directory" in result.output  # execve(2): ENOENT for the interpreter


def test_without_a_way_to_name_the_descriptor_the_hook_is_not_run_by_path(trusted_tmp, tmp_path,
                                                                        monkeypatch):
    """FreeBSD without fdescfs has no /dev/fd/N for N > 2 (and no /proc): running the path
    instead would reopen the name after the check, so the hook is refused, saying why."""
    write_hook(trusted_tmp / "hooks" / "post-resume", "10-note", f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    monkeypatch.setattr(trust, "FD_DIRS", ("/nonexistent/fd",))
    (result,) = run(Hooks(str(trusted_tmp / "hooks"), 30.0), "post-resume")
    assert result.status == "failed" and "fdescfs" in result.output
    assert not (tmp_path / "ran").exists()


def test_descriptor_path_names_the_descriptor_itself(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        named = trust.fd_executable(fd)
        assert named == f"/proc/self/fd/{fd}"  # Linux procfs (proc(5): /proc/[pid]/fd/)
        assert os.stat(named).st_ino == os.fstat(fd).st_ino
    finally:
        os.close(fd)
