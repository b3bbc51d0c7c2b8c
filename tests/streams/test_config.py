"""Settings come from defaults, a YAML file, KARMA_* variables and overrides, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from karma.streams.config import ConfigError, KarmaSettings, load_settings
from karma.tools.processes import settings_env


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


# --- the cluster's TLS and SASL settings (kafka_security) ----------------------------------------


def test_kafka_security_defaults_to_plaintext() -> None:
    security = load_settings().kafka_security
    assert security.security_protocol == "PLAINTEXT" and not security.uses_sasl and not security.uses_tls
    assert security.sasl_password is None


def test_sasl_needs_a_user_and_a_set_password_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_KAFKA_PASSWORD", raising=False)
    with pytest.raises(
        ConfigError, match="kafka_security: security_protocol SASL_PLAINTEXT needs sasl_username"
    ):
        load_settings(kafka_security={"security_protocol": "SASL_PLAINTEXT", "sasl_username": "karma"})
    sasl = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_username": "karma",
        "sasl_password_env": "TEST_KAFKA_PASSWORD",
    }
    with pytest.raises(ConfigError, match="sasl_password_env names TEST_KAFKA_PASSWORD, which is not set"):
        load_settings(kafka_security=sasl)
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret")
    security = load_settings(kafka_security=sasl).kafka_security
    assert security.sasl_password == "s3cret" and security.sasl_mechanism == "PLAIN"
    assert "s3cret" not in load_settings(kafka_security=sasl).model_dump_json()  # only the variable's name


def test_tls_files_must_exist_and_need_a_tls_protocol(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match=rf"kafka_security.ssl_cafile: .*{ca} is not a readable file"):
        load_settings(kafka_security={"security_protocol": "SSL", "ssl_cafile": str(ca)})
    ca.write_text("a PEM file\n")
    assert load_settings(
        kafka_security={"security_protocol": "SSL", "ssl_cafile": str(ca)}
    ).kafka_security.uses_tls
    # TLS files with PLAINTEXT mostly mean a forgotten security_protocol: the traffic would go in clear.
    with pytest.raises(
        ConfigError, match="ssl_cafile given, but security_protocol PLAINTEXT does not use TLS"
    ):
        load_settings(kafka_security={"ssl_cafile": str(ca)})
    with pytest.raises(ConfigError, match="sasl_username given, but security_protocol SSL does not use SASL"):
        load_settings(kafka_security={"security_protocol": "SSL", "sasl_username": "karma"})
    with pytest.raises(ConfigError, match="ssl_keyfile needs ssl_certfile"):
        load_settings(kafka_security={"security_protocol": "SSL", "ssl_keyfile": str(ca)})
    with pytest.raises(ConfigError, match=r"kafka_security.sasl_mechanism: .*'SCRAM-SHA-512'"):
        load_settings(kafka_security={"security_protocol": "SSL", "sasl_mechanism": "SCRAM-SHA-1"})


def test_kafka_security_from_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a PEM file\n")
    for key, value in {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": "karma",
        "SASL_PASSWORD_ENV": "KARMA_KAFKA_PASSWORD",
        "SSL_CAFILE": str(ca),
    }.items():
        monkeypatch.setenv(f"KARMA_KAFKA_SECURITY__{key}", value)
    # The password variable `karma broker start --secure` prints is not refused as a setting.
    monkeypatch.setenv("KARMA_KAFKA_PASSWORD", "s3cret")
    security = load_settings().kafka_security
    assert (security.security_protocol, security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert security.ssl_cafile == ca and security.sasl_password == "s3cret"
    monkeypatch.setenv("KARMA_KAFKA_SECURITY__SASL_USER", "karma")
    with pytest.raises(ConfigError, match="unknown key 'sasl_user'; did you mean 'sasl_username'"):
        load_settings()


def test_child_processes_get_the_same_security_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`settings_env` (tools/processes.py) hands a worker its settings as KARMA_* variables;
    the password variable itself is inherited, never copied into them."""
    ca = tmp_path / "ca.pem"
    ca.write_text("a PEM file\n")
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "s3cret")
    settings = load_settings(
        kafka_security={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "karma",
            "sasl_password_env": "TEST_KAFKA_PASSWORD",
            "ssl_cafile": str(ca),
        }
    )
    variables = settings_env(settings)
    assert not any("s3cret" in value for value in variables.values())
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


def test_shutdown_timeout_is_bounded_and_positive() -> None:
    assert KarmaSettings().shutdown_timeout_s == 30.0
    assert KarmaSettings(shutdown_timeout_s=5).shutdown_timeout_s == 5.0
    with pytest.raises(ValidationError):
        KarmaSettings(shutdown_timeout_s=0)  # a worker that may not take any time cannot commit
