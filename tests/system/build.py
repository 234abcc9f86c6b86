"""Build the cached images of the real-Xen system test.

Three artefacts, all derived from Debian packages whose versions are looked up at build time:

  xen.elf             the hypervisor (Debian's xen-hypervisor-4.17-amd64, gunzipped: an ELF32
                      multiboot image that QEMU's -kernel loads directly)
  vmlinuz             Debian's kernel, used for dom0 and for every domU
  dom0-base.cpio.zst  a debootstrap --variant=minbase root with xen-utils (the same version as the
                      hypervisor), xenstore-utils, python3, busybox, iproute2 and the Xen kernel
                      modules; it carries the domU's base initramfs in /opt/xgs/domu-base.cpio.zst
                      (busybox, python3 with a trimmed stdlib, psutil, PyYAML, pyxs, xen-netfront)

Everything that changes often (the agent, the test scripts) is NOT in here: the runner appends a small
per-run cpio layer to these (the kernel accepts concatenated compressed cpio archives).

The cache key is a hash of this file and of the package versions, so a Debian update or a change of
the recipe rebuilds; anything else reuses the images.  Nothing is installed on the host except what
`ensure_host_tools` installs (qemu-system-x86, debootstrap, cpio, zstd); the kernel and hypervisor
packages are only downloaded and unpacked.
"""

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
MIRROR = os.environ.get("XGS_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("XGS_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
SUITE = "bookworm"
XEN_SERIES = "4.17"

# Host packages the test needs, by the command that proves each is there.
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "cpio": "cpio",
    "zstd": "zstd",
}

# dom0: debootstrap --include (from bookworm main), then the Xen tools at the hypervisor's version.
DOM0_INCLUDE = ["python3", "python3-psutil", "python3-yaml", "kmod", "busybox", "procps", "iproute2"]
DOM0_XEN_PACKAGES = ["xen-utils-" + XEN_SERIES, "xenstore-utils"]
# Kernel modules (and their dependencies, resolved from modules.dep) for dom0 and for the domU.
DOM0_MODULES = ["xen-evtchn", "xen-privcmd", "xen-gntdev", "xen-gntalloc", "xenfs", "xen-netback",
                "bridge"]
DOMU_MODULES = ["xen-netfront"]
# The domU's python stdlib, without what an agent never imports (keeps the domU small).
STDLIB_DROP = ["test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
               "distutils", "unittest", "config-3.11-x86_64-linux-gnu", "sqlite3", "dbm",
               "lib-dynload/_test*", "lib-dynload/_ctypes_test*", "lib-dynload/_sqlite3*",
               "lib-dynload/_tkinter*", "lib-dynload/xxlimited*"]
PYXS = "pyxs==0.4.1"


def log(msg):
    print("[build %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(cmd, **kw):
    """Run a command, echoing it; raise with its output on failure."""
    if isinstance(cmd, str):
        kw.setdefault("shell", True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, **kw)
    if res.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (res.returncode, cmd, res.stdout[-4000:]))
    return res.stdout


class BuildError(RuntimeError):
    pass


def ensure_host_tools():
    """apt-get install whatever is missing; a missing tool after that is a hard error, never a skip."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return []
    if os.geteuid() != 0:
        raise BuildError("missing host packages %s and not root: apt-get install them by hand"
                         % " ".join(missing))
    log("installing host packages: %s" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    try:
        run(["apt-get"] + lock + ["update", "-q"], env=env)
        run(["apt-get"] + lock + ["install", "-y", "-q", "--no-install-recommends"] + missing, env=env)
    except RuntimeError as exc:
        raise BuildError("cannot install %s: %s" % (" ".join(missing), exc)) from None
    still = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if still:
        raise BuildError("still missing after apt-get install: %s" % " ".join(still))
    return missing


def candidate(pkg):
    out = run(["apt-cache", "policy", pkg])
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def lookup_versions():
    """The package versions this build uses, from the host's apt lists (no hard-coded versions)."""
    xen_pkg = "xen-hypervisor-%s-amd64" % XEN_SERIES
    xen_ver = candidate(xen_pkg)
    deps = run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", deps)
    if not xen_ver or not m:
        return None
    kpkg = m.group(1)
    kver = candidate(kpkg)
    utils_ver = candidate(DOM0_XEN_PACKAGES[0])
    if not kver or utils_ver != xen_ver:
        return None
    return {"xen_pkg": xen_pkg, "xen_version": xen_ver, "kernel_pkg": kpkg, "kernel_version": kver,
            "kernel_release": kpkg[len("linux-image-"):], "suite": SUITE, "pyxs": PYXS}


def versions():
    v = lookup_versions()
    if v is None:
        log("apt lists incomplete: apt-get update")
        run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"])
        v = lookup_versions()
    if v is None:
        raise BuildError("cannot find xen-hypervisor-%s-amd64 / linux-image-amd64 in apt "
                         "(or xen-utils-%s differs from the hypervisor's version)"
                         % (XEN_SERIES, XEN_SERIES))
    return v


def cache_key(v):
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(json.dumps(v, sort_keys=True).encode())
    return h.hexdigest()[:16]


def rootfs_key(v):
    """The debootstrap stage is cached on its own: it only depends on the suite, lists and versions."""
    recipe = [SUITE, MIRROR, SECURITY_MIRROR, DOM0_INCLUDE, DOM0_XEN_PACKAGES, v["xen_version"],
              inspect.getsource(debootstrap_dom0)]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]


def pack_cpio(root, dest, level=3, with_root=False):
    """newc cpio of a directory tree, zstd-compressed (the kernel unpacks it; owner root).

    ``with_root`` includes "." so that the guest's "/" gets the tree's mode: the kernel
    unpacks an initramfs into a tmpfs whose root directory is 1777 (mm/shmem.c,
    shmem_init_fs_context: 0777 | S_ISVTX) and applies a "." entry's mode to it
    (init/initramfs.c, do_name: init_chmod).  A guest on a disk has a 0755 "/", and the
    agent refuses hooks below a world-writable directory."""
    depth = "" if with_root else "-mindepth 1"
    run("cd '%s' && find . %s | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet "
        "| zstd -q -T0 -%d -o '%s'" % (root, depth, level, dest))


def module_index(modroot):
    """{module name: (path relative to modroot, [dependency names])} from the .ko files themselves
    (their .modinfo `depends=`), so the host needs no kmod and the package no postinst."""
    index = {}
    for dirpath, _, names in os.walk(modroot):
        for n in names:
            m = re.match(r"(.+)\.ko(\.(xz|zst|gz))?$", n)
            if not m:
                continue
            path = os.path.join(dirpath, n)
            with open(path, "rb") as f:
                data = f.read()
            dep = re.search(rb"\0depends=([^\0]*)\0", data)
            deps = [d for d in (dep.group(1).decode().split(",") if dep else []) if d]
            index[m.group(1).replace("_", "-")] = (os.path.relpath(path, modroot),
                                                   [d.replace("_", "-") for d in deps])
    return index


def module_closure(index, names):
    """Module files for `names` and everything they depend on."""
    todo, seen = [n.replace("_", "-") for n in names], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n not in index:
            raise BuildError("kernel module %s not found" % n)
        seen.add(n)
        todo.extend(index[n][1])
    return sorted(index[n][0] for n in seen)


def install_modules(src_modroot, index, rootfs, dest_root, kver, names):
    """Copy the closure of `names` into dest_root (a directory inside rootfs) and depmod it there
    with the chroot's own depmod."""
    dest = os.path.join(dest_root, "usr/lib/modules", kver)
    for rel in module_closure(index, names):
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(src_modroot, rel), os.path.join(dest, rel))
    for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if os.path.exists(os.path.join(src_modroot, extra)):
            shutil.copy2(os.path.join(src_modroot, extra), os.path.join(dest, extra))
    base = "/" + os.path.relpath(dest_root, rootfs) if dest_root != rootfs else "/"
    run(["chroot", rootfs, "depmod", "-b", base, kver])


def debootstrap_dom0(rootfs, v):
    log("debootstrap %s (minbase) -> %s" % (SUITE, rootfs))
    run(["debootstrap", "--variant=minbase", "--include=" + ",".join(DOM0_INCLUDE),
         SUITE, rootfs, MIRROR])
    # The Xen tools at exactly the hypervisor's version (bookworm-security may be ahead of main).
    with open(os.path.join(rootfs, "etc/apt/sources.list"), "w") as f:
        f.write("deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n"
                % (MIRROR, SUITE, MIRROR, SUITE, SECURITY_MIRROR, SUITE))
    policy = os.path.join(rootfs, "usr/sbin/policy-rc.d")
    with open(policy, "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(policy, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    env.pop("PYTHONPATH", None)
    run(["chroot", rootfs, "apt-get", "update", "-q"], env=env)
    pkgs = ["%s=%s" % (p, v["xen_version"]) for p in DOM0_XEN_PACKAGES]
    log("chroot apt-get install %s" % " ".join(pkgs))
    run(["chroot", rootfs, "apt-get", "install", "-y", "-q", "--no-install-recommends"] + pkgs, env=env)
    run(["chroot", rootfs, "apt-get", "clean"], env=env)
    os.remove(policy)
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                 "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log",
                 "usr/share/zoneinfo"):
        shutil.rmtree(os.path.join(rootfs, junk), ignore_errors=True)
    os.makedirs(os.path.join(rootfs, "var/log"), exist_ok=True)
    os.makedirs(os.path.join(rootfs, "usr/share/doc"), exist_ok=True)


def chroot_libs(rootfs, files):
    """Shared libraries (paths inside rootfs) that `files` need, via ldd run in the chroot."""
    libs = set()
    for chunk in range(0, len(files), 50):
        batch = files[chunk:chunk + 50]
        res = subprocess.run(["chroot", rootfs, "ldd"] + batch, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True)
        for line in res.stdout.splitlines():
            m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


def copy_into(rootfs, dest_root, rel, follow=True):
    """Copy rootfs/rel (a file, symlink chain or tree) to dest_root/rel."""
    rel = rel.lstrip("/")
    src = os.path.join(rootfs, rel)
    dst = os.path.join(dest_root, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        target = os.readlink(src)
        if not os.path.lexists(dst):
            os.symlink(target, dst)
        if follow:
            nxt = target if target.startswith("/") else os.path.join(os.path.dirname("/" + rel), target)
            copy_into(rootfs, dest_root, os.path.normpath(nxt))
    elif os.path.isdir(src):
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    elif os.path.exists(src):
        shutil.copy2(src, dst)


def build_domu_tree(rootfs, domu, kver, modroot, index, wheel_dir):
    """The domU's base root: busybox, python3 (trimmed), psutil, yaml, pyxs, xen-netfront."""
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "proc", "sys", "dev", "run",
              "tmp", "var/log", "root"):
        os.makedirs(os.path.join(domu, d), exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        os.symlink("usr/" + link, os.path.join(domu, link))
    pyver = os.path.basename(os.path.realpath(os.path.join(rootfs, "usr/bin/python3")))  # python3.11
    copy_into(rootfs, domu, "usr/bin/python3")
    copy_into(rootfs, domu, "usr/bin/busybox")
    stdlib = "usr/lib/" + pyver
    copy_into(rootfs, domu, stdlib)
    for pattern in STDLIB_DROP:
        run("rm -rf %s/%s/%s" % (domu, stdlib, pattern))
    dist = "usr/lib/python3/dist-packages"
    for pkg in os.listdir(os.path.join(rootfs, dist)):
        if pkg.startswith(("psutil", "yaml", "_yaml")):
            copy_into(rootfs, domu, os.path.join(dist, pkg))
    # pyxs from PyPI (pure Python): the wheel is a zip of the package.
    wheels = [w for w in os.listdir(wheel_dir) if w.endswith(".whl")]
    if not wheels:
        raise BuildError("pip download %s gave no wheel" % PYXS)
    with zipfile.ZipFile(os.path.join(wheel_dir, wheels[0])) as whl:
        whl.extractall(os.path.join(domu, dist))
    # Shared libraries of every ELF we copied.
    elves = ["/usr/bin/" + pyver, "/usr/bin/busybox"]
    for top in (os.path.join(domu, stdlib, "lib-dynload"), os.path.join(domu, dist)):
        for dirpath, _, names in os.walk(top):
            elves += ["/" + os.path.relpath(os.path.join(dirpath, n), domu) for n in names
                      if n.endswith(".so")]
    for lib in chroot_libs(rootfs, elves):
        copy_into(rootfs, domu, lib)
    copy_into(rootfs, domu, "etc/ld.so.cache")
    for f in ("etc/os-release", "usr/lib/os-release", "etc/debian_version", "etc/passwd", "etc/group",
              "etc/nsswitch.conf"):
        copy_into(rootfs, domu, f)
    install_modules(modroot, index, rootfs, domu, kver, DOMU_MODULES)
    run("find '%s' -name '__pycache__' -path '*/dist-packages/*' -prune -o -name '*.opt-?.pyc' "
        "-print | xargs -r rm -f" % domu)


def build(cache_root, v, key):
    t0 = time.time()
    final = os.path.join(cache_root, "images-" + key)
    work = final + ".tmp"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "debs"))
    debs = os.path.join(work, "debs")
    log("apt-get download %s=%s %s=%s" % (v["xen_pkg"], v["xen_version"], v["kernel_pkg"],
                                          v["kernel_version"]))
    run(["apt-get", "download", "%s=%s" % (v["xen_pkg"], v["xen_version"]),
         "%s=%s" % (v["kernel_pkg"], v["kernel_version"])], cwd=debs)
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
         os.path.join(work, "wheels"), PYXS])
    ext = os.path.join(work, "pkgroot")
    for deb in os.listdir(debs):
        run(["dpkg-deb", "-x", os.path.join(debs, deb), ext])
    kver = v["kernel_release"]
    xen_gz = os.path.join(ext, "boot", "xen-%s-amd64.gz" % XEN_SERIES)
    run("gunzip -c '%s' > '%s'" % (xen_gz, os.path.join(work, "xen.elf")))
    shutil.copy2(os.path.join(ext, "boot", "vmlinuz-" + kver), os.path.join(work, "vmlinuz"))
    modroot = os.path.join(ext, "lib/modules", kver)
    index = module_index(modroot)

    rootfs = os.path.join(work, "rootfs")
    rootfs_tar = os.path.join(cache_root, "rootfs-%s.tar" % rootfs_key(v))
    if os.path.exists(rootfs_tar):
        log("reusing debootstrap root %s" % rootfs_tar)
        os.makedirs(rootfs)
        run(["tar", "-C", rootfs, "-xf", rootfs_tar])
    else:
        debootstrap_dom0(rootfs, v)
        for old in os.listdir(cache_root):
            if old.startswith("rootfs-"):
                os.remove(os.path.join(cache_root, old))
        run(["tar", "-C", rootfs, "-cf", rootfs_tar + ".tmp", "."])
        os.rename(rootfs_tar + ".tmp", rootfs_tar)
    install_modules(modroot, index, rootfs, rootfs, kver, DOM0_MODULES)
    log("domU tree")
    domu = os.path.join(rootfs, "tmp/domu")  # inside the chroot, for its ldd and depmod
    build_domu_tree(rootfs, domu, kver, modroot, index, os.path.join(work, "wheels"))
    os.makedirs(os.path.join(rootfs, "opt/xgs"), exist_ok=True)
    log("pack domU base initramfs")
    pack_cpio(domu, os.path.join(rootfs, "opt/xgs/domu-base.cpio.zst"))
    shutil.rmtree(domu)
    log("pack dom0 base initramfs")
    pack_cpio(rootfs, os.path.join(work, "dom0-base.cpio.zst"))
    info = dict(v, built=time.strftime("%Y-%m-%d %H:%M:%S"), build_seconds=round(time.time() - t0, 1),
                key=key)
    for name in ("dom0-base.cpio.zst", "xen.elf", "vmlinuz"):
        info[name + "_bytes"] = os.path.getsize(os.path.join(work, name))
    info["domu-base.cpio.zst_bytes"] = os.path.getsize(os.path.join(rootfs, "opt/xgs/domu-base.cpio.zst"))
    with open(os.path.join(work, "info.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    # Keep only the artefacts.
    for d in ("debs", "pkgroot", "rootfs", "wheels"):
        shutil.rmtree(os.path.join(work, d))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(work, final)
    log("images built in %.0f s -> %s" % (time.time() - t0, final))
    return final


def ensure_images(cache_root, force=False):
    """Return (directory of the images, info dict, seconds spent, built?)."""
    t0 = time.time()
    os.makedirs(cache_root, exist_ok=True)
    v = versions()
    key = cache_key(v)
    final = os.path.join(cache_root, "images-" + key)
    built = False
    if force or not os.path.exists(os.path.join(final, "info.json")):
        log("no cached images for key %s (%s, %s): building" % (key, v["xen_version"], v["kernel_pkg"]))
        try:
            build(cache_root, v, key)
        except RuntimeError as exc:
            raise BuildError(str(exc)) from None
        built = True
        # Older images are garbage now.
        for old in os.listdir(cache_root):
            if old.startswith("images-") and old != "images-" + key:
                shutil.rmtree(os.path.join(cache_root, old), ignore_errors=True)
    with open(os.path.join(final, "info.json")) as f:
        info = json.load(f)
    return final, info, time.time() - t0, built


if __name__ == "__main__":
    cache = os.environ.get("XGS_CACHE", os.path.expanduser("~/.cache/xenguest-agent-system"))
    ensure_host_tools()
    print(ensure_images(cache, force="--force" in sys.argv))
