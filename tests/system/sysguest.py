"""The systemd guest of the system test: a Debian root with systemd as PID 1 and the agent's .deb.

Two stages:

  base (cached)   `debootstrap --variant=minbase` of bookworm with systemd, systemd-sysv, udev, kmod,
                  iproute2, python3, python3-psutil, python3-yaml; xen-netfront from the same Debian
                  kernel as dom0; systemd-networkd enabled; trimmed (docs, locales, apt lists, udev's
                  hwdb, the python test suite).  Stored as sysguest-base-<key>.tar; the key is a hash
                  of this file and of the kernel and suite, so a change of the recipe rebuilds.
  per run         the base, then `dpkg -i` of the .deb that `./dev package` built in this run (in a
                  chroot: the package's own postinst enables the unit, which is then verified with
                  `systemctl is-enabled`), the test's command channel as a unit, the hook scripts,
                  one systemd-networkd file per systemd scenario (matched by MAC), packed as one
                  zstd cpio.

The guest boots from that initramfs alone (`rdinit=/sbin/init`, the whole root in the kernel's
rootfs): no block device, so dom0 needs no xen-blkback, loop devices or disk images in its RAM, and
a reboot starts from the pristine image every time.  It costs guest memory (the unpacked root lives
in RAM), hence the larger `memory` of these guests (see checks.py).
"""

import hashlib
import json
import os
import shutil
import subprocess
import time

import build

# procps: the package depends on it (the unit's ExecReload is /bin/kill, which Debian ships in
# procps); `dpkg -i` refuses the .deb if a dependency it declares is missing here.
# dbus: `networkctl reload` / `reconfigure` (what the agent's static IP backend runs) talk to
# systemd-networkd over the system bus; without a bus daemon they fail ("Failed to connect system
# bus"). A Debian server has one (dbus is part of the standard install).
INCLUDE = ["systemd", "systemd-sysv", "udev", "kmod", "iproute2", "python3", "python3-psutil",
           "python3-yaml", "procps", "dbus"]
MODULES = ["xen-netfront"]
# Not needed in a guest that only runs the agent; dpkg and perl-base stay (the per-run dpkg -i).
DROP = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/i18n",
        "usr/share/zoneinfo", "usr/share/lintian", "usr/share/bash-completion", "var/lib/apt/lists",
        "var/cache/apt", "var/cache/debconf/*-old", "var/log/*", "usr/lib/udev/hwdb.d",
        "usr/lib/udev/hwdb.bin", "etc/udev/hwdb.bin", "usr/lib/x86_64-linux-gnu/gconv",
        "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
        "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/ensurepip",
        "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/config-3.11-x86_64-linux-gnu"]
HERE = os.path.dirname(os.path.abspath(__file__))
HOOK_EVENTS = ("pre-shutdown", "pre-reboot", "post-resume", "post-migrate")


def base_key(v):
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(json.dumps([v["suite"], v["kernel_pkg"], v["kernel_version"], build.MIRROR]).encode())
    return h.hexdigest()[:16]


def chroot_env():
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    env.pop("PYTHONPATH", None)
    return env


def build_base(cache_root, v, dest):
    t0 = time.time()
    work = dest + ".work"
    shutil.rmtree(work, ignore_errors=True)
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(work, "debs"))
    build.log("systemd guest: debootstrap %s (minbase + %s)" % (build.SUITE, ",".join(INCLUDE)))
    build.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(INCLUDE),
               build.SUITE, root, build.MIRROR])
    # xen-netfront of the kernel dom0 boots the guest with (udev loads it by its xen:vif alias).
    build.run(["apt-get", "download", "%s=%s" % (v["kernel_pkg"], v["kernel_version"])],
              cwd=os.path.join(work, "debs"))
    ext = os.path.join(work, "kernel")
    for deb in os.listdir(os.path.join(work, "debs")):
        build.run(["dpkg-deb", "-x", os.path.join(work, "debs", deb), ext])
    modroot = os.path.join(ext, "lib/modules", v["kernel_release"])
    build.install_modules(modroot, build.module_index(modroot), root, root, v["kernel_release"], MODULES)
    env = chroot_env()
    # networkd configures the NIC (its .network files come per run); wait-online would hold the boot
    # for two minutes if a link stayed unconfigured; nothing here needs "online".
    build.run(["chroot", root, "systemctl", "enable", "systemd-networkd.service"], env=env)
    build.run(["chroot", root, "systemctl", "mask", "systemd-networkd-wait-online.service"], env=env)
    # A machine-id, so that the first boot is not systemd's "first boot" (presets, firstboot).
    with open(os.path.join(root, "etc/machine-id"), "w") as f:
        f.write(hashlib.md5(base_key(v).encode()).hexdigest() + "\n")
    with open(os.path.join(root, "etc/hostname"), "w") as f:
        f.write("xgs-systemd\n")
    for pattern in DROP:
        build.run("rm -rf %s/%s" % (root, pattern))
    build.run(["tar", "-C", root, "-cf", dest + ".tmp", "."])
    os.rename(dest + ".tmp", dest)
    shutil.rmtree(work)
    build.log("systemd guest base built in %.0f s: %s (%d MB)" % (
        time.time() - t0, dest, os.path.getsize(dest) >> 20))


def ensure_base(cache_root, v):
    """Path of the cached base tar (built when missing); (path, seconds, built?)."""
    t0 = time.time()
    dest = os.path.join(cache_root, "sysguest-base-%s.tar" % base_key(v))
    built = False
    if not os.path.exists(dest):
        for old in os.listdir(cache_root):
            if old.startswith("sysguest-base-") and old.endswith(".tar"):
                os.remove(os.path.join(cache_root, old))
        try:
            build_base(cache_root, v, dest)
        except RuntimeError as exc:
            raise build.BuildError("systemd guest image: %s" % exc) from None
        built = True
    return dest, time.time() - t0, built


def network_file(sc):
    """systemd.network(5) for one scenario's VIF, matched by its MAC; static addresses."""
    return ("[Match]\nMACAddress=%s\n\n[Network]\nConfigureWithoutCarrier=yes\nIPv6AcceptRA=no\n\n"
            "[Address]\nAddress=%s/24\n\n[Address]\nAddress=%s/64\nDuplicateAddressDetection=none\n"
            % (sc["mac"], sc["ip"], sc["ip6"]))


def assemble(base_tar, deb, rundir, scenarios, dest):
    """The per-run image: base + `dpkg -i` of this run's .deb + test files; returns facts for the log."""
    root = os.path.join(rundir, "sysguest-root")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    build.run(["tar", "-C", root, "-xf", base_tar])
    env = chroot_env()
    shutil.copy(deb, os.path.join(root, "tmp", os.path.basename(deb)))
    out = build.run(["chroot", root, "dpkg", "-i", "/tmp/" + os.path.basename(deb)], env=env)
    os.remove(os.path.join(root, "tmp", os.path.basename(deb)))
    enabled = subprocess.run(["chroot", root, "systemctl", "is-enabled", "xenguest-agent.service"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                             env=env).stdout.strip()
    if enabled != "enabled":
        raise build.BuildError("after dpkg -i the unit is %r, not enabled (the package's postinst "
                               "should run `deb-systemd-helper enable`); dpkg said:\n%s" % (enabled, out))
    # The test's command channel (domu/ctl.py) as a unit of its own; not part of the agent.
    build.run(["install", "-D", "-m", "644", os.path.join(HERE, "domu/ctl.py"),
               os.path.join(root, "opt/xgs/ctl.py")])
    build.run(["install", "-D", "-m", "644", os.path.join(HERE, "domu/systemd/xgs-ctl.service"),
               os.path.join(root, "etc/systemd/system/xgs-ctl.service")])
    build.run(["chroot", root, "systemctl", "enable", "xgs-ctl.service"], env=env)
    # One hook per event; root-owned (cpio -R 0:0), 0755, in 0755 directories.
    for event in HOOK_EVENTS:
        build.run(["install", "-D", "-m", "755", os.path.join(HERE, "domu/systemd/xgs-hook"),
                   os.path.join(root, "etc/xenguest-agent/hooks", event, "50-xgs-report")])
        os.chmod(os.path.join(root, "etc/xenguest-agent/hooks", event), 0o755)
    os.makedirs(os.path.join(root, "etc/systemd/network"), exist_ok=True)
    for sc in scenarios:
        with open(os.path.join(root, "etc/systemd/network/50-xgs-%s.network" % sc["name"]), "w") as f:
            f.write(network_file(sc))
    size = int(build.run(["du", "-sm", root]).split()[0])
    os.chmod(root, 0o755)  # the guest's "/", as on a disk (build.pack_cpio)
    build.pack_cpio(root, dest, with_root=True)
    shutil.rmtree(root)
    return {"root_mb": size, "cpio_mb": round(os.path.getsize(dest) / 1048576.0, 1),
            "unit": enabled}
