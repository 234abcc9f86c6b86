"""``xenguest-agent show | head -1``: a reader that goes away is not an error worth a traceback.

A real pipe whose read end is closed before the agent writes makes every write fail with EPIPE
(pipe(7)); Python turns that into BrokenPipeError, and without handling it prints a traceback and,
at exit, "Exception ignored ... BrokenPipeError" while flushing stdout (Python's signal module
documentation, "Note on SIGPIPE").  Coreutils die of SIGPIPE silently; the shell reports 141.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "linux" / "many-addresses"
ARGV = [sys.executable, "-m", "xenguest_agent", "show", "--root", str(FIXTURE), "--os", "linux"]


def test_closed_pipe_gives_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("")
    proc = subprocess.Popen([*ARGV, "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write: EPIPE, deterministically
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 141  # 128 + SIGPIPE, what the shell shows for a tool SIGPIPE stopped


def test_show_piped_into_head(tmp_path: Path) -> None:
    """The command line from the issue, through a shell and the real head(1)."""
    config = tmp_path / "config.yaml"
    config.write_text("")
    line = " ".join(f"'{a}'" for a in [*ARGV, "--config", str(config)])
    done = subprocess.run(["sh", "-c", f"{line} | head -1"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("attr/PVAddons/BuildVersion")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
