"""config.toml: defaults, validation with one clear line, and the documented example."""

from __future__ import annotations

from pathlib import Path

import pytest

from versionfs.common import config, units

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_valid_and_typed():
    cfg = config.Config()
    assert cfg["meta.quota_bytes"] == 2 << 30
    assert cfg["store.fast_max_bytes"] == 0
    assert cfg["encryption.enabled"] is False
    assert cfg.mount["idle_seal_seconds"] == 5.0


def test_round_trip_writes_only_changes(tmp_path):
    cfg = config.Config()
    cfg.set("store.slow", "s3://bucket/home")
    cfg.set("store.fast_max_bytes", "20G")
    path = tmp_path / "config.toml"
    config.save(cfg, path)
    text = path.read_text()
    assert "upload_concurrency" not in text
    loaded = config.load(path)
    assert loaded["store.slow"] == "s3://bucket/home"
    assert loaded["store.fast_max_bytes"] == 20 << 30


@pytest.mark.parametrize("body, words", [
    ("[store]\nbogus = 1\n", ["unknown key store.bogus"]),
    ("[nosuch]\nx = 1\n", ["unknown section [nosuch]"]),
    ("[store]\nupload_concurrency = \"many\"\n", ["store.upload_concurrency", "integer"]),
    ("[store]\nupload_concurrency = 0\n", ["store.upload_concurrency", "greater than 0"]),
    ("[encryption]\nenabled = \"yes\"\n", ["encryption.enabled", "true or false"]),
    ("[encryption]\ncipher = \"rot13\"\n", ["encryption.cipher", "aes-256-gcm"]),
    ("[store]\nfast_max_bytes = \"lots\"\n", ["store.fast_max_bytes", "not a size"]),
    ("[store]\nslow = \"ftp://x\"\n", ["store.slow"]),
    ("[mount]\nfuse_options = [1]\n", ["mount.fuse_options", "list of strings"]),
    ("store = 3\n", ["store must be a table"]),
    ("[store\n", ["not valid TOML"]),
])
def test_bad_config_is_one_line_naming_key_and_file(tmp_path, body, words):
    path = tmp_path / "config.toml"
    path.write_text(body)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message


def test_sizes():
    assert units.parse_size("512MiB") == 512 << 20
    assert units.parse_size("1.5G") == 3 << 29
    assert units.parse_size(4096) == 4096
    with pytest.raises(ValueError):
        units.parse_size("-1")


def test_example_file_documents_every_key_and_loads():
    example = REPO / "contrib" / "config.example.toml"
    assert example.read_text() == config.example_toml(), \
        "regenerate: python -c 'from versionfs.common import config; print(config.example_toml(), end=\"\")' > contrib/config.example.toml"
    loaded = config.load(example)
    assert loaded.values == config.defaults()
    for key in config.SCHEMA.values():
        assert f"\n{key.name} = " in example.read_text()
