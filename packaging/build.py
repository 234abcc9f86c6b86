#!/usr/bin/env python3
"""Build every artefact a user or a distro installs, from a clean checkout: ``./dev package``.

    dist/xenguest-agent-V.tar.gz            the sdist (tests, fixtures, docs, service files)
    dist/xenguest_agent-V-py3-none-any.whl  the wheel
    dist/xenguest-agent_V-1_all.deb         Debian 12+ / Ubuntu 22.04+ (dpkg-buildpackage)
    dist/xenguest-agent-V-1.noarch.rpm      the EL9 family (rpmbuild, from Debian's rpm package)
    dist/freebsd-port/sysutils/xenguest-agent/  a port skeleton (+ a tarball of it)

The sdist and wheel are built with the running interpreter's setuptools and no build
isolation, so running this with Debian 12's /usr/bin/python3 (setuptools 66) proves the
project builds with what that distro ships.  pyxs (packaged by none of the target distros)
is fetched once as its PyPI sdist and vendored into each distro package's private module
directory (docs/packaging.md says why).  Exit status 1 with a message when a tool is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NoReturn, Optional

REPO = Path(__file__).resolve().parent.parent
PYXS_VERSION = "0.4.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xenguest-agent-package"


def say(message: str) -> None:
    print(f"package: {message}", flush=True)


def die(message: str) -> NoReturn:
    print(f"package: ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(argv: list, cwd: Optional[Path] = None) -> None:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        die(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-4000:]}")


#: The launcher's two placeholders; the deb's rules, the rpm spec and the port's Makefile fill
#: them in with sed, and render_launcher does the same for the benchmark (benchmarks/bench.py).
LAUNCHER = REPO / "packaging" / "launcher.in"


def render_launcher(python: str, datadir: str) -> str:
    """packaging/launcher.in with @PYTHON@ and @DATADIR@ replaced, as the packages install it."""
    return LAUNCHER.read_text().replace("@PYTHON@", python).replace("@DATADIR@", datadir)


def version() -> str:
    text = (REPO / "src" / "xenguest_agent" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not found:
        die("no __version__ in src/xenguest_agent/__init__.py")
    return found.group(1)


def build_python(dist: Path) -> tuple:
    """sdist and wheel through setuptools' PEP 517 hooks, in a scratch copy of the tree."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "dist", "build", "__pycache__", "*.egg-info", ".pytest_cache"))
        built = []
        for hook in ("build_sdist", "build_wheel"):  # one process each, as PEP 517 frontends do
            code = (f"import sys; from setuptools import build_meta as b; "
                    f"print('\\nBUILT', b.{hook}(sys.argv[1]))")
            done = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=tree,
                                  capture_output=True, text=True)
            if done.returncode != 0 or "\nBUILT " not in done.stdout:
                die(f"setuptools {hook} failed:\n{done.stderr[-4000:]}")
            built.append(done.stdout.rsplit("\nBUILT ", 1)[1].strip())
        sdist, wheel = built
    return dist / sdist, dist / wheel


def pyxs_sdist() -> Path:
    target = CACHE / f"pyxs-{PYXS_VERSION}.tar.gz"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # Debian's python3 has no pip unless python3-pip is installed: the project's venv has.
        venv = REPO / ".venv" / "bin" / "python"
        python = sys.executable if subprocess.run([sys.executable, "-m", "pip", "--version"],
                                                  capture_output=True).returncode == 0 else venv
        run([python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", CACHE, f"pyxs=={PYXS_VERSION}"])
    if not target.exists():
        die(f"pip did not download {target.name}")
    return target


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(into)
    return into / archive.name[:-len(".tar.gz")]


def build_deb(sdist: Path, pyxs: Path, dist: Path, ver: str) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        tree = unpack(sdist, Path(scratch))
        shutil.copytree(tree / "packaging" / "debian", tree / "debian")
        (tree / "vendor").mkdir()
        shutil.move(str(unpack(pyxs, Path(scratch)) / "pyxs"), str(tree / "vendor" / "pyxs"))
        # the unit's ExecStart is already the package's launcher, /usr/bin/xenguest-agent
        shutil.copy(tree / "systemd" / "xenguest-agent.service",
                    tree / "debian" / "xenguest-agent.service")
        (tree / "debian" / "changelog").write_text(
            f"xenguest-agent ({ver}-1) unstable; urgency=medium\n\n"
            "  * Built from the upstream tree by packaging/build.py.\n\n"
            " -- xenguest-agent developers <xenguest-agent@localhost>  "
            "Mon, 30 Nov 2026 00:00:00 +0000\n")
        run(["dpkg-buildpackage", "-us", "-uc", "-b", "--no-pre-clean"], cwd=tree)
        debs = list(Path(scratch).glob("xenguest-agent_*_all.deb"))
        if len(debs) != 1:
            die(f"dpkg-buildpackage left {debs}")
        return Path(shutil.copy(debs[0], dist))


def build_rpm(sdist: Path, pyxs: Path, dist: Path, ver: str) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        top = Path(scratch)
        for sub in ("SOURCES", "SPECS", "BUILD", "RPMS", "SRPMS", "BUILDROOT"):
            (top / sub).mkdir()
        shutil.copy(sdist, top / "SOURCES")
        shutil.copy(pyxs, top / "SOURCES")
        spec = top / "SPECS" / "xenguest-agent.spec"
        spec.write_text((REPO / "packaging" / "rpm" / "xenguest-agent.spec").read_text()
                        .replace("@VERSION@", ver))
        run(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}",
             "--define", "__python3 /usr/bin/python3", "--define", "dist .el9", spec])
        rpms = list((top / "RPMS").rglob("*.rpm"))
        if len(rpms) != 1:
            die(f"rpmbuild left {rpms}")
        return Path(shutil.copy(rpms[0], dist))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_port(sdist: Path, pyxs: Path, dist: Path, ver: str) -> Path:
    """sysutils/xenguest-agent: Makefile, distinfo, pkg-descr, pkg-plist, files/ (USE_RC_SUBR)."""
    port = dist / "freebsd-port" / "sysutils" / "xenguest-agent"
    if port.exists():
        shutil.rmtree(port)
    (port / "files").mkdir(parents=True)
    source = REPO / "packaging" / "freebsd"
    (port / "Makefile").write_text((source / "Makefile").read_text().replace("@VERSION@", ver))
    shutil.copy(source / "pkg-descr", port / "pkg-descr")
    # The rc.d script, with the install prefix as the ports framework substitutes it.
    script = (REPO / "rc.d" / "xenguest_agent").read_text().replace("/usr/local", "%%PREFIX%%")
    (port / "files" / "xenguest_agent.in").write_text(script)
    (port / "distinfo").write_text("".join(
        f"SHA256 ({p.name}) = {_sha256(p)}\nSIZE ({p.name}) = {p.stat().st_size}\n"
        for p in (sdist, pyxs)))
    modules = sorted(p.relative_to(REPO / "src").as_posix()
                     for p in (REPO / "src" / "xenguest_agent").rglob("*.py"))
    with tarfile.open(pyxs) as tar:
        modules += sorted(n.split("/", 1)[1] for n in tar.getnames()
                          if re.match(rf"pyxs-{PYXS_VERSION}/pyxs/[^/]+\.py$", n))
    plist = ["bin/xenguest-agent", "@sample %%ETCDIR%%/config.yaml.sample",
             "@dir %%ETCDIR%%/hooks", "share/man/man8/xenguest-agent.8.gz"]
    for module in modules:
        folder, name = module.rsplit("/", 1)
        plist.append(f"%%DATADIR%%/{module}")
        plist.append(f"%%DATADIR%%/{folder}/__pycache__/{name[:-3]}.cpython-%%PYTHON_SUFFIX%%.pyc")
    (port / "pkg-plist").write_text("\n".join(plist) + "\n")
    archive = dist / f"freebsd-port-xenguest-agent-{ver}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(port, arcname="sysutils/xenguest-agent")
    return archive


CHROOT_SUITE = "bookworm"


def check_deb_in_chroot(deb: Path) -> None:
    """Install the .deb into a clean Debian chroot with apt (only the distro's own packages
    satisfy its dependencies), then run the installed command there."""
    if shutil.which("debootstrap") is None:
        die("debootstrap not found (./dev package --check installs it)")
    # minbase plus systemd: the guest the unit is for (systemd brings deb-systemd-helper,
    # which the package's postinst uses to enable the unit)
    base = CACHE / f"{CHROOT_SUITE}-minbase-systemd.tar"
    if not base.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch) / "root"
            say(f"debootstrap --variant=minbase --include=systemd {CHROOT_SUITE} (cached in {base})")
            run(["debootstrap", "--variant=minbase", "--include=systemd", CHROOT_SUITE, root,
                 os.environ.get("XGA_MIRROR", "http://deb.debian.org/debian")])
            run(["tar", "-C", root, "-cf", f"{base}.tmp", "."])
        os.replace(f"{base}.tmp", base)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        run(["tar", "-C", root, "-xf", base])
        shutil.copy(deb, root / "tmp" / deb.name)
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        env = ["env", "DEBIAN_FRONTEND=noninteractive", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        run(["chroot", root, *env, "apt-get", "update", "-q"])
        # policy-rc.d: no service is started in the chroot (there is no systemd running)
        (root / "usr" / "sbin" / "policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (root / "usr" / "sbin" / "policy-rc.d").chmod(0o755)
        run(["chroot", root, *env, "apt-get", "install", "-y", "-q", "--no-install-recommends",
             f"/tmp/{deb.name}"])
        for argv in (["xenguest-agent", "--version"], ["xenguest-agent", "show"],
                     ["python3", "-c", "import pyxs"]):
            done = subprocess.run(["chroot", root, *env, *argv], capture_output=True, text=True)
            if argv[-1] == "import pyxs":  # vendored privately: not importable system-wide
                if done.returncode == 0:
                    die("pyxs is importable system-wide in the chroot: it must stay private")
                continue
            if done.returncode != 0:
                die(f"{' '.join(argv)} failed in the chroot:\n{done.stderr[-3000:]}")
            say(f"chroot: {' '.join(argv)}: ok ({len(done.stdout.splitlines())} lines)")
        # a symlink to an absolute path inside the chroot: look at the link, not its target
        if not (root / "etc/systemd/system/multi-user.target.wants/xenguest-agent.service").is_symlink():
            die("the package did not enable xenguest-agent.service")
        say("chroot: xenguest-agent.service enabled by the package")


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dist", default=str(REPO / "dist"), help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="then install the .deb into a clean Debian chroot and run it")
    args = parser.parse_args()
    for tool in ("dpkg-buildpackage", "dh", "rpmbuild"):
        if shutil.which(tool) is None:
            die(f"{tool} not found (./dev package installs dpkg-dev, debhelper, dh-python, rpm)")
    ver = version()
    dist = Path(args.dist).resolve()
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("*"):
        if old.is_file():
            old.unlink()
    sdist, wheel = build_python(dist)
    say(f"sdist {sdist.name}, wheel {wheel.name}")
    pyxs = pyxs_sdist()
    deb = build_deb(sdist, pyxs, dist, ver)
    say(f"deb {deb.name}")
    say(f"rpm {build_rpm(sdist, pyxs, dist, ver).name}")
    say(f"FreeBSD port {build_port(sdist, pyxs, dist, ver).name}")
    if args.check:
        check_deb_in_chroot(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
