"""Configuration: defaults, every section, and errors that name file, line and key."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support.trusted import trusted_directory
from xenguest_agent import cli
from xenguest_agent.config import (
    FREEBSD_HOOKS_DIR,
    LINUX_HOOKS_DIR,
    Config,
    ConfigError,
    check_trusted_config,
    load_config,
    parse_config,
)
from xenguest_agent.configcheck import MAX_VIF_ID


def test_empty_file_means_defaults():
    config = parse_config("", "c.yaml")
    assert config.memory.threshold_kib == Config().memory.threshold_kib
    assert config.network.exclude == ("lo",)
    assert config.control.mode == "auto"


def test_every_section_is_read():
    config = parse_config(
        "xenstore: unix:/run/xenstored/socket\n"
        "interval: 120\n"
        "log_level: DEBUG\n"
        "memory:\n  threshold_kib: 1024\n  threshold_percent: 2.5\n  min_interval: 1\n  max_age: 30\n"
        "network:\n  include: [eth*, enX*]\n  exclude: lo\n  max_addresses: 4\n"
        "  static_vifs: {eth9: 3}\n"
        "features:\n  balloon: false\n  hotplug: false\n"
        "control:\n  mode: observe\n  grace: 0.5\n  pm_freeze_timeout: null\n",
        "c.yaml")
    assert config.xenstore == "unix:/run/xenstored/socket"
    assert config.interval == 120.0
    assert config.log_level == "debug"
    assert config.memory.threshold_percent == 2.5 and config.memory.max_age == 30.0
    assert config.network.include == ("eth*", "enX*")
    assert config.network.exclude == ("lo",)
    assert config.network.static_vifs == (("eth9", 3),)
    assert config.features.balloon is False and config.features.hotplug is False
    assert config.control.mode == "observe" and config.control.pm_freeze_timeout is None
    assert config.source == "c.yaml"


@pytest.mark.parametrize("text, where, key", [
    ("intervall: 5\n", "c.yaml:1", "intervall"),
    ("memory:\n  threshold_kib: lots\n", "c.yaml:2", "memory.threshold_kib"),
    ("memory:\n  threshold_kib: true\n", "c.yaml:2", "memory.threshold_kib"),
    ("network:\n  max_addresses: 0\n", "c.yaml:2", "network.max_addresses"),
    ("network:\n  typo: 1\n", "c.yaml:2", "network.typo"),
    ("control:\n  mode: reboot-now\n", "c.yaml:2", "control.mode"),
    ("\n\nfeatures: yes-please\n", "c.yaml:3", "features"),
    ("interval: 5\ninterval: 6\n", "c.yaml:2", "interval"),
    ("network:\n  static_vifs: {eth0: -1}\n", "c.yaml:2", "network.static_vifs"),
])
def test_errors_name_file_line_and_key(text, where, key):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    message = str(caught.value)
    assert message.startswith(f"{where}: {key}: "), message
    assert caught.value.key == key


def test_invalid_yaml_names_the_line():
    with pytest.raises(ConfigError) as caught:
        parse_config("memory:\n  threshold_kib: [1,\n", "c.yaml")
    assert str(caught.value).startswith("c.yaml:")
    assert "not valid YAML" in str(caught.value)


def test_missing_file_is_fine_unless_named(tmp_path):
    assert load_config(str(tmp_path / "absent.yaml"), required=False) == Config()
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "absent.yaml"), required=True)


def test_file_errors_name_the_path(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("memory:\n  max_age: -3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), required=True)
    assert str(caught.value).startswith(f"{path}:2: memory.max_age: ")


# --- hostile input (hardening issue, item 9) ---------------------------------------------
# Every case goes through the real command line: `xenguest-agent run --config FILE` must
# exit 78 (EX_CONFIG, sysexits(3): systemd's RestartPreventExitStatus=78 then stops
# restarting a unit that cannot work) and name file, line and key, never a traceback.


DEEP = "[" * 5000 + "]" * 5000


def run_cli(path, capsys):
    status = cli.main(["run", "--config", str(path), "--os", "linux", "--root", str(path.parent),
                       "--once", "--xenstore", "unix:/nonexistent/socket"])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("text, line, key", [
    # YAML 1.1's .nan/.inf are floats to PyYAML: NaN compares false with every bound (a
    # NaN timeout never expires: a spinning loop), inf overflows time arithmetic.
    ("interval: .nan\n", 1, "interval"),
    ("poll_interval: .inf\n", 1, "poll_interval"),
    ("control:\n  hook_timeout: .nan\n", 2, "control.hook_timeout"),
    ("control:\n  grace: -.inf\n", 2, "control.grace"),
    ("memory:\n  threshold_percent: .NaN\n", 2, "memory.threshold_percent"),
    ("interval: 1e400\n", 1, "interval"),                      # 1e400 is inf in a float
    ("interval: " + "9" * 400 + "\n", 1, "interval"),           # an int far past any bound
    ("interval: " + "9" * 5000 + "\n", 1, "interval"),          # past int()'s digit limit
    # Busy loops: every interval has a floor of 1 s.
    ("interval: 0.000000001\n", 1, "interval"),
    ("poll_interval: 0.01\n", 1, "poll_interval"),
    ("memory:\n  min_interval: 0\n", 2, "memory.min_interval"),
    ("memory:\n  max_age: 0.5\n", 2, "memory.max_age"),
    ("memory:\n  threshold_percent: 101\n", 2, "memory.threshold_percent"),
    ("memory:\n  threshold_kib: " + str(1 << 64) + "\n", 2, "memory.threshold_kib"),
    # xenopsd gives up 60 s after the request (xen-api ocaml/xenopsd/lib/xenops_server.ml,
    # domain_shutdown_ack_timeout = 60.): a grace period past that acknowledges too late.
    ("control:\n  grace: 60\n", 2, "control.grace"),
    ("control:\n  hook_timeout: 0\n", 2, "control.hook_timeout"),
    ("control:\n  hook_timeout: 3601\n", 2, "control.hook_timeout"),
    ("control:\n  pm_freeze_timeout: 100000\n", 2, "control.pm_freeze_timeout"),
    ("network:\n  max_addresses: 100000\n", 2, "network.max_addresses"),
    # Tags the safe loader cannot construct or constructs into an exception.
    ("interval: !!float abc\n", 1, "interval"),
    ("log_level: !!python/object/apply:os.system [true]\n", 1, "log_level"),
    ("control:\n  grace: !!timestamp 2020-13-45\n", 2, "control.grace"),
    ("xenstore: !custom thing\n", 1, "xenstore"),
    ("control:\n  grace: !!timestamp nonsense\n", 2, "control.grace"),  # AttributeError in PyYAML
    ("features:\n  balloon: !!binary '%%%'\n", 2, "features.balloon"),
    # 5,000-deep nesting: Python's recursion limit inside PyYAML's composer.
    ("network:\n  include: " + DEEP + "\n", 2, "network.include"),
    # item 8: a VIF id of thousands of digits ends as an invalid XenStore path.
    ("network:\n  static_vifs: {eth0: " + "1" * 3000 + "}\n", 2, "network.static_vifs"),
    ("network:\n  static_vifs: {eth0: " + str(MAX_VIF_ID + 1) + "}\n", 2, "network.static_vifs"),
    # Linux net/core/dev.c dev_valid_name: shorter than IFNAMSIZ (16), no '/', ':', space.
    ("network:\n  static_vifs: {" + "e" * 16 + ": 0}\n", 2, "network.static_vifs"),
    ("network:\n  static_vifs: {'eth0:1': 0}\n", 2, "network.static_vifs"),
    ("network:\n  static_vifs: {'..': 0}\n", 2, "network.static_vifs"),
    ("xenstore: \"/dev/xen/xenbus\\0x\"\n", 1, "xenstore"),
    # What runs as root is an absolute argv without NUL bytes.
    ("control:\n  commands: {poweroff: [poweroff]}\n", 2, "control.commands"),
    ("control:\n  commands: {poweroff: [\"/sbin/poweroff\\0\"]}\n", 2, "control.commands"),
    ("control:\n  hooks_dir: hooks\n", 2, "control.hooks_dir"),
    ("control:\n  hooks_dir: ''\n", 2, "control.hooks_dir"),
])
def test_hostile_values_exit_78_naming_file_line_and_key(tmp_path, capsys, text, line, key):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    status, err = run_cli(path, capsys)
    assert status == 78, err
    assert f"{path}:{line}: {key}: " in err, err
    assert "Traceback" not in err


def test_deep_nesting_at_the_top_is_refused_too(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(DEEP + "\n")
    status, err = run_cli(path, capsys)
    assert status == 78 and f"{path}:1: " in err, err


def test_alias_chains_deeper_than_the_recursion_limit_are_refused(tmp_path, capsys):
    # Anchors keep the composed tree shallow, but constructing the last alias recurses
    # once per link: the composer's depth bound alone does not catch this.
    links = ["&a0 [x]"] + [f"&a{i} [*a{i - 1}]" for i in range(1, 3000)]
    path = tmp_path / "config.yaml"
    path.write_text("network:\n  include: [" + ", ".join(links) + "]\n")
    status, err = run_cli(path, capsys)
    assert status == 78 and f"{path}:2: network.include: " in err, err


def run_subprocess(path):
    """The CLI in its own process, so a blocking open fails the test instead of hanging it."""
    return subprocess.run([sys.executable, "-m", "xenguest_agent", "run", "--config", str(path),
                           "--os", "linux", "--once", "--xenstore", "unix:/nonexistent/socket"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_fifo_as_config_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    done = run_subprocess(fifo)  # today: open(2) waits for a writer forever (timeout)
    assert done.returncode == 78, done.stderr
    assert f"{fifo}: not a regular file" in done.stderr


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_device_as_config_is_refused(path):
    done = run_subprocess(path)  # /dev/zero: today a read without end
    assert done.returncode == 78, done.stderr
    assert f"{path}: not a regular file" in done.stderr


def test_directory_as_config_is_refused(tmp_path):
    done = run_subprocess(tmp_path)
    assert done.returncode == 78 and f"{tmp_path}: not a regular file" in done.stderr, done.stderr


def test_oversized_config_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("# padding\n" * 100_000)  # 1 MB of comments: valid YAML, far too big
    with pytest.raises(ConfigError, match="larger than"):
        load_config(str(path), required=True)


def test_bounds_at_their_edges_are_accepted():
    config = parse_config(
        "interval: 1\npoll_interval: 1\nmemory:\n  min_interval: 1\n  threshold_percent: 100\n"
        f"network:\n  static_vifs: {{{'e' * 15}: {MAX_VIF_ID}}}\n"
        "control:\n  grace: 0\n  hook_timeout: 3600\n  hooks_dir: /srv/hooks/\n", "c.yaml")
    assert config.interval == 1.0 and config.memory.min_interval == 1.0
    assert config.network.static_vifs == (("e" * 15, MAX_VIF_ID),)
    assert config.control.grace == 0.0 and config.control.hook_timeout == 3600.0
    assert config.control.hooks_dir == "/srv/hooks"


def test_hooks_dir_defaults_per_os():
    assert Config().control.hooks_dir is None  # the CLI picks the per-OS default
    assert LINUX_HOOKS_DIR == "/etc/xenguest-agent/hooks"
    assert FREEBSD_HOOKS_DIR == "/usr/local/etc/xenguest-agent/hooks"


# --- a config that makes root run things must be root's alone (item 5) ----------------------

COMMANDS = "control:\n  commands: {poweroff: [/bin/true]}\n"


@pytest.fixture
def trusted():
    with trusted_directory() as path:
        yield path


def test_commands_from_a_world_writable_directory_are_refused(tmp_path, capsys):
    # tmp_path lies under /tmp (mode 1777): anyone may create entries there.
    path = tmp_path / "config.yaml"
    path.write_text(COMMANDS)
    status, err = run_cli(path, capsys)
    assert status == 78, err
    assert f"{path}: control.commands: " in err and "/tmp" in err, err


def test_a_config_without_commands_or_hooks_dir_may_live_anywhere(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("interval: 60\n")
    assert load_config(str(path), required=True).interval == 60.0


def test_commands_in_a_root_only_chain_are_accepted(trusted):
    path = trusted / "config.yaml"
    path.write_text(COMMANDS)
    os.chmod(path, 0o644)
    assert load_config(str(path), required=True).control.commands == (("poweroff", ("/bin/true",)),)
    check_trusted_config(str(path))  # and the check on its own agrees


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_group_or_other_writable_config_is_refused(trusted, mode):
    path = trusted / "config.yaml"
    path.write_text("control:\n  hooks_dir: /etc/xenguest-agent/hooks\n")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="control.hooks_dir: .*writable"):
        load_config(str(path), required=True)


def test_config_owned_by_another_user_is_refused(trusted):
    path = trusted / "config.yaml"
    path.write_text(COMMANDS)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        load_config(str(path), required=True)


def test_a_writable_directory_in_the_chain_is_refused(trusted):
    sub = trusted / "sub"
    sub.mkdir()
    path = sub / "config.yaml"
    path.write_text(COMMANDS)
    os.chmod(sub, 0o775)
    with pytest.raises(ConfigError, match=f"{sub} .*writable"):
        check_trusted_config(str(path))


def test_a_symlink_is_judged_by_its_target_chain(trusted, tmp_path):
    real = trusted / "config.yaml"
    real.write_text(COMMANDS)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)  # the link lives in /tmp, but what is read is root's file
    assert load_config(str(link), required=True).control.commands
    assert stat.S_IMODE(os.stat(real).st_mode) & 0o022 == 0


def test_mutated_configs_end_in_a_config_error_or_a_config():
    """Tags, aliases, flow markers, NUL bytes and huge numbers sprinkled over the
    README's example (a fixed seed): nothing but ConfigError may come out."""
    import random
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    base = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    noise = ["!!float", "!!int", "!!binary", "!!timestamp", "!!set", "!!omap", "!!pairs",
             "!!python/tuple", "!!python/object:os.system", "!x", "&a", "*a", "*b", "<<:", "{",
             "[", "]", "}", ":", "- ", "? ", "|", "'", '"', "\t", "---\n", "\x00", ".nan",
             "1e999", "0x" + "f" * 50, "1:30:00", "9" * 4400]
    rng = random.Random(20261130)
    for _ in range(500):
        lines = base.split("\n")
        for _ in range(rng.randint(1, 4)):
            j = rng.randrange(len(lines))
            value = lines[j].find(": ") + 2  # mostly just before a value, else anywhere
            k = value if value > 1 and rng.random() < 0.7 else rng.randint(0, len(lines[j]))
            lines[j] = lines[j][:k] + rng.choice(noise) + " " + lines[j][k:]
        try:
            parse_config("\n".join(lines), "f.yaml")
        except ConfigError:
            pass


def test_hotplug_settings_accept_auto_and_booleans_and_refuse_others(tmp_path):
    """hotplug.online_cpus / online_memory: auto, true or false (hotplug_rules.SETTINGS)."""
    from xenguest_agent import cli
    from xenguest_agent.config import parse_config

    config = parse_config("hotplug:\n  online_cpus: false\n  online_memory: auto\n", "c.yaml")
    assert (config.hotplug.online_cpus, config.hotplug.online_memory) == ("false", "auto")
    bad = tmp_path / "config.yaml"
    bad.write_text("hotplug:\n  online_cpus: sometimes\n")
    assert cli.main(["show", "--config", str(bad), "--root", str(tmp_path)]) == 78
