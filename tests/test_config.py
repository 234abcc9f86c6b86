"""Configuration: defaults, every section, and errors that name file, line and key."""

import pytest

from xenguest_agent.config import Config, ConfigError, load_config, parse_config


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
