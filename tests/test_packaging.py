"""What `./dev package` builds, checked with the distributions' own tools.

One build per module (packaging/build.py with Debian's /usr/bin/python3, as ./dev package runs
it) into a temporary dist directory.  Each expectation comes from docs/packaging.md ("What the
distro packages install", the dependencies), the rpm spec (packaging/rpm/xenguest-agent.spec:
%files, %config(noreplace)), Debian policy (conffiles for everything under /etc, systemd units
enabled by the maintainer scripts dh_installsystemd writes) and the issue's list of what the
sdist carries; none is read from build.py's code.  The tools: rpm (rpm -qp), dpkg-deb,
tar, zipfile for the wheel's METADATA (the core metadata specification's Version and
Requires-Dist fields).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"


def tool(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def source_version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"$',
                      (REPO / "src/xenguest_agent/__init__.py").read_text(), re.M)
    assert found, "no __version__ in src/xenguest_agent/__init__.py"
    return found.group(1)


class Built:
    def __init__(self, dist: Path) -> None:
        self.dist = dist

    def one(self, pattern: str) -> Path:
        found = sorted(self.dist.glob(pattern))
        assert len(found) == 1, f"{pattern} in {self.dist}: {found}"
        return found[0]

    @property
    def rpm(self) -> str:
        return str(self.one("xenguest-agent-*.noarch.rpm"))

    @property
    def deb(self) -> str:
        return str(self.one("xenguest-agent_*_all.deb"))

    @property
    def sdist(self) -> Path:
        return self.one("xenguest-agent-*.tar.gz")

    @property
    def wheel(self) -> Path:
        return self.one("xenguest_agent-*-py3-none-any.whl")

    @property
    def port(self) -> Path:
        return self.dist / "freebsd-port/sysutils/xenguest-agent"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([DEBIAN_PYTHON, str(REPO / "packaging/build.py"), "--dist", str(dist)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"packaging/build.py failed:\n{done.stdout}\n{done.stderr}"
    yield Built(dist)


def load_build():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("xga_build", REPO / "packaging/build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


# --- the launcher (packaging/launcher.in, docs/packaging.md "The launcher") -------------------

#: What the stand-in agent reports: the interpreter's flags, sys.path and whether code from the
#: site directories ran.  Python's sys.flags documents isolated (-I) and no_site (-S).
PROBE_CLI = """import json, sys
import yaml
def main():
    print(json.dumps({"isolated": sys.flags.isolated, "no_site": sys.flags.no_site,
                      "path": sys.path, "yaml": yaml.__file__, "modules": sorted(sys.modules)}))
    return 0
"""


def run_launcher(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    """The launcher rendered as the packages render it (the same two substitutions as the sed
    in packaging/debian/rules), in front of a private directory holding a stand-in agent."""
    import json

    datadir = tmp_path / "share" / "xenguest-agent"
    (datadir / "xenguest_agent").mkdir(parents=True)
    (datadir / "xenguest_agent" / "__init__.py").write_text("")
    (datadir / "xenguest_agent" / "cli.py").write_text(PROBE_CLI)
    launcher = tmp_path / "xenguest-agent"
    launcher.write_text(load_build().render_launcher(DEBIAN_PYTHON, str(datadir)))
    launcher.chmod(0o755)
    done = subprocess.run([str(launcher)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    assert report["path"][0] == str(datadir)  # type: ignore[index]  # the private directory first
    return report


def test_launcher_isolates_the_root_daemon_from_the_environment(tmp_path: Path) -> None:
    # -I (Python's command-line docs): PYTHONPATH and the user's site directory are ignored
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = run_launcher(tmp_path, dict(os.environ, PYTHONPATH=str(elsewhere)))
    assert report["isolated"] == 1
    assert str(elsewhere) not in report["path"]  # type: ignore[operator]


def test_launcher_runs_no_site_code_but_finds_the_distro_modules(tmp_path: Path) -> None:
    """-S: site's main() never runs (CPython Lib/site.py ends with ``if not
    sys.flags.no_site: main()``), so no .pth file in a site directory and no sitecustomize
    runs code in the daemon; the launcher adds the directories site.getsitepackages() names,
    which is where python3-yaml is.  Debian's python3-setuptools installs
    distutils-precedence.pth in /usr/lib/python3/dist-packages, which imports _distutils_hack
    whenever site processes it; Debian's python3.11 ships a sitecustomize (apport's hook)."""
    pth = Path("/usr/lib/python3/dist-packages/distutils-precedence.pth")
    assert pth.exists(), f"{pth} missing: python3-setuptools (.ci/install-deps.sh installs it)"
    report = run_launcher(tmp_path, dict(os.environ))
    assert report["no_site"] == 1
    modules = report["modules"]
    assert "_distutils_hack" not in modules and "sitecustomize" not in modules, modules  # type: ignore[operator]
    path: list[str] = report["path"]  # type: ignore[assignment]
    assert report["yaml"] == "/usr/lib/python3/dist-packages/yaml/__init__.py"
    # Debian's site directories, in the order its site.py lists them, after the standard
    # library (/usr/lib/python3.X), as site itself would have put them
    version = tool(DEBIAN_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    sites = [d for d in (f"/usr/local/lib/python{version}/dist-packages",
                         "/usr/lib/python3/dist-packages", f"/usr/lib/python{version}/dist-packages")
             if os.path.isdir(d)]
    assert [d for d in path if d in sites] == sites
    assert path.index(sites[0]) > path.index(f"/usr/lib/python{version}")


# --- rpm (packaging/rpm/xenguest-agent.spec, docs/packaging.md) -------------------------


def test_rpm_requires_the_distro_python_stack_and_not_pyxs(built: Built) -> None:
    requires = [line.strip() for line in tool("rpm", "-qp", "--requires", built.rpm).splitlines()]
    assert "python3 >= 3.9" in requires
    assert "python3-psutil" in requires
    assert "python3-pyyaml" in requires  # EL9's name for PyYAML (docs/packaging.md)
    assert not [r for r in requires if "pyxs" in r], requires  # vendored, not a dependency


def test_rpm_installs_the_documented_files(built: Built) -> None:
    files = set(tool("rpm", "-qlp", built.rpm).splitlines())
    for path in ("/usr/bin/xenguest-agent",
                 "/usr/share/xenguest-agent/xenguest_agent/cli.py",
                 "/usr/share/xenguest-agent/pyxs/client.py",
                 "/usr/lib/systemd/system/xenguest-agent.service",
                 "/etc/xenguest-agent/config.yaml",
                 "/etc/xenguest-agent/hooks"):
        assert path in files, path
    # rpm compresses man pages where brp-compress runs (EL9), Debian's rpmbuild does not
    assert [f for f in files if re.fullmatch(r"/usr/share/man/man8/xenguest-agent\.8(\.gz)?", f)]


def test_rpm_enables_the_unit_on_first_install_and_lays_out_docs_as_el9(built: Built) -> None:
    # %post: enable on install ($1 == 1), as the deb does; EL9 presets would leave it off
    post = tool("rpm", "-qp", "--scripts", built.rpm)
    assert re.search(r'if \[ "\$1" -eq 1 \]; then\s+systemctl --no-reload enable '
                     r"xenguest-agent\.service", post), post
    files = set(tool("rpm", "-qlp", built.rpm).splitlines())
    assert "/usr/share/doc/xenguest-agent/README.md" in files  # _docdir_fmt %{name}
    assert "/usr/share/licenses/xenguest-agent/LICENSE" in files


def test_rpm_marks_the_config_noreplace(built: Built) -> None:
    assert tool("rpm", "-qcp", built.rpm).split() == ["/etc/xenguest-agent/config.yaml"]
    # %config(noreplace): rpm's file flags "c" (config) and "n" (noreplace), rpm's --fileflags
    flags = dict(line.split(None, 1)[::-1] for line in tool(
        "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", built.rpm).splitlines()
        if len(line.split(None, 1)) == 2)
    assert set(flags["/etc/xenguest-agent/config.yaml"]) >= {"c", "n"}


# --- deb (packaging/debian, Debian policy, docs/packaging.md) ---------------------------


def deb_depends(built: Built) -> list[str]:
    field = tool("dpkg-deb", "-f", built.deb, "Depends")
    return [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for dep in field.split(",")
            for alt in dep.split("|")]


def test_deb_depends_on_the_distro_python_stack_and_not_pyxs(built: Built) -> None:
    names = deb_depends(built)
    assert "python3" in names and "python3-psutil" in names and "python3-yaml" in names
    assert not [n for n in names if "pyxs" in n], names
    assert "python3 (>= 3.9)" in tool("dpkg-deb", "-f", built.deb, "Depends")


def test_deb_installs_the_documented_files(built: Built) -> None:
    listing = tool("dpkg-deb", "-c", built.deb).splitlines()
    files = {line.split()[5].lstrip(".").rstrip("/") for line in listing}
    for path in ("/usr/bin/xenguest-agent",
                 "/usr/share/xenguest-agent/xenguest_agent/cli.py",
                 "/usr/share/xenguest-agent/pyxs/client.py",
                 "/lib/systemd/system/xenguest-agent.service",
                 "/etc/xenguest-agent/config.yaml",
                 "/etc/xenguest-agent/hooks",
                 "/usr/share/man/man8/xenguest-agent.8.gz"):  # dh_installman compresses
        assert path in files, path


def test_deb_installs_the_launcher_the_benchmark_measures(built: Built) -> None:
    # benchmarks/bench.py renders the launcher with build.render_launcher: it must be the
    # very file the .deb installs as /usr/bin/xenguest-agent
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", built.deb], capture_output=True,
                          check=True).stdout
    import io
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("./usr/bin/xenguest-agent")
        assert member is not None
        installed = member.read().decode()
    assert installed == load_build().render_launcher("/usr/bin/python3", "/usr/share/xenguest-agent")


def test_deb_conffile_and_enabled_unit(built: Built, tmp_path: Path) -> None:
    control = tmp_path / "control"
    tool("dpkg-deb", "-e", built.deb, str(control))
    # Debian policy 10.7.2: files under /etc are conffiles
    assert (control / "conffiles").read_text().split() == ["/etc/xenguest-agent/config.yaml"]
    # dh_installsystemd's postinst enables the unit through deb-systemd-helper on configure
    postinst = (control / "postinst").read_text()
    assert re.search(r"deb-systemd-helper enable '?xenguest-agent\.service'?", postinst), postinst


# --- sdist and wheel ----------------------------------------------------------------------


def test_sdist_carries_tests_docs_services_and_recipes(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    top = f"xenguest-agent-{source_version()}"
    assert built.sdist.name == f"{top}.tar.gz"
    for path in ("tests/conftest.py", "tests/fixtures/linux/alpine319", "tests/xenstored/shim.c",
                 "docs/man/xenguest-agent.8", "systemd/xenguest-agent.service",
                 "rc.d/xenguest_agent", "openrc/xenguest-agent", "examples/config.yaml",
                 "packaging/build.py", "packaging/rpm/xenguest-agent.spec",
                 "packaging/debian/control", "LICENSE", "dev", ".ci/install-deps.sh"):
        assert path in names, path


def test_sdist_tests_pass_from_the_unpacked_sdist(built: Built, tmp_path: Path) -> None:
    with tarfile.open(built.sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    tree = tmp_path / built.sdist.name[:-len(".tar.gz")]
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    where = tool_in(tree, env, sys.executable, "-c",
                    "import xenguest_agent; print(xenguest_agent.__file__)")
    assert Path(where.strip()).is_relative_to(tree), f"imported {where} instead of the sdist's"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_schema.py", "tests/test_config.py",
                           "tests/test_golden_linux.py", "tests/test_openrc.py"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and " failed" not in done.stdout


def tool_in(cwd: Path, env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wheel_metadata_version_and_pinned_pyxs(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        text = wheel.read(metadata).decode()
    headers = text.split("\n\n", 1)[0].splitlines()
    assert f"Version: {source_version()}" in headers
    # core metadata Requires-Dist; older setuptools write "pyxs (==0.4.1)", newer "pyxs==0.4.1"
    requires = [re.sub(r"[\s()]", "", h.split(":", 1)[1]) for h in headers
                if h.startswith("Requires-Dist:")]
    assert "pyxs==0.4.1" in requires, requires


# --- FreeBSD port ---------------------------------------------------------------------------


def test_port_plist_lists_every_module(built: Built) -> None:
    plist = set((built.port / "pkg-plist").read_text().splitlines())
    src = REPO / "src"
    for module in sorted((src / "xenguest_agent").rglob("*.py")):
        assert f"%%DATADIR%%/{module.relative_to(src).as_posix()}" in plist, module


def test_port_distinfo_matches_the_distfiles(built: Built) -> None:
    # porting-handbook distinfo: "SHA256 (file) = hex" and "SIZE (file) = bytes" per distfile
    build = load_build()
    pyxs = build.CACHE / f"pyxs-{build.PYXS_VERSION}.tar.gz"  # what the build vendored
    entries = re.findall(r"^(SHA256|SIZE) \(([^)]+)\) = (\S+)$",
                         (built.port / "distinfo").read_text(), re.M)
    recorded = {(kind, name): value for kind, name, value in entries}
    assert {name for _, name in recorded} == {built.sdist.name, pyxs.name}
    for path in (built.sdist, pyxs):
        assert recorded["SHA256", path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert int(recorded["SIZE", path.name]) == path.stat().st_size
