"""Settings come from defaults, a YAML file, KARMA_* variables and overrides, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from karma.streams.config import ConfigError, KarmaSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set, then deleted: monkeypatch then restores the variables' original state afterwards,
    # removing the KARMA_CONFIG that load_settings(file) exports for child workers.
    for variable in ("KARMA_CONFIG", "KARMA_BOOTSTRAP_SERVERS"):
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)


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


# --- strict configuration: a typo is an error that says where, never a silent default --------


def test_misspelt_keys_in_a_file_name_file_key_path_and_closest_name(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        "pool:\n  - name: m1\n    backnd: openai\n  - name: m2\nkin:\n  tua: 0.5\njudge:\n  bakend: zebra\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert str(raised.value).splitlines() == [
        f"config file {config}: pool[0].backnd: unknown key 'backnd'; did you mean 'backend'?",
        f"config file {config}: kin.tua: unknown key 'tua'; did you mean 'tau'?",
        f"config file {config}: judge.bakend: unknown key 'bakend'; did you mean 'backend'?",
    ]


def test_every_section_refuses_unknown_keys() -> None:
    for section in ("kin", "judge", "competency"):
        with pytest.raises(ValidationError, match="Extra inputs"):
            KarmaSettings(**{section: {"no_such_key": 1}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        KarmaSettings(pool=[{"name": "m1", "backnd": "openai"}, {"name": "m2"}], kin={"tua": 0.5})


def test_a_misspelt_nested_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_KIN__TUA", "0.5")
    with pytest.raises(
        ConfigError, match=r"^environment variable KARMA_KIN__TUA: kin.tua: unknown key 'tua'; "
    ):
        load_settings()


def test_a_misspelt_top_level_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_BATCH_SIZ", "8")
    with pytest.raises(
        ConfigError, match="KARMA_BATCH_SIZ: no setting named 'batch_siz'; did you mean KARMA_BATCH_SIZE"
    ):
        load_settings()


def test_an_unknown_key_in_a_pool_given_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_POOL", '[{"name": "a", "latent_qualty": 0.5}, {"name": "b"}]')
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == (
        "environment variable KARMA_POOL: pool[0].latent_qualty: unknown key 'latent_qualty'; "
        "did you mean 'latent_quality'?"
    )


def test_variables_that_are_not_settings_are_allowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KARMA_HOME", str(tmp_path))
    monkeypatch.setenv("KARMA_KAFKA_POM", str(tmp_path / "pom.xml"))
    assert load_settings().partitions == 4


def test_a_pool_of_one_model_cannot_be_paired() -> None:
    with pytest.raises(ConfigError, match=r"pool: .* needs at least two models; it has 1 \(solo\)"):
        load_settings(pool=[{"name": "solo"}])


def test_heartbeat_must_be_below_the_session_timeout() -> None:
    with pytest.raises(
        ConfigError, match=r"heartbeat_interval_s \(6\) must be below session_timeout_s \(6\)"
    ):
        load_settings(heartbeat_interval_s=6.0, session_timeout_s=6.0)


def test_a_named_api_key_variable_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    served = {"name": "m1", "backend": "openai", "base_url": "http://127.0.0.1:8000/v1"}
    with pytest.raises(ConfigError, match=r"pool\[0\]: api_key_env names MY_KEY, which is not set"):
        load_settings(pool=[{**served, "api_key_env": "MY_KEY"}, {"name": "m2"}])
    monkeypatch.setenv("MY_KEY", "secret")
    assert (
        load_settings(pool=[{**served, "api_key_env": "MY_KEY"}, {"name": "m2"}]).pool[0].api_key == "secret"
    )
    # Not named: OPENAI_API_KEY when set, else the "EMPTY" key that `vllm serve` accepts.
    assert load_settings(pool=[served, {"name": "m2"}]).pool[0].api_key == "EMPTY"
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai-var")
    assert load_settings(pool=[served, {"name": "m2"}]).pool[0].api_key == "from-openai-var"


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")))
def test_the_example_configs_are_valid(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "for-the-example")
    assert len(load_settings(example).pool) >= 2
