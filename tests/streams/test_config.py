"""Settings come from defaults, a YAML file, KARMA_* variables and overrides, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from karma.streams.config import ConfigError, KarmaSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KARMA_CONFIG", raising=False)
    monkeypatch.delenv("KARMA_BOOTSTRAP_SERVERS", raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.topic("prompts") == "karma.prompts"
    assert len(settings.pool) == 5
    assert settings.kin.tau == 0.95


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "karma.yaml"
    config.write_text(
        "topic_prefix: lab.\npartitions: 2\nkin:\n  tau: 0.8\npool:\n  - name: a\n  - name: b\n"
    )
    monkeypatch.setenv("KARMA_PARTITIONS", "3")
    settings = load_settings(config, seed=7)
    assert settings.topic("dlq") == "lab.dlq"
    assert settings.partitions == 3  # env beats the file
    assert settings.kin.tau == 0.8
    assert settings.model_names == ["a", "b"]
    assert settings.seed == 7


def test_nested_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_KIN__DELTA", "0.05")
    assert load_settings().kin.delta == 0.05


def test_missing_and_malformed_files_say_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_duplicate_models_and_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="repeated"):
        KarmaSettings(pool=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValidationError, match="Extra inputs"):
        KarmaSettings(partitionz=3)
