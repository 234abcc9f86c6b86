"""Test-only command channel of the system test's domU (NOT part of the agent).

dom0 drives commands inside the guest through XenStore keys under the guest's home that the agent does
not own: dom0 creates /local/domain/<domid>/test/ owned by the guest and writes

    test/cmd     = "<seq> <timeout-seconds> <base64 of a shell command>"

This loop polls it (relative paths, so it follows the guest to a new domid after restore/migration),
runs the command with `sh -c`, and answers with

    test/out/<i> = base64 chunks of stdout+stderr (XenStore values are limited; pyxs-style ASCII)
    test/result  = "<seq> <exit status> <number of chunks>"

It talks the XenStore wire protocol (xs_wire.h) on /dev/xen/xenbus itself, with no library, one fresh
connection per poll, so a suspend/resume or a bug in pyxs cannot wedge the test machinery. A SIGALRM
watchdog exits the process if a request ever hangs; busybox init respawns it, and the last sequence
number is kept in /run so a command never runs twice.
"""

import base64
import os
import signal
import struct
import subprocess
import sys
import time

XS_READ, XS_WRITE, XS_RM, XS_ERROR = 2, 11, 13, 16
DEVICE = "/dev/xen/xenbus"
STATE = "/run/ctl.last"
CHUNK = 1800
POLL = 0.25


class XenBus:
    def __init__(self):
        self.fd = os.open(DEVICE, os.O_RDWR)
        self.rq = 0

    def close(self):
        os.close(self.fd)

    def _readn(self, n):
        buf = b""
        while len(buf) < n:
            got = os.read(self.fd, n - len(buf))
            if not got:
                raise OSError("EOF on %s" % DEVICE)
            buf += got
        return buf

    def request(self, kind, payload):
        self.rq += 1
        os.write(self.fd, struct.pack("<IIII", kind, self.rq, 0, len(payload)) + payload)
        kind_r, _, _, length = struct.unpack("<IIII", self._readn(16))
        body = self._readn(length)
        if kind_r == XS_ERROR:
            raise OSError(body.rstrip(b"\0").decode("ascii", "replace"))
        return body

    def read(self, path):
        return self.request(XS_READ, path.encode() + b"\0")

    def write(self, path, value):
        return self.request(XS_WRITE, path.encode() + b"\0" + value)

    def rm(self, path):
        try:
            self.request(XS_RM, path.encode() + b"\0")
        except OSError:
            pass


def on_alarm(signum, frame):
    sys.stderr.write("ctl: XenStore request hung; exiting (init respawns)\n")
    os._exit(3)


def last_seq():
    try:
        with open(STATE) as f:
            return f.read().strip()
    except OSError:
        return None


def answer(seq, rc, output):
    """Write the result; retry while the home is being rebuilt (restore/migration)."""
    data = base64.b64encode(output[-48000:])
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    deadline = time.time() + 120
    while True:
        signal.alarm(20)
        try:
            xb = XenBus()
            try:
                xb.rm("test/out")
                for i, c in enumerate(chunks):
                    xb.write("test/out/%d" % i, c)
                xb.write("test/result", ("%s %d %d" % (seq, rc, len(chunks))).encode())
                return
            finally:
                xb.close()
                signal.alarm(0)
        except OSError as exc:
            if time.time() > deadline:
                sys.stderr.write("ctl: cannot answer %s: %s\n" % (seq, exc))
                return
            time.sleep(0.5)


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    done = last_seq()
    while True:
        signal.alarm(20)
        try:
            xb = XenBus()
            try:
                req = xb.read("test/cmd")
            finally:
                xb.close()
        except OSError:
            req = None
        signal.alarm(0)
        if req:
            try:
                seq, timeout, b64 = req.decode().split(" ", 2)
                cmd = base64.b64decode(b64).decode()
            except ValueError:
                seq = None
            if seq and seq != done:
                try:
                    res = subprocess.run(["sh", "-c", cmd], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, timeout=float(timeout))
                    rc, out = res.returncode, res.stdout
                except subprocess.TimeoutExpired as exc:
                    rc, out = 124, (exc.output or b"") + b"\n[ctl: timed out]"
                with open(STATE, "w") as f:
                    f.write(seq)
                done = seq
                answer(seq, rc, out)
                continue
        time.sleep(POLL)


def note(text):
    """`ctl.py note TEXT`: leave TEXT in test/note (rc.shutdown tells dom0 the agent stopped)."""
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    xb = XenBus()
    try:
        xb.write("test/note", text.encode("ascii", "replace"))
    finally:
        xb.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["note"]:
        note(" ".join(sys.argv[2:]))
    else:
        main()
