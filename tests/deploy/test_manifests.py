"""deploy/k8s (kustomize) and deploy/compose.yaml, checked offline: no Docker engine or Kubernetes
cluster runs here, so what can be checked without them is: the kustomization renders from its
files, every worker command parses with the real CLI, every model of the pool has its generation
worker, ports and probes match the configuration and the endpoints the workers serve, the
credentials come from the Secret under the names the configuration reads, GPUs go only to
in-process vLLM workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from karma.cli import app
from karma.streams.app import ROLES
from karma.streams.config import KarmaSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
METRICS_PORT = 9108


def render_kustomization() -> list[dict[str, Any]]:
    """What `kubectl kustomize deploy/k8s` would emit, for the features this kustomization uses:
    its resources, the ConfigMap generated from its files, the namespace set on each."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = [
        doc for name in kustomization["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())
    ]
    for generator in kustomization.get("configMapGenerator", []):
        data = {name: (K8S / name).read_text() for name in generator["files"]}
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    for obj in objects:
        if obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def parse_command(argv: list[str]) -> Any:
    """The worker command as the real CLI parses it (its click context): unknown options or
    choices raise."""
    assert argv[0] == "karma", argv
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert argv[1] in commands, f"no command {argv[1]!r}"
    return commands[argv[1]].make_context(argv[1], list(argv[2:]))


def deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "Deployment"]


@pytest.fixture
def k8s_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KarmaSettings:
    """deploy/k8s/config.yaml as a worker in the pod validates it (its CA file and the Secret's
    variables stood in for)."""
    data = yaml.safe_load((K8S / "config.yaml").read_text())
    ca = tmp_path / "ca.crt"
    ca.write_text("stand-in")
    data["kafka_security"]["ssl_cafile"] = str(ca)
    secret = next(o for o in render_kustomization() if o["metadata"]["name"] == "karma-credentials")
    for name in secret["stringData"]:
        monkeypatch.setenv(name, "from-the-secret")
    return KarmaSettings(**data)


def test_the_kustomization_renders_from_its_own_files() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]) | {"config.yaml"}
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == listed  # nothing stray
    kinds = sorted(o["kind"] for o in render_kustomization())
    assert kinds.count("Deployment") == 5 and "ConfigMap" in kinds and "Secret" in kinds


def test_one_generation_worker_per_model_and_one_per_other_stage(k8s_settings: KarmaSettings) -> None:
    served: list[str] = []
    roles = set()
    for deployment in deployments(render_kustomization()):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ctx = parse_command(container["command"])
        roles.add(ctx.params["role"].value)
        served += ctx.params["model"] or []
        assert ctx.params["metrics_port"] == METRICS_PORT
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert roles == set(ROLES)
    assert sorted(served) == sorted(k8s_settings.model_names)


def test_probes_ports_and_credentials_match_the_configuration(k8s_settings: KarmaSettings) -> None:
    objects = render_kustomization()
    secret_keys = set(next(o for o in objects if o["metadata"]["name"] == "karma-credentials")["stringData"])
    wanted_secrets = {k8s_settings.kafka_security.sasl_password_env, k8s_settings.judge.api_key_env}
    wanted_secrets |= {spec.api_key_env for spec in k8s_settings.pool if spec.api_key_env}
    assert wanted_secrets <= secret_keys
    assert k8s_settings.metrics_port == METRICS_PORT and k8s_settings.metrics_host == "0.0.0.0"
    for deployment in deployments(objects):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT}]
        probes = {
            kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert {p["port"] for p in probes.values()} == {"metrics"}
        assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
        env = {e["name"]: e["value"] for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env["KARMA_CONFIG"] == mounts["config"]
        assert yaml.safe_load((K8S / "config.yaml").read_text())["kafka_security"]["ssl_cafile"].startswith(
            mounts["kafka-ca"] + "/"
        )
        assert container["envFrom"] == [{"secretRef": {"name": "karma-credentials"}}]
        assert pod["terminationGracePeriodSeconds"] > 30  # longer than the worker's own shutdown bound


def test_gpus_go_to_in_process_vllm_workers_only(k8s_settings: KarmaSettings) -> None:
    backend_of = {spec.name: spec.backend for spec in k8s_settings.pool}
    for deployment in deployments(render_kustomization()):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        models = parse_command(container["command"]).params["model"] or []
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        in_process = any(backend_of[m] in ("vllm", "transformers") for m in models)
        assert gpus == (1 if in_process else 0), deployment["metadata"]["name"]


def test_compose_runs_every_stage_and_model_of_the_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    workers = {name: s for name, s in compose["services"].items() if s.get("command", [""])[0] == "karma"}
    worker_env = compose["x-worker"]["environment"]
    for name, value in worker_env.items():
        monkeypatch.setenv(name, str(value))
    settings = KarmaSettings()  # the workers' environment validates (strict: unknown KARMA_* fail)
    assert settings.metrics_host == "0.0.0.0"
    roles, models = set(), []
    for service in workers.values():
        ctx = parse_command(service["command"])
        roles.add(ctx.params["role"].value)
        models += ctx.params["model"] or []
        assert ctx.params["metrics_port"] == METRICS_PORT
        assert "/readyz" in " ".join(service["healthcheck"]["test"]) and str(METRICS_PORT) in " ".join(
            service["healthcheck"]["test"]
        )
    assert roles == set(ROLES) and sorted(models) == sorted(settings.model_names)
    scraped = yaml.safe_load(compose["configs"]["prometheus"]["content"])["scrape_configs"][0]
    assert sorted(scraped["static_configs"][0]["targets"]) == sorted(f"{n}:{METRICS_PORT}" for n in workers)
    rules = compose["services"]["prometheus"]["volumes"][0].split(":")[0]
    assert (DEPLOY / rules).is_dir() and list((DEPLOY / rules).glob("*.rules.yml"))


def test_the_image_copies_what_the_package_needs() -> None:
    copied = [
        line.split()[1]
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY")
    ]
    for source in copied:
        assert (DEPLOY.parent / source).exists(), source
    package_dirs = {"schemas", "streams", "agents"}
    assert package_dirs <= set(copied)
