"""``./dev run`` hands the agent the XenStore device that exists.

Linux guests expose XenStore as /dev/xen/xenbus (xenbus_dev_frontend) or, on older kernels and
without devtmpfs, as /proc/xen/xenbus (xenfs); the agent's default is the first.  The test runs
./dev in a private mount namespace (unshare(1)) whose /proc is a tmpfs holding /proc/xen/xenbus
as a directory: opening it fails (EISDIR), so the agent exits 69 naming the path it was given.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_dev_run_passes_proc_xen_xenbus() -> None:
    unshare = shutil.which("unshare")
    assert unshare, "unshare(1) (util-linux) is needed"
    script = "mount -t tmpfs none /proc && mkdir -p /proc/xen/xenbus && exec ./dev run --once"
    done = subprocess.run([unshare, "-m", "sh", "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 69, done.stderr
    assert "XenStore unavailable (/proc/xen/xenbus)" in done.stderr, done.stderr
