"""The system test's checks, run in dom0 (Python 3.11 of the dom0 image) after /init set up Xen.

Drives guests with `xl` the way an administrator would and inspects XenStore with Debian's
xenstore-* tools. Commands inside a guest go through the test-only channel described in
domu/ctl.py (/local/domain/<domid>/test/, a subtree the agent does not own).

Output protocol for the host runner (one line each, on the serial console):
    @@XGS check {"scenario", "name", "ok", "secs", "detail"}
    @@XGS info  {...}
and free text lines "[xgs-dom0 ...]" (progress) and "[diag] ..." (diagnostics after a failure).
"""

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid

sys.path.insert(0, "/opt/xgs")
import xapi  # noqa: E402  (src/xenguest_agent/xapi.py, copied by tests/system/run: xapi's rules)

CFG = json.load(open("/opt/xgs/config.json"))
T0 = time.monotonic()
FAILED = []
CLK_TCK = 100  # x86 Linux
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def UNIT_LINE(verb):
    """systemd's console status line for the agent's unit; systemd cuts it to the console's 80
    columns, the unit name included ("Started xenguest-agent.ser… Xen guest agent (...)")."""
    return re.compile(r"%s xenguest-agent\.ser(vice|\S*\u2026)" % verb)

# What the agent must publish before a tree counts as "complete" (relative to the home).
REQUIRED = ["attr/PVAddons/MajorVersion", "attr/PVAddons/MinorVersion", "attr/PVAddons/MicroVersion",
            "attr/PVAddons/BuildVersion", "attr/PVAddons/Installed", "data/os_name", "data/os_distro",
            "data/os_majorver", "data/os_minorver", "data/os_uname", "data/meminfo_total",
            "data/meminfo_free", "data/updated", "attr/vif/0/ipv4/0"]


# xenopsd's guest-writable directories (domain.ml `make`; the device/* ones as libxl makes them).
XENOPSD_RW_DIRS = ("feature", "error", "drivers", "control", "attr", "xenserver/attr", "data", "messages",
                   "vm-data", "hvmloader", "rrd")


class Fail(Exception):
    pass


class NotApplicable(Exception):
    """This Xen cannot do what the check needs (reported as n/a with the reason, not as passed)."""


class Fatal(Fail):
    """The scenario cannot go on (the guest is gone or unreachable)."""


def say(msg):
    print("[xgs-dom0 %6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def emit(kind, **kw):
    print("@@XGS %s %s" % (kind, json.dumps(kw, sort_keys=True)), flush=True)


def diag(title, text):
    print("[diag] ----- %s -----" % title, flush=True)
    for line in (text or "").splitlines()[-80:]:
        print("[diag] " + line, flush=True)


def run(cmd, timeout=180):
    try:
        return subprocess.run(cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail("timed out after %d s: %s" % (timeout, cmd)) from None


def sh(cmd, timeout=180):
    r = run(cmd, timeout)
    if r.returncode != 0:
        raise Fail("%s -> exit %d: %s" % (cmd if isinstance(cmd, str) else " ".join(cmd),
                                           r.returncode, r.stdout.strip()[-600:]))
    return r.stdout


def xs_read(path):
    r = run(["xenstore-read", path], 30)
    return r.stdout.rstrip("\n") if r.returncode == 0 else None


def xs_tree(home):
    """{relative path: value} of everything under home (xenstore-ls -f)."""
    r = run(["xenstore-ls", "-f", home], 30)
    tree = {}
    for line in r.stdout.splitlines():
        m = re.match(r'^(/\S*) = "(.*)"$', line)
        if m and m.group(1).startswith(home + "/"):
            tree[m.group(1)[len(home) + 1:]] = m.group(2)
    return tree


def wait_for(what, pred, timeout, interval=0.2):
    """Poll pred() until it returns a true value; return (value, seconds)."""
    t0 = time.monotonic()
    while True:
        val = pred()
        if val:
            return val, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise Fail("%s: not within %d s" % (what, timeout))
        time.sleep(interval)


class Guest:
    seq = int(time.time()) % 100000 * 100  # unique per run, monotonic over the run

    def __init__(self, sc):
        self.sc = sc
        self.name = "xgs-" + sc["name"]
        self.kind = sc["type"]
        self.xenopsd = sc["mode"] == "xenopsd"
        self.ip = sc["ip"]
        self.ip6 = sc["ip6"]
        self.domid = None
        self.cfg = "/etc/xen/%s.cfg" % self.name
        self.console_log = "/var/log/xen/console/guest-%s.log" % self.name
        self.systemd = sc.get("image") == "systemd"
        if self.systemd:
            # A Debian guest with systemd as PID 1, its whole root in the initramfs (sysguest.py);
            # the agent is the .deb's unit. systemd.show_status: the unit's start/stop lines on the
            # console even with `quiet`.
            ramdisk, memory = "/opt/xgs/sysguest.cpio.zst", CFG["sysguest_memory"]
            extra = "console=hvc0 rdinit=/sbin/init %s systemd.show_status=1 systemd.hostname=%s" % (
                "" if CFG["debug"] else "quiet", self.name)
            self.pid_cmd = "systemctl show -p MainPID --value xenguest-agent.service"
            self.log_cmd = "journalctl -u xenguest-agent.service --no-pager -o short-monotonic -n %d"
        else:
            ramdisk, memory = "/opt/xgs/domu.cpio.zst", CFG["domu_memory"]
            extra = "console=hvc0 %s xgs.name=%s xgs.ip=%s/24 xgs.ip6=%s/64 xgs.agent=%s xgs.debug=%d" % (
                "" if CFG["debug"] else "quiet", self.name, self.ip, self.ip6, CFG["agent"], CFG["debug"])
            self.pid_cmd = "cat /run/agent.pid"
            self.log_cmd = "tail -n %d /var/log/agent.log"
        self.ifname = "eth0"  # the systemd guest's is found after boot (udev names it)
        lines = [
            'name = "%s"' % self.name,
            'type = "%s"' % self.kind,
            'kernel = "/opt/xgs/vmlinuz"',
            'ramdisk = "%s"' % ramdisk,
            'extra = "%s"' % extra,
            "memory = %d" % memory,
            "vcpus = 1",
            # The systemd guest starts with 1 of 2 vCPUs: the vCPU hot-plug check adds the second.
        ] + (["maxvcpus = 2"] if self.systemd else []) + [
            'vif = [ "mac=%s,bridge=xenbr0" ]' % sc["mac"],
            'on_poweroff = "destroy"',
            'on_reboot = "restart"',
            'on_crash = "preserve"',
        ]
        if self.kind == "pvh":
            # Without it Xen loops emulating RDTSCP for a PVH guest under QEMU TCG (issue 6).
            lines.append('tsc_mode = "native"')
        os.makedirs("/etc/xen", exist_ok=True)
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")

    @property
    def home(self):
        return "/local/domain/%d" % self.domid

    def lookup_domid(self):
        r = run(["xl", "domid", self.name], 30)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else None

    def adopt(self, paused):
        """After create/restore/migrate: find the domid, do what xenopsd does, open the channel."""
        self.domid = self.lookup_domid()
        if self.domid is None:
            raise Fatal("no domain named %s" % self.name)
        if self.xenopsd:
            # xenopsd writes unique-domain-id at creation, before unpausing (CA-30811).
            sh(["xenstore-write", self.home + "/unique-domain-id", str(uuid.uuid4())])
            # ...and makes these directories the guest's own (rwperm_for_guest: owner domid, no
            # one else), where libxl leaves control/ read-only to it (xen-api ocaml/xenopsd/xc/
            # domain.ml, `make`: mksubdirs ... rwperm). Without it the agent's
            # control/feature-balloon and control/feature-static-ip-setting are refused (EACCES).
            sh("for d in %s; do p=%s/$d; xenstore-exists $p || xenstore-write $p ''; "
               "xenstore-chmod $p n%d || exit 1; done" % (" ".join(XENOPSD_RW_DIRS), self.home,
                                                          self.domid))
        self.open_channel()
        if paused:
            sh(["xl", "unpause", self.name])

    def open_channel(self):
        sh(["xenstore-write", self.home + "/test/cmd", ""])
        sh(["xenstore-chmod", "-r", self.home + "/test", "n%d" % self.domid])

    def cmd(self, command, timeout=30, check=True):
        """Run a shell command inside the guest; return (exit status, output)."""
        Guest.seq += 1
        seq = str(Guest.seq)
        b64 = base64.b64encode(command.encode()).decode()
        sh(["xenstore-write", self.home + "/test/cmd", "%s %d %s" % (seq, timeout, b64)])

        def result():
            val = xs_read(self.home + "/test/result")
            return val if val and val.split()[0] == seq else None

        try:
            val, _ = wait_for("guest command %r" % command, result, timeout + 20, 0.1)
        except Fail as exc:
            raise Fatal(str(exc)) from None
        _, rc, nchunks = val.split()
        data = "".join(xs_read("%s/test/out/%d" % (self.home, i)) or "" for i in range(int(nchunks)))
        out = base64.b64decode(data).decode("utf-8", "replace")
        if check and int(rc) != 0:
            raise Fail("guest: %s -> exit %s: %s" % (command, rc, out.strip()[-400:]))
        return int(rc), out

    def crashed(self):
        r = run(["xl", "list", self.name], 30)
        lines = r.stdout.strip().splitlines()
        return r.returncode == 0 and len(lines) > 1 and "c" in lines[-1].split()[4]

    def wait_channel(self, timeout):
        def up():
            if self.crashed():
                raise Fatal("the guest crashed (see the Xen lines of the console log)")
            now = self.lookup_domid()
            if now != self.domid:
                # Xen turns an HVM/PVH triple fault into a reboot; xl then restarts the domain.
                raise Fatal("the guest restarted by itself (domid %s -> %s): it crashed (see the Xen "
                            "lines of the console log)" % (self.domid, now))
            try:
                return self.cmd("true", 10)[0] == 0  # waits up to 30 s for an answer
            except Fatal:
                return False  # still booting: check for a crash, ask again

        _, secs = wait_for("guest command channel", up, timeout, 1)
        return secs

    def tree(self):
        return xs_tree(self.home)

    def tree_complete(self, tree):
        missing = [k for k in REQUIRED if k not in tree]
        if missing:
            return None
        if tree.get("attr/vif/0/ipv4/0") != self.ip:
            return None
        return tree

    def agent_dead(self):
        """None while the agent runs, else the tail of its log (it exited)."""
        rc, out = self.cmd("p=$(%s); [ \"${p:-0}\" != 0 ] && kill -0 $p 2>/dev/null || { echo \"agent "
                           "pid $p is gone; kernel:\"; dmesg | grep -iE "
                           "'segfault|trap|killed process|oom' | tail -n 5; echo 'agent log:'; "
                           "%s; }" % (self.pid_cmd, self.log_cmd % 25), 20, check=False)
        return out if out.strip() else None

    def wait_tree(self, timeout):
        last = {"alive_check": time.monotonic()}

        def complete():
            last["tree"] = self.tree()
            done = self.tree_complete(last["tree"])
            if not done and time.monotonic() - last["alive_check"] > 8:
                last["alive_check"] = time.monotonic()
                dead = self.agent_dead()
                if dead:
                    raise Fail("the agent exited; its log ends:\n" + dead)
            return done

        try:
            return wait_for("complete agent tree", complete, timeout, 0.3)
        except Fail as exc:
            if "the agent exited" in str(exc):
                raise
            have = last.get("tree", {})
            missing = [k for k in REQUIRED if k not in have]
            raise Fail("%s; missing %s; attr/vif/0/ipv4/0=%r" % (exc, missing or "nothing",
                                                                  have.get("attr/vif/0/ipv4/0"))) \
                from None

    def facts(self):
        _, out = self.cmd("uname -r; grep MemTotal /proc/meminfo; . /etc/os-release; "
                          "echo $ID; echo $VERSION_ID")
        lines = out.split("\n")
        return {"uname": lines[0].strip(), "memtotal": int(lines[1].split()[1]),
                "id": lines[2].strip(), "version_id": lines[3].strip()}

    def agent_stats(self):
        """(pid, cpu seconds, seconds alive, VmRSS KiB, VmHWM KiB) of the agent in the guest."""
        _, out = self.cmd("p=$(%s); echo $p; cat /proc/$p/stat; cat /proc/uptime; "
                          "grep -E '^Vm(RSS|HWM)' /proc/$p/status" % self.pid_cmd)
        lines = out.strip().split("\n")
        pid = int(lines[0])
        fields = lines[1].rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        start = int(fields[19]) / CLK_TCK
        alive = float(lines[2].split()[0]) - start
        vm = {line.split(":")[0]: int(line.split()[1]) for line in lines[3:]}
        return {"pid": pid, "cpu": cpu, "alive": alive, "start": start, "rss": vm.get("VmRSS"),
                "hwm": vm.get("VmHWM")}

    def diagnostics(self):
        diag("xl list", run(["xl", "list"], 30).stdout)
        if self.domid is not None:
            diag("xenstore-ls %s" % self.home, run(["xenstore-ls", "-f", self.home], 30).stdout)
            try:
                diag("agent log (guest: %s)" % (self.log_cmd % 60),
                     self.cmd(self.log_cmd % 60, 20, check=False)[1])
                if self.systemd:
                    diag("guest systemctl status / hooks log", self.cmd(
                        "systemctl --no-pager status xenguest-agent.service; systemctl --failed "
                        "--no-pager; cat /var/log/xgs-hooks.log", 20, check=False)[1])
            except Fail as exc:
                diag("agent log", "unreachable: %s" % exc)
        try:
            with open(self.console_log, errors="replace") as f:
                diag("guest console " + self.console_log, f.read())
        except OSError as exc:
            diag("guest console", str(exc))


def validate(g, tree, facts):
    """xapi-valid values (xapi_guest_agent.ml / xapi_pv_driver_version.ml read these)."""
    results = []

    def chk(name, ok, detail):
        results.append((name, bool(ok), detail))

    ver = [tree.get("attr/PVAddons/%sVersion" % p) for p in ("Major", "Minor", "Micro", "Build")]
    chk("pvaddons", all(v is not None and re.fullmatch(r"\d+", v) for v in ver)
        and tree.get("attr/PVAddons/Installed") == "1",
        "version %s, Installed=%s" % (".".join(str(v) for v in ver), tree.get("attr/PVAddons/Installed")))
    osok = (tree.get("data/os_distro") == facts["id"]
            and tree.get("data/os_majorver") == facts["version_id"].split(".")[0]
            and re.fullmatch(r"\d+", tree.get("data/os_minorver") or "x")
            and re.fullmatch(r"[ -~]+", tree.get("data/os_name") or "")
            and tree.get("data/os_uname") == facts["uname"])
    chk("os facts", osok, "%s | %s %s.%s | %s (guest: %s %s, uname %s)" % (
        tree.get("data/os_name"), tree.get("data/os_distro"), tree.get("data/os_majorver"),
        tree.get("data/os_minorver"), tree.get("data/os_uname"), facts["id"], facts["version_id"],
        facts["uname"]))
    total, free = tree.get("data/meminfo_total", ""), tree.get("data/meminfo_free", "")
    memok = (re.fullmatch(r"\d+", total) and re.fullmatch(r"\d+", free)
             and abs(int(total) - facts["memtotal"]) <= facts["memtotal"] * 0.02
             and 0 < int(free) <= int(total))
    chk("meminfo KiB", memok, "total %s free %s (guest MemTotal %d kB)" % (total, free, facts["memtotal"]))
    v4 = sorted(v for k, v in tree.items() if k.startswith("attr/vif/0/ipv4/"))
    v6 = sorted(v for k, v in tree.items() if k.startswith("attr/vif/0/ipv6/"))
    chk("vif 0 addresses", tree.get("attr/vif/0/ipv4/0") == g.ip and g.ip6 in v6,
        "ipv4/0=%s ipv4=%s ipv6=%s" % (tree.get("attr/vif/0/ipv4/0"), v4, v6))
    # What xapi makes of the tree (the executable model, xapi.py, written from xen-api's
    # xapi_guest_agent.ml / xapi_pv_driver_version.ml / squeeze_xen.ml): the verdicts XenCenter
    # shows, next to the hand-written facts above.
    view = xapi.read_guest(tree)
    nets, drv = dict(view.metrics.networks), view.drivers
    chk("xapi model: tools, networks", drv.detected and drv.kind == "Linux"
        and nets.get("0/ip") == g.ip and nets.get("0/ipv4/0") == g.ip
        and g.ip6 in [v for k, v in nets.items() if k.startswith("0/ipv6/")]
        and view.metrics.os_version.get("distro") == facts["id"]
        and view.metrics.os_version.get("uname") == facts["uname"]
        and view.squeezed.has_guest_agent,
        "PV_drivers_version %s %d.%d.%d.%d%s; networks %s; os_version distro=%s uname=%s; "
        "squeezed guest agent %s" % (
            drv.kind, drv.major, drv.minor, drv.micro, drv.build,
            " (%s)" % drv.reason if drv.reason else "", nets, view.metrics.os_version.get("distro"),
            view.metrics.os_version.get("uname"), view.squeezed.has_guest_agent))
    if g.systemd:
        # systemd-networkd is running there: the agent's static IP backend (docs/static-ip.md), so
        # xapi would accept vif-configure-ipv4 (xapi_vif.ml assert_has_feature_static_ip_setting).
        chk("static-ip feature advertised", tree.get("control/feature-static-ip-setting") == "1",
            "control/feature-static-ip-setting=%r" % tree.get("control/feature-static-ip-setting"))
    chk("updated+hotplug", "data/updated" in tree and tree.get("feature/hotplug/vif") == "1",
        "data/updated=%r feature/hotplug/vif=%r feature/hotplug/vbd=%r control/feature-balloon=%r" % (
            tree.get("data/updated"), tree.get("feature/hotplug/vif"),
            tree.get("feature/hotplug/vbd"), tree.get("control/feature-balloon")))
    return results


class Scenario:
    def __init__(self, sc):
        self.sc = sc
        self.g = Guest(sc)
        self.stats = []
        self.ok = True

    def check(self, name, ok, secs=None, detail=""):
        emit("check", scenario=self.sc["name"], name=name, ok=None if ok is None else bool(ok),
             secs=None if secs is None else round(secs, 2), detail=detail.split("\n")[0])
        first, _, rest = detail.partition("\n")
        say("%s %-28s %s %s" % (self.sc["name"], name, "n/a " if ok is None else "ok  " if ok else "FAIL",
                                ("%.2fs " % secs if secs is not None else "") + first))
        if rest:
            diag("%s: %s" % (self.sc["name"], name), rest)
        if ok is not None and not ok:
            self.ok = False
            FAILED.append("%s: %s" % (self.sc["name"], name))

    def step(self, name, fn):
        """Run fn() -> (secs, detail); a Fail is a failed check, a Fatal also ends the scenario."""
        t0 = time.monotonic()
        try:
            secs, detail = fn()
            self.check(name, True, secs, detail)
            return True
        except NotApplicable as exc:
            self.check(name, None, time.monotonic() - t0, str(exc))
            return False
        except Fail as exc:
            self.check(name, False, time.monotonic() - t0, str(exc))
            if isinstance(exc, Fatal):
                raise
            return False

    def sample(self, label):
        try:
            s = self.g.agent_stats()
            s["at"] = label
            self.stats.append(s)
            return s
        except Fail as exc:
            say("agent stats at %s: %s" % (label, exc))
            return None

    def tree_checks(self, label, timeout):
        tree, secs = self.g.wait_tree(timeout)
        facts = self.g.facts()
        for name, ok, detail in validate(self.g, tree, facts):
            self.check("%s: %s" % (label, name), ok, None, detail)
        return secs, "%d keys on domid %d" % (len(tree), self.g.domid)

    # -- the steps -------------------------------------------------------------------------------

    def create(self):
        """xl create until user space answers. A guest kernel that dies before that (seen once in
        many boots under TCG: a PVH guest's triple fault in early boot, before the agent exists)
        is booted once more, and the detail says so; a second failure fails the check."""
        t0 = time.monotonic()
        retried = ""
        for attempt in (1, 2):
            t1 = time.monotonic()
            sh(["xl", "create"] + (["-p"] if self.g.xenopsd else []) + [self.g.cfg], 120)
            created = time.monotonic() - t1
            self.g.adopt(paused=self.g.xenopsd)
            try:
                secs = self.g.wait_channel(180)
                break
            except Fatal as exc:
                if attempt == 2 or not ("crashed" in str(exc) or "restarted by itself" in str(exc)):
                    raise
                say("%s: first boot failed (%s); booting once more" % (self.sc["name"], exc))
                retried = "; FIRST BOOT FAILED (%s), booted again" % exc
                run(["xl", "destroy", self.g.name], 60)
        return time.monotonic() - t0, "xl create %.1fs, guest userspace up %.1fs later, domid %d%s%s" % (
            created, secs, self.g.domid, " (unique-domain-id written while paused)" if self.g.xenopsd
            else "", retried)

    def address_change(self):
        g = self.g
        add4, add6 = g.sc["extra_ip"], g.sc["extra_ip6"]
        dev = g.ifname
        g.cmd("ip addr add %s/24 dev %s && ip -6 addr add %s/64 dev %s" % (add4, dev, add6, dev))

        def present():
            t = g.tree()
            vals = set(v for k, v in t.items() if k.startswith("attr/vif/0/ip"))
            return t if add4 in vals and add6 in vals else None

        tree, t_add = wait_for("added %s and %s in attr/vif/0" % (add4, add6), present,
                               CFG["address_timeout"], 0.2)
        stable = tree.get("attr/vif/0/ipv4/0") == g.ip
        g.cmd("ip addr del %s/24 dev %s && ip -6 addr del %s/64 dev %s" % (add4, dev, add6, dev))

        def absent():
            t = g.tree()
            vals = set(v for k, v in t.items() if k.startswith("attr/vif/0/ip"))
            return t if add4 not in vals and add6 not in vals and t.get("attr/vif/0/ipv4/0") == g.ip \
                else None

        _, t_del = wait_for("removed %s and %s gone from attr/vif/0" % (add4, add6), absent,
                            CFG["address_timeout"], 0.2)
        if not stable:
            raise Fail("ipv4/0 changed when an address was added: %s" % tree.get("attr/vif/0/ipv4/0"))
        return t_add + t_del, "add seen %.2fs, removal seen %.2fs after the command returned" % (t_add, t_del)

    def save_restore(self):
        g = self.g
        before = self.sample("before save")
        old = g.domid
        path = "/var/lib/xen/save/%s.chk" % g.name
        t0 = time.monotonic()
        sh(["xl", "save", g.name, path], 180)
        t_save = time.monotonic() - t0
        t1 = time.monotonic()
        sh(["xl", "restore"] + (["-p"] if g.xenopsd else []) + [path], 180)
        t_restore = time.monotonic() - t1
        os.remove(path)
        g.adopt(paused=g.xenopsd)
        tree, t_tree = g.wait_tree(CFG["tree_timeout"])
        after = self.sample("after restore")
        if g.domid == old:
            raise Fail("domid did not change (%d)" % old)
        same = before and after and before["pid"] == after["pid"]
        return time.monotonic() - t0, "save %.1fs, restore %.1fs, tree back %.2fs later on domid %d->%d%s" % (
            t_save, t_restore, t_tree, old, g.domid, "" if same else " (agent pid changed!)")

    def migrate(self):
        g = self.g
        old = g.domid
        p = ["-p"] if g.xenopsd else []
        receiver = "xl migrate-receive" + (" -p" if g.xenopsd else "")
        t0 = time.monotonic()
        r = run(["xl", "migrate", "-s", ""] + p + [g.name, receiver], 240)
        t_mig = time.monotonic() - t0
        if r.returncode != 0 and "Failed to enable logdirty: 95" in r.stdout:
            # Live migration needs log-dirty mode; for a PV guest that is shadow paging, which this
            # Debian hypervisor build refuses with EOPNOTSUPP. The guest stays on the sender.
            _, t_back = wait_for("guest running again after the refused migration",
                                 lambda: g.lookup_domid() == old and g.cmd("true", 30)[0] == 0, 60)
            g.wait_tree(CFG["tree_timeout"])
            raise NotApplicable("Xen refuses log-dirty for a PV guest here (EOPNOTSUPP, no shadow "
                                "paging): no live migration of PV guests; the guest kept running with "
                                "its tree")
        if r.returncode != 0:
            raise Fail("xl migrate -> exit %d: %s" % (r.returncode, r.stdout.strip()[-600:]))
        g.adopt(paused=g.xenopsd)
        tree, t_tree = g.wait_tree(CFG["tree_timeout"])
        self.sample("after migrate")
        if g.domid == old:
            raise Fail("domid did not change (%d)" % old)
        return time.monotonic() - t0, "migrate %.1fs, tree back %.2fs later on domid %d->%d" % (
            t_mig, t_tree, old, g.domid)

    def watch_note(self, domid, timeout=60):
        """rc.shutdown's note under the (old) domain's test/, polled until the domain is gone."""
        path = "/local/domain/%d/test/note" % domid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            val = xs_read(path)
            if val:
                return val
            if run(["xl", "list", str(domid)], 30).returncode != 0:
                return None
            time.sleep(0.2)
        return None

    def console_text(self):
        try:
            with open(self.g.console_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def reboot(self):
        g = self.g
        self.sample("before reboot")
        old = g.domid
        mark = len(self.console_text())
        t0 = time.monotonic()
        sh(["xl", "reboot", g.name], 60)
        note = self.watch_note(old)
        dom, t_down = wait_for("a new domain after reboot", lambda: (g.lookup_domid() or old) != old
                               and g.lookup_domid(), 120, 0.3)
        g.adopt(paused=False)
        t1 = time.monotonic()
        g.wait_channel(180)
        tree, t_tree = g.wait_tree(CFG["tree_timeout"])
        t_up = time.monotonic() - t1
        text = self.console_text()[mark:]
        # Evidence of an orderly reboot: rc.shutdown's note in XenStore (read before the old domain
        # went away) or the kernel's last line on the console (xenconsoled may not log a console
        # of a domain that arrived by migration).
        if not note and "reboot: Restarting system" not in text:
            raise Fail("no sign of an orderly reboot (no rc.shutdown note, no 'reboot: Restarting "
                       "system' on the console; domid %d->%d)" % (old, g.domid))
        return time.monotonic() - t0, "down+recreated %.1fs, tree back %.1fs later, domid %d->%d; %s" % (
            t_down, t_up, old, g.domid, note or "console: reboot: Restarting system")

    def shutdown(self):
        g = self.g
        self.sample("before shutdown")
        mark = len(self.console_text())
        t0 = time.monotonic()
        r = run(["xl", "shutdown", "-w", g.name], 120)
        t_xl = time.monotonic() - t0
        if r.returncode != 0:
            raise Fail("xl shutdown -w -> exit %d: %s" % (r.returncode, r.stdout.strip()[-400:]))
        # `xl shutdown -w` can return before the domain is destroyed (issue 6): poll.
        _, t_gone = wait_for("domain destroyed", lambda: g.lookup_domid() is None, 60, 0.2)
        text = self.console_text()[mark:]
        stopped = re.search(r"agent stopped after (\d+)/10 s", text)
        # busybox init's orderly path, then the kernel's last word (a PV guest without a power-off
        # handler halts, which Xen turns into a poweroff shutdown).
        if "Requesting system poweroff" not in text or not re.search(r"reboot: (Power down|System halted)",
                                                                     text):
            raise Fail("guest console shows no orderly poweroff ('Requesting system poweroff' then "
                       "'reboot: Power down' or 'System halted')")
        return time.monotonic() - t0, "xl shutdown -w %.1fs, gone %.1fs later%s" % (
            t_xl, t_gone, "; agent stopped on SIGTERM in %.1fs" % (int(stopped.group(1)) / 10)
            if stopped else "; agent stop not seen on console")

    # -- the systemd guest (the agent as the .deb installs it) ----------------------------------

    def console_since(self, mark):
        """The guest console from `mark` on, without the colour codes systemd puts around names."""
        return ANSI.sub("", self.console_text()[mark:])

    def find_ifname(self):
        _, out = self.g.cmd("for i in /sys/class/net/*; do [ \"$(cat $i/address)\" = %s ] && "
                            "basename $i; done; true" % self.sc["mac"])
        if not out.strip():
            raise Fail("no interface with MAC %s in the guest" % self.sc["mac"])
        self.g.ifname = out.split()[0]

    def service_active(self, mark):
        """The unit the package installed and enabled is active, and the console says it started."""
        g = self.g
        t0 = time.monotonic()

        def active():
            return g.cmd("systemctl is-active xenguest-agent.service", 20, check=False)[1].strip() \
                == "active"

        try:
            wait_for("xenguest-agent.service active", active, 120, 1)
        except Fail as exc:
            raise Fail("%s; systemctl status:\n%s" % (exc, g.cmd(
                "systemctl --no-pager status xenguest-agent.service", 20, check=False)[1])) from None
        secs = time.monotonic() - t0
        self.find_ifname()
        _, out = g.cmd("systemctl is-enabled xenguest-agent.service; systemctl show -p FragmentPath "
                       "-p ExecStart -p NRestarts -p MainPID xenguest-agent.service; "
                       "dpkg-query -W -f '${Status} ${Version}\\n' xenguest-agent; "
                       "dpkg -S /usr/bin/xenguest-agent; systemctl is-system-running; "
                       "ls /opt/agent /opt/xenguest-agent 2>&1 | head -2; true")
        lines = out.strip().split("\n")
        props = dict(ln.split("=", 1) for ln in lines if re.match(r"^(FragmentPath|ExecStart|NRestarts|"
                                                                 r"MainPID)=", ln))
        problems = []
        if lines[0] != "enabled":
            problems.append("is-enabled: %s" % lines[0])
        if props.get("FragmentPath") not in ("/lib/systemd/system/xenguest-agent.service",
                                             "/usr/lib/systemd/system/xenguest-agent.service"):
            problems.append("unit file %s, not the package's" % props.get("FragmentPath"))
        if "path=/usr/bin/xenguest-agent " not in props.get("ExecStart", ""):
            problems.append("ExecStart %s" % props.get("ExecStart"))
        if props.get("MainPID", "0") == "0":
            problems.append("no main process (MainPID=0)")
        if props.get("NRestarts") != "0":
            problems.append("NRestarts=%s" % props.get("NRestarts"))
        status = [ln for ln in lines if ln.startswith("install ok installed ")]
        if not status:
            problems.append("dpkg: xenguest-agent not installed")
        if not any(ln.startswith("xenguest-agent: /usr/bin/xenguest-agent") for ln in lines):
            problems.append("/usr/bin/xenguest-agent not owned by the package")
        if not any("No such file" in ln for ln in lines[-2:]):
            problems.append("a copied agent tree exists: %s" % lines[-2:])
        # With Type=notify systemd prints "Started" at READY=1, when is-active turns active;
        # xenconsoled writes the console log a little later: wait for the line, not for the state.
        try:
            console, _ = wait_for("'Started xenguest-agent.service' on the console", lambda: (
                lambda text: text if UNIT_LINE("Started").search(text) else None)(
                    self.console_since(mark)), 30, 0.5)
        except Fail:
            console = self.console_since(mark)
        started = UNIT_LINE("Started").search(console)
        if not started:
            problems.append("the console shows no 'Started xenguest-agent.service'")
        if problems:
            raise Fail("; ".join(problems) + ("" if started else "\nguest console (%d bytes since the "
                       "mark), its lines about the agent or else its head:\n%s" % (
                           len(console), "\n".join([ln for ln in console.splitlines()
                                                    if "xenguest" in ln][:20]
                                                   or console.splitlines()[:40]))))
        state = [ln for ln in lines if ln in ("running", "degraded", "starting")]
        return secs, "enabled + active %.1fs after the channel, pid %s, %s, system %s; console: Started" % (
            secs, props.get("MainPID"), status[0].replace("install ok installed ", "package "),
            state[0] if state else "?")

    def reload(self):
        """`systemctl reload` (the unit's ExecReload: SIGHUP) republishes: a key removed from dom0
        is back, the same process logged the SIGHUP republish."""
        g = self.g
        count = ("journalctl -u xenguest-agent.service --no-pager -o cat | grep -c 'SIGHUP: full "
                 "republish'; %s" % g.pid_cmd)
        before = g.cmd(count + "; true")[1].split()
        key = g.home + "/data/os_uname"
        sh(["xenstore-rm", key])
        t0 = time.monotonic()
        g.cmd("systemctl reload xenguest-agent.service")
        _, secs = wait_for("%s back after the reload" % key, lambda: xs_read(key), 60, 0.2)
        _, t_log = wait_for("the SIGHUP republish in the journal", lambda: int(g.cmd(
            count + "; true")[1].split()[0]) > int(before[0]), 30, 0.5)
        after = g.cmd(count + "; true")[1].split()
        if after[1] != before[1]:
            raise Fail("the agent's pid changed on reload: %s -> %s" % (before[1], after[1]))
        return time.monotonic() - t0, "key back %.2fs after `systemctl reload`; journal: SIGHUP republish " \
            "(%s -> %s), same pid %s" % (secs, before[0], after[0], after[1])

    def journal_priorities(self):
        """The agent's lines reach the journal with their syslog priority: systemd sets
        JOURNAL_STREAM to stderr's device:inode (systemd.exec(5)), the agent then starts each
        line with an sd-daemon(3) prefix (``<6>`` info), and journald turns that prefix into the
        entry's PRIORITY and strips it.  So the start line is found at info and not at warning,
        and no message still begins with a ``<N>`` prefix."""
        g = self.g
        t0 = time.monotonic()
        unit = "journalctl -u xenguest-agent.service --no-pager -o cat"
        _, out = g.cmd("%s -p info..info | grep -c ' starting: '; %s -p warning | grep -c "
                       "' starting: '; %s | grep -c '^<[0-7]>'; true" % (unit, unit, unit))
        counts = [int(n) for n in out.split()[:3]]
        if len(counts) != 3 or counts[0] < 1 or counts[1] != 0 or counts[2] != 0:
            raise Fail("start lines at info / at warning / messages with a <N> prefix left: %s"
                       % (counts,))
        return time.monotonic() - t0, "start line at PRIORITY=6 (%d), none at warning, no prefix " \
            "left in any message" % counts[0]

    def plain_stop(self):
        """`systemctl stop` outside a shutdown runs no shutdown hook; `start` brings the tree back."""
        g = self.g
        t0 = time.monotonic()
        g.cmd("systemctl stop xenguest-agent.service", 60)
        _, out = g.cmd("systemctl is-active xenguest-agent.service; grep 'xgs-hook pre-' "
                       "/var/log/xgs-hooks.log 2>/dev/null; true")
        g.cmd("systemctl start xenguest-agent.service", 60)
        state, hooks = out.split("\n", 1)[0], out.split("\n", 1)[1].strip()
        if state != "inactive":
            raise Fail("after systemctl stop the unit is %r" % state)
        if hooks:
            raise Fail("a shutdown hook ran on a plain systemctl stop: %s" % hooks)
        _, t_tree = g.wait_tree(CFG["tree_timeout"])
        return time.monotonic() - t0, "stopped (inactive), no pre-* hook ran; started again, tree " \
            "complete %.1fs later" % t_tree

    def hook_ran(self, event):
        """The hook of `event` ran in the guest for the current domain (its line in the hooks log)."""
        g = self.g
        want = re.compile(r"xgs-hook %s ran: .*domid=%d\b" % (re.escape(event), g.domid))

        def seen():
            out = g.cmd("cat /var/log/xgs-hooks.log 2>/dev/null; true", 20)[1]
            return [ln for ln in out.splitlines() if want.search(ln)]

        try:
            lines, secs = wait_for("the %s hook for domid %d" % (event, g.domid), seen, 60, 0.5)
        except Fail as exc:
            raise Fail("%s\nthe agent's journal about hooks and resume:\n%s" % (exc, g.cmd(
                "journalctl -u xenguest-agent.service --no-pager -o cat | grep -iE 'hook|resum|migrat|"
                "domid|refus|trust' | tail -n 30; cat /var/log/xgs-hooks.log; true", 20)[1])) from None
        return secs, lines[-1]

    def jobs_seen(self, text):
        jobs = [ln.split("[xgs-jobs] ", 1)[1] for ln in text.splitlines() if "[xgs-jobs] " in ln]
        if jobs:
            diag("%s: systemctl list-jobs while the agent stopped" % self.sc["name"], "\n".join(jobs))
        return jobs

    def sd_reboot(self):
        g = self.g
        self.sample("before reboot")
        old = g.domid
        mark = len(self.console_text())
        t0 = time.monotonic()
        sh(["xl", "reboot", g.name], 60)
        note = self.watch_note(old, 120)
        dom, t_down = wait_for("a new domain after reboot", lambda: (g.lookup_domid() or old) != old
                               and g.lookup_domid(), 180, 0.3)
        self.reboot_mark = len(self.console_text())
        g.adopt(paused=False)
        if g.ip == self.sc["static_ip"]:
            # xenopsd writes a VIF's static-ip-setting at every plug, so on every domain build
            # (xenstore_of_static_ip_setting); xl does not: dom0 does it for the new domain.
            self.write_static()
        t1 = time.monotonic()
        g.wait_channel(240)
        tree, t_tree = g.wait_tree(CFG["tree_timeout"])
        t_up = time.monotonic() - t1
        text = self.console_since(mark)
        self.jobs_seen(text)
        hook = (note if note and "xgs-hook pre-reboot ran" in note else None) or next(
            (ln for ln in text.splitlines() if "[xgs-hook pre-reboot ran" in ln), None)
        if not hook:
            raise Fail("no sign of the pre-reboot hook (test/note %r, nothing on the console); "
                       "domid %d->%d" % (note, old, g.domid))
        if "request=reboot" not in hook:
            raise Fail("the pre-reboot hook ran without request=reboot: %s" % hook)
        return time.monotonic() - t0, "hook: %s; down+recreated %.1fs, tree back %.1fs later, " \
            "domid %d->%d" % (hook.strip("[]"), t_down, t_up, old, g.domid)

    def sd_shutdown(self):
        g = self.g
        self.sample("before shutdown")
        old = g.domid
        mark = len(self.console_text())
        t0 = time.monotonic()
        proc = subprocess.Popen(["xl", "shutdown", "-w", g.name], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True)
        note = self.watch_note(old, 120)
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise Fail("xl shutdown -w did not return within 180 s") from None
        t_xl = time.monotonic() - t0
        if proc.returncode != 0:
            raise Fail("xl shutdown -w -> exit %d: %s" % (proc.returncode, out.strip()[-400:]))
        _, t_gone = wait_for("domain destroyed", lambda: g.lookup_domid() is None, 60, 0.2)
        text = self.console_since(mark)
        jobs = self.jobs_seen(text)
        hook = (note if note and "xgs-hook pre-shutdown ran" in note else None) or next(
            (ln for ln in text.splitlines() if "[xgs-hook pre-shutdown ran" in ln), None)
        problems = []
        if not hook:
            problems.append("no sign of the pre-shutdown hook (test/note %r, nothing on the console)"
                            % note)
        elif "request=poweroff" not in hook:
            problems.append("the pre-shutdown hook ran without request=poweroff: %s" % hook)
        if not re.search(r"reboot: (Power down|System halted)", text):
            problems.append("the console shows no 'reboot: Power down' (orderly poweroff)")
        stopped = UNIT_LINE("Stopped").search(text)
        if not stopped:
            problems.append("the console shows no 'Stopped xenguest-agent.service'")
        if problems:
            raise Fail("; ".join(problems))
        return time.monotonic() - t0, "hook: %s; xl shutdown -w %.1fs, gone %.1fs later; console: " \
            "Stopped xenguest-agent.service, reboot: Power down; %d job(s) queued while it stopped" % (
                hook.strip("[]"), t_xl, t_gone, len(jobs))

    # -- issue 13 on the real Xen: status, vCPU hot-plug, static IP; issue 9: the watchdog -------

    def status_vs_model(self):
        """`xenguest-agent status --format json` in the guest says what dom0 reads from the same
        tree through the xapi model (xapi.py), and exits 0 (nothing xapi needs is missing)."""
        g = self.g
        t0 = time.monotonic()
        rc, out = g.cmd("xenguest-agent status --format json", 60, check=False)
        t_status = time.monotonic() - t0
        view = xapi.read_guest(g.tree())
        try:
            js = json.loads(out)
        except ValueError:
            raise Fail("status printed no JSON (exit %d): %s" % (rc, out.strip()[-400:])) from None
        drv, pv = view.drivers, js.get("PV_drivers_version") or {}
        model = {"networks": dict(view.metrics.networks), "os_version": dict(view.metrics.os_version),
                 "PV_drivers_version": {"kind": drv.kind, "major": drv.major, "minor": drv.minor,
                                        "micro": drv.micro, "build": drv.build,
                                        "map": dict(view.metrics.pv_drivers_version)}}
        said = {"networks": js.get("networks"), "os_version": js.get("os_version"),
                "PV_drivers_version": {k: pv.get(k) for k in model["PV_drivers_version"]}}
        problems = ["%s: guest says %s, dom0's model %s" % (k, said[k], model[k])
                    for k in model if said[k] != model[k]]
        if rc != 0 or js.get("exit_status") != 0:
            problems.append("exit %d (exit_status %s), problems: %s" % (rc, js.get("exit_status"),
                                                                         js.get("problems")))
        if model["networks"].get("0/ip") != g.ip or drv.kind != "Linux":
            problems.append("dom0's model: networks %s, drivers %s (want 0/ip=%s, Linux)" % (
                model["networks"], drv.kind, g.ip))
        if problems:
            raise Fail("; ".join(problems))
        return t_status, "exit 0 in %.1fs; equal to dom0's model: PV_drivers_version %s %d.%d.%d.%d, " \
            "%d networks (0/ip=%s), os_version %s %s.%s; domain type %s" % (
                t_status, drv.kind, drv.major, drv.minor, drv.micro, drv.build, len(model["networks"]),
                g.ip, model["os_version"].get("distro"), model["os_version"].get("major"),
                model["os_version"].get("minor"), (js.get("domain_type") or {}).get("kind"))

    def unit_props(self):
        _, out = self.g.cmd("systemctl show -p MainPID -p NRestarts -p ActiveState -p SubState "
                            "xenguest-agent.service")
        return dict(ln.split("=", 1) for ln in out.strip().splitlines() if "=" in ln)

    def cpus(self):
        """(the guest's online CPU list, cpu1/online or '-' when the file is absent)."""
        _, out = self.g.cmd("cat /sys/devices/system/cpu/online; cat /sys/devices/system/cpu/cpu1/online "
                            "2>/dev/null || echo -")
        return tuple(out.split()[:2])

    def vcpu_hotplug(self):
        """Started with 1 of 2 vCPUs; `xl vcpu-set 2` -> CPU 1 online in the guest (Linux only
        registers it, drivers/xen/cpu_hotplug.c: the agent's uevent handler onlines it; Debian has
        no udev rule that would); `xl vcpu-set 1` -> gone, the guest and the agent carry on."""
        g = self.g
        before, props = self.cpus(), self.unit_props()
        if before[0] != "0":
            raise Fail("before vcpu-set the guest's online CPUs are %s (want 0: vcpus=1, maxvcpus=2)"
                       % before[0])
        t0 = time.monotonic()
        sh(["xl", "vcpu-set", g.name, "2"], 60)
        t_xl = time.monotonic() - t0
        _, t_on = wait_for("CPU 1 online in the guest", lambda: self.cpus() == ("0-1", "1"), 60, 0.1)
        t_on += t_xl
        _, log = g.cmd("journalctl -u xenguest-agent.service --no-pager -o cat | grep -i 'onlined "
                       "hot-added\\|hot-added.*online' | tail -n 1; true")
        t1 = time.monotonic()
        sh(["xl", "vcpu-set", g.name, "1"], 60)
        wait_for("CPU 1 gone from the guest", lambda: self.cpus()[0] == "0", 60, 0.1)
        t_off = time.monotonic() - t1
        avail = xs_read(g.home + "/cpu/1/availability")
        _, t_tree = g.wait_tree(CFG["tree_timeout"])
        after = self.unit_props()
        if (after.get("MainPID"), after.get("NRestarts"), after.get("ActiveState")) != (
                props.get("MainPID"), props.get("NRestarts"), "active"):
            raise Fail("the agent did not carry on: before %s, after %s" % (props, after))
        if not log.strip():
            raise Fail("CPU 1 came online, but the agent's journal does not say it onlined it")
        return t_on + t_off, "CPU 1 online %.2fs after `xl vcpu-set 2` (xl %.2fs); offline %.2fs after " \
            "`xl vcpu-set 1` (cpu/1/availability=%s); agent pid %s unchanged, tree complete; journal: %s" % (
                t_on, t_xl, t_off, avail, after.get("MainPID"), log.strip())

    def watchdog(self):
        """SIGSTOP the agent's main process: no WATCHDOG=1 comes, systemd's WatchdogSec=45s kills
        it (SIGABRT), Restart=on-failure starts a new one (issue 9: a wedged loop is restarted)."""
        g = self.g
        before = self.unit_props()
        old = before.get("MainPID")
        count = "journalctl -u xenguest-agent.service --no-pager -o cat | grep -c 'Watchdog timeout'; true"
        n0 = int(g.cmd(count)[1].split()[0])
        t0 = time.monotonic()
        g.cmd("systemctl kill --kill-whom=main -s STOP xenguest-agent.service")
        _, state = g.cmd("awk '{print $3}' /proc/%s/stat" % old)
        if state.strip() != "T":
            raise Fail("after SIGSTOP the agent (pid %s) is in state %r, not T (stopped)" % (old, state))

        def restarted():
            p = self.unit_props()
            return p if p.get("MainPID") not in ("0", old) and p.get("ActiveState") == "active" \
                and p.get("SubState") == "running" else None

        after, secs = wait_for("a new agent process after the watchdog", restarted, 150, 1)
        n1 = int(g.cmd(count)[1].split()[0])
        _, t_tree = g.wait_tree(CFG["tree_timeout"])
        problems = []
        if int(after.get("NRestarts", -1)) != int(before.get("NRestarts", 0)) + 1:
            problems.append("NRestarts %s -> %s (want +1)" % (before.get("NRestarts"),
                                                               after.get("NRestarts")))
        if n1 != n0 + 1:
            problems.append("'Watchdog timeout' in the journal %d -> %d times (want +1)" % (n0, n1))
        if problems:
            raise Fail("; ".join(problems))
        return time.monotonic() - t0, "SIGSTOP pid %s; systemd: Watchdog timeout, new pid %s active " \
            "%.1fs after the stop, NRestarts %s -> %s; tree complete %.1fs later" % (
                old, after.get("MainPID"), secs, before.get("NRestarts"), after.get("NRestarts"), t_tree)

    # static-ip-setting as xenopsd writes it (docs/static-ip.md; xen-api ocaml/xenopsd/xc/
    # xenops_server_xen.ml xenstore_of_static_ip_setting / set_ip_static /
    # set_ip_unspecified_or_autoconf), for VIF 0 under the guest's home.
    def sip(self, key):
        return "%s/xenserver/device/vif/0/static-ip-setting/%s" % (self.g.home, key)

    def write_static(self):
        """One transaction (xenstore-write wraps all its writes in one): the keys VIF plug writes
        (mac, error-code 0, empty error-msg) and what VIF.configure_ipv4 mode=static adds."""
        sc, vif = self.sc, "%s/xenserver/device/vif/0" % self.g.home
        # The VIF's private directory is the guest's to write (xenopsd device.ml,
        # Generic.add_device: rwperm_for_guest); the home itself is read-only to the guest.
        sh("xenstore-exists {0} || xenstore-write {0} ''; xenstore-chmod {0} n{1}".format(
            vif, self.g.domid))
        sh(["xenstore-write", self.sip("mac"), sc["mac"], self.sip("error-code"), "0",
            self.sip("error-msg"), "", self.sip("enabled"), "1",
            self.sip("address"), sc["static_ip"] + "/24", self.sip("gateway"), "10.99.0.1"])

    def sip_done(self, what):
        """Wait until the agent removed `enabled` (it has applied the setting); its error-code."""
        _, secs = wait_for("%s: the agent removes static-ip-setting/enabled" % what,
                           lambda: xs_read(self.sip("enabled")) is None, 90, 0.2)
        code, msg = xs_read(self.sip("error-code")), xs_read(self.sip("error-msg"))
        if code != "0" or msg:
            raise Fail("%s: error-code %r, error-msg %r (want 0, empty)" % (what, code, msg))
        return secs

    def ping(self, ip):
        _, secs = wait_for("dom0 pings %s" % ip, lambda: run(["busybox", "ping", "-c", "1", "-W", "2", ip],
                                                             30).returncode == 0, 30, 0.2)
        return secs

    def v4_published(self, want, absent=()):
        def ok():
            t = self.g.tree()
            v4 = [v for k, v in t.items() if k.startswith("attr/vif/0/ipv4/")]
            # (v4,): true also when no IPv4 is left (enabled=2 without a DHCP server).
            return (v4,) if (want is None or t.get("attr/vif/0/ipv4/0") == want) \
                and not set(absent) & set(v4) else None

        return wait_for("attr/vif/0/ipv4 %s%s" % ("0=%s" % want if want else "",
                                                  " without %s" % list(absent) if absent else ""),
                        ok, CFG["address_timeout"], 0.2)

    def guest_net(self):
        """(IPv4 addresses on the VIF's interface, default route, the agent's networkd file or '-')."""
        g = self.g
        _, out = g.cmd("ip -4 -o addr show dev {0} | awk '{{print $4}}' | tr '\\n' ' '; echo; "
                       "ip -4 route show default | tr '\\n' ' '; echo; "
                       "cat /etc/systemd/network/05-xenguest-agent-{0}.network 2>/dev/null | tr '\\n' ' ' "
                       "|| true; echo".format(g.ifname))
        lines = (out.split("\n") + ["", "", ""])[:3]
        return lines[0].split(), lines[1].strip(), lines[2].strip() or "-"

    def static_check(self, what, t0, t_applied):
        """The static address is in place: in the guest, on the wire, in attr/vif/0."""
        sc, g = self.sc, self.g
        addrs, route, conf = self.guest_net()
        if sc["static_ip"] + "/24" not in addrs or "via 10.99.0.1" not in route:
            raise Fail("%s: the guest's %s has %s, default route %r (want %s/24 via 10.99.0.1); "
                       "agent's file: %s" % (what, g.ifname, addrs, route, sc["static_ip"], conf))
        t_ping = self.ping(sc["static_ip"])
        (v4,), t_pub = self.v4_published(sc["static_ip"], absent=[sc["ip"]])
        return time.monotonic() - t0, "applied (enabled removed, error-code 0) %.2fs; %s %s, %s; dom0 " \
            "pings it; attr/vif/0/ipv4 %s %.2fs later" % (t_applied, g.ifname, " ".join(addrs), route, v4,
                                                          t_ping + t_pub)

    def static_evidence(self, fn):
        """fn(), and on a failure the guest's addresses, the agent's journal and attr/vif/0."""
        try:
            return fn()
        except Fatal:
            raise
        except Fail as exc:
            g = self.g
            vif = {k: v for k, v in g.tree().items() if k.startswith(("attr/vif/0/", "xenserver/"))}
            raise Fail("%s\nattr/vif/0 and static-ip-setting: %s\nguest:\n%s" % (exc, vif, g.cmd(
                "ip -4 -o addr show dev %s; journalctl -u xenguest-agent.service --no-pager -o "
                "short-monotonic -n 40; true" % g.ifname, 30)[1])) from None

    def static_ip(self):
        return self.static_evidence(self._static_ip)

    def static_after_reboot(self):
        return self.static_evidence(self._static_after_reboot)

    def static_dhcp_then_own(self):
        return self.static_evidence(self._static_dhcp_then_own)

    def _static_ip(self):
        sc, g = self.sc, self.g
        t0 = time.monotonic()
        self.write_static()
        t_applied = self.sip_done("enabled=1")
        g.ip = sc["static_ip"]  # what later tree checks expect as ipv4/0
        return self.static_check("enabled=1", t0, t_applied)

    def _static_after_reboot(self):
        t0 = time.monotonic()
        t_applied = self.sip_done("after xl reboot")
        return self.static_check("after xl reboot", t0, t_applied)

    def _static_dhcp_then_own(self):
        """enabled=2 (set_ip_unspecified_or_autoconf: address and gateway removed): the agent's file
        asks for DHCP and the static address goes (this bed has no DHCP server: no IPv4 comes);
        then enabled=0: the agent's file is removed and networkd's own file gives the NIC back its
        address (docs/static-ip.md). xenopsd does the removal and the write in one transaction;
        the CLI cannot, so the removal goes first (no `enabled` then: nothing for the agent)."""
        sc, g = self.sc, self.g
        t0 = time.monotonic()
        sh(["xenstore-rm", self.sip("address")])
        sh(["xenstore-rm", self.sip("gateway")])
        sh(["xenstore-write", self.sip("enabled"), "2"])
        t2 = self.sip_done("enabled=2")
        addrs, _, conf = self.guest_net()
        if "DHCP=ipv4" not in conf or sc["static_ip"] + "/24" in addrs:
            raise Fail("enabled=2: the guest's %s has %s; agent's file: %s (want DHCP=ipv4, no %s)" % (
                g.ifname, addrs, conf, sc["static_ip"]))
        (v4,), t2pub = self.v4_published(None, absent=[sc["static_ip"]])
        t1 = time.monotonic()
        sh(["xenstore-write", self.sip("enabled"), "0"])
        t0b = self.sip_done("enabled=0")
        g.ip = sc["ip"]
        addrs0, _, conf0 = self.guest_net()
        if conf0 != "-" or sc["ip"] + "/24" not in addrs0:
            raise Fail("enabled=0: the guest's %s has %s; agent's file: %s (want it gone and %s/24 from "
                       "networkd's own file)" % (g.ifname, addrs0, conf0, sc["ip"]))
        t_ping = self.ping(sc["ip"])
        _, t_pub = self.v4_published(sc["ip"], absent=[sc["static_ip"]])
        return time.monotonic() - t0, "enabled=2: applied %.2fs, %s gone (guest %s), file DHCP=ipv4, " \
            "attr/vif/0/ipv4 %s %.2fs; enabled=0: applied %.2fs, agent's file gone, %s back (%s), " \
            "dom0 pings it, attr/vif/0/ipv4/0 %.2fs later (enabled=0 step %.1fs)" % (
                t2, sc["static_ip"], addrs or "no IPv4", v4 or "empty", t2pub, t0b, sc["ip"],
                " ".join(addrs0), t_ping + t_pub, time.monotonic() - t1)

    def run_busybox(self):
        self.step("boot: xl create%s" % (" -p + unique-domain-id" if self.g.xenopsd else ""),
                  self.create)
        self.step("agent tree complete", lambda: self.tree_checks("tree", CFG["tree_timeout"]))
        self.sample("tree complete")
        self.step("address add/remove", self.address_change)
        self.step("xl save + restore", self.save_restore)
        self.step("xl migrate (localhost)", self.migrate)
        self.step("tree valid after migrate", lambda: self.tree_checks("migrated", 10))
        self.step("xl reboot", self.reboot)
        self.step("xl shutdown", self.shutdown)

    def run_systemd(self):
        self.step("boot: xl create%s" % (" -p + unique-domain-id" if self.g.xenopsd else ""),
                  self.create)
        self.step("service active after boot", lambda: self.service_active(0))
        self.step("agent tree complete", lambda: self.tree_checks("tree", CFG["tree_timeout"]))
        self.sample("tree complete")
        self.step("status = dom0's xapi model", self.status_vs_model)
        self.step("vCPU hot-plug 1 -> 2 -> 1", self.vcpu_hotplug)
        self.step("systemctl reload republishes", self.reload)
        self.step("journal: lines carry their priority", self.journal_priorities)
        self.step("systemctl stop: no shutdown hook", self.plain_stop)
        self.step("address add/remove", self.address_change)
        if self.step("xl save + restore", self.save_restore):
            self.step("post-resume hook ran", lambda: self.hook_ran("post-resume"))
        if self.step("xl migrate (localhost)", self.migrate):
            self.step("post-migrate hook ran", lambda: self.hook_ran("post-migrate"))
        self.step("tree valid after migrate", lambda: self.tree_checks("migrated", 10))
        self.step("watchdog restarts a stopped agent", self.watchdog)
        static = self.step("static IP: enabled=1", self.static_ip)
        if self.step("xl reboot: pre-reboot hook", self.sd_reboot):
            self.step("service active after reboot", lambda: self.service_active(self.reboot_mark))
        if static and self.g.lookup_domid() == self.g.domid:  # back up (whatever the hook did)
            self.step("static IP after xl reboot", self.static_after_reboot)
        if static:
            self.step("static IP: enabled=2, then 0", self.static_dhcp_then_own)
        self.step("xl shutdown: pre-shutdown hook", self.sd_shutdown)

    def run(self):
        name = self.sc["name"]
        say("=== scenario %s: %s guest, %s, %s ===" % (name, self.sc["type"], self.sc["mode"],
                                                        self.sc.get("image", "busybox")))
        try:
            (self.run_systemd if self.g.systemd else self.run_busybox)()
        except Fatal:
            pass
        except Exception as exc:  # a bug in this script: report it as a failure, never hang
            self.check("internal error", False, None, repr(exc))
        if not self.ok:
            self.g.diagnostics()
        self.report_stats()
        if self.g.lookup_domid() is not None:
            run(["xl", "destroy", self.g.name], 60)

    def report_stats(self):
        if not self.stats:
            return
        # Per agent process: CPU over its lifetime (start-up included), RSS now and at its peak.
        # One agent process per boot. The pid repeats across reboots (same boot sequence), so a new
        # process is also one whose age went down.
        procs = []
        for s in self.stats:
            if not procs or s["pid"] != procs[-1][-1]["pid"] or s["alive"] < procs[-1][-1]["alive"]:
                procs.append([])
            procs[-1].append(s)
        parts = []
        for n, ss in enumerate(procs, 1):
            pid, last = ss[0]["pid"], ss[-1]
            pct = 100.0 * last["cpu"] / last["alive"] if last["alive"] > 0 else 0
            parts.append("boot %d pid %d: cpu %.2fs in %.0fs (%.1f%%), rss %d KiB, peak %d KiB" % (
                n, pid, last["cpu"], last["alive"], pct, last["rss"] or 0,
                max(s["hwm"] or 0 for s in ss)))
        emit("stats", scenario=self.sc["name"], samples=self.stats, summary="; ".join(parts))
        say("%s agent: %s" % (self.sc["name"], "; ".join(parts)))


def main():
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    xlinfo = run(["xl", "info"], 30).stdout
    xenver = re.search(r"xen_version\s*:\s*(\S+)", xlinfo)
    emit("info", dom0_uptime_at_checks=up, xen_version=xenver.group(1) if xenver else None,
         dom0_kernel=os.uname().release, agent=CFG["agent"])
    say("checks start (dom0 uptime %.1fs), Xen %s" % (up, xenver.group(1) if xenver else "?"))
    # The domU's initramfs: the cached base plus the per-run layer (agent + test scripts).
    with open("/opt/xgs/domu.cpio.zst", "wb") as out:
        for part in ("/opt/xgs/domu-base.cpio.zst", "/opt/xgs/domu-layer.cpio.zst"):
            with open(part, "rb") as f:
                out.write(f.read())
    for sc in CFG["scenarios"]:
        Scenario(sc).run()
    say("done: %d failed check(s)" % len(FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    raise SystemExit(main())
