"""deploy/prometheus and deploy/grafana against the real tools: `promtool` checks the scrape
config and the alert rules and runs their unit tests, and a real `prometheus` scrapes a running
worker, loads the rules and answers every panel query of the Grafana dashboard.

Prometheus (`prometheus` and `promtool` on PATH) is a prerequisite of the suite: `make test`
installs it when missing (scripts/ensure-test-tools.sh); run without it, these tests fail, saying
how to install it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import karma.streams.metrics  # noqa: F401  (registers the karma_ families in REGISTRY)
from tests.conftest import REPO_ROOT, free_ports
from tests.e2e.conftest import Pipeline, make_prompts

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "karma.rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules" / "karma.rules.test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "karma.json"
# What the dashboard's Grafana variables become in the test's queries.
SUBSTITUTIONS = {"$__rate_interval": "30s", "$__interval": "30s", "$job": ".*", "$instance": ".*"}
PROMETHEUS_START_TIMEOUT = 60.0
SERIES_TIMEOUT = 90.0


def tool(name: str) -> str:
    """The path of a Prometheus tool; fails (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH. Prometheus is a prerequisite of the test suite, like Java and "
            "Maven: install it (Debian/Ubuntu: `apt-get install -y prometheus`, which provides "
            "`prometheus` and `promtool`; `make test` does it when it is missing)."
        )
    return path


def promtool(*args: str) -> str:
    run = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"promtool {' '.join(args)} exited {run.returncode}:\n{output}"
    return output


def test_promtool_checks_the_scrape_config() -> None:
    assert "SUCCESS" in promtool("check", "config", str(CONFIG))


def test_promtool_checks_the_rules() -> None:
    output = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_promtool_unit_tests_of_the_rules_pass_and_cover_every_rule() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST))
    # Every rule has a case where it fires and one where it stays quiet.
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(alert_names()), "rules without a firing case"
    assert quiet == set(alert_names()), "rules without a quiet case"


def alert_names() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"]]


def test_every_alert_has_for_severity_and_what_to_do() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule.get("for"), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def exposed_names() -> set[str]:
    """Every sample name the workers can expose (streams/metrics.py), plus Prometheus' `up`; a
    histogram also by its family name, as the README and the panel descriptions name it."""
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {"up"}
    for family in REGISTRY.collect():
        if family.name.startswith("karma_"):
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the dashboard's variables substituted) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in SUBSTITUTIONS.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
            queries.append((panel["title"], expr))
    return queries


def test_the_dashboard_and_rules_use_only_metrics_the_workers_expose() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert "DS_PROMETHEUS" in {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    known = exposed_names()
    texts = {"dashboard": DASHBOARD.read_text(), "rules": RULES.read_text()}
    for where, text in texts.items():
        used = set(re.findall(r"\bkarma_[a-z_]+", text)) - {"karma_"}
        assert used, where
        assert used <= known, f"{where} uses metrics no worker exposes: {sorted(used - known)}"


# --- a real Prometheus scraping a real worker ---------------------------------------------------


class PrometheusServer:
    def __init__(self, process: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.process = process
        self.base = base
        self.log = log

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body: dict[str, Any] = json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # a bad query is a 400 with an error body
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_prometheus(workdir: Path, metrics_port: int) -> PrometheusServer:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "karma",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"role": "all"}}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_ports(1)[0]
    log = workdir / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return PrometheusServer(process, f"http://127.0.0.1:{port}", log)


def wait_until_ready(server: PrometheusServer) -> None:
    deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"prometheus exited with {server.process.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(f"{server.base}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"prometheus not ready after {PROMETHEUS_START_TIMEOUT} s:\n{server.tail()}")
        time.sleep(0.2)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], PrometheusServer]]:
    """Factory: ``prometheus(metrics_port)`` starts a real Prometheus on a free loopback port that
    scrapes that worker every second and evaluates deploy/prometheus/rules; stopped at teardown."""
    started: list[PrometheusServer] = []

    def start(metrics_port: int) -> PrometheusServer:
        server = start_prometheus(tmp_path / "prometheus", metrics_port)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def wait_for_series(server: PrometheusServer, pipeline: Pipeline) -> dict[str, list[Any]]:
    """Polls until every panel query parses and returns at least one series; fails with the ones
    that did not. Returns each query's result."""
    queries = panel_queries()
    deadline = time.monotonic() + SERIES_TIMEOUT
    while True:
        results: dict[str, list[Any]] = {}
        problems = []
        for title, expr in queries:
            reply = server.query(expr)
            assert reply["status"] == "success", f"{title}: {expr}: {reply.get('error')}"
            results[expr] = reply["data"]["result"]
            if not results[expr]:
                problems.append(f"{title}: {expr}")
        if not problems:
            return results
        if time.monotonic() > deadline:
            pytest.fail(
                f"panel queries without data after {SERIES_TIMEOUT} s:\n"
                + "\n".join(problems)
                + f"\n{server.tail()}\n{pipeline.log()}"
            )
        time.sleep(1.0)


def test_prometheus_scrapes_a_worker_answers_every_panel_and_fires_no_alert(
    pipeline_factory: Callable[..., Pipeline], prometheus: Callable[[int], PrometheusServer]
) -> None:
    # Online competency, so the superiority panel has online estimates.
    pipeline = pipeline_factory(competency={"online": True, "evidence": 5})
    pipeline.start_worker()
    server = prometheus(pipeline.settings.metrics_port)
    prompts = make_prompts(20, tag="prom")
    # One message that is no prompt, so the dead-letter panel has a series.
    pipeline.submit(prompts, raw={7: b"\x13\x37 not a prompt"})
    wanted = {prompt.prompt_id for prompt in prompts}
    pipeline.wait_for(
        "preferences", lambda received: {r.record.prompt_id for r in received if r.record} >= wanted
    )
    wait_until_ready(server)

    # The worker's karma_ series reach Prometheus, labelled with the scrape job.
    deadline = time.monotonic() + SERIES_TIMEOUT
    while True:
        reply = server.query('sum(karma_messages_in_total{job="karma", stage="generation"})')
        result = reply["data"]["result"] if reply["status"] == "success" else []
        if result and float(result[0]["value"][1]) >= len(prompts):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no karma_ series in prometheus after {SERIES_TIMEOUT} s:\n{server.tail()}")
        time.sleep(0.5)

    results = wait_for_series(server, pipeline)
    dead_letters = results[next(e for t, e in panel_queries() if t == "Dead letters by stage and type")]
    assert {series["metric"]["stage"] for series in dead_letters} == {"generation"}
    # With online competency on, the judged comparisons give models online estimates (not NaN).
    online = 'max by (model) (karma_model_superiority{estimate="online"} >= -Inf)'
    deadline = time.monotonic() + SERIES_TIMEOUT
    while not server.query(online)["data"]["result"]:
        if time.monotonic() > deadline:
            pytest.fail(f"no online superiority estimate after {SERIES_TIMEOUT} s\n{pipeline.log()}")
        time.sleep(0.5)

    # Every rule loaded and evaluated without error; in a healthy run none fires, and none stays
    # pending once Prometheus has a few samples of each series (right after its start, `rate()`
    # has one sample and KarmaConsumerStalled can be pending for an evaluation or two).
    deadline = time.monotonic() + SERIES_TIMEOUT
    while True:
        groups = server.api("rules")["data"]["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        states = {name: rule["state"] for name, rule in rules.items()}
        assert "firing" not in states.values(), states
        if (
            set(rules) == set(alert_names())
            and all(rule["health"] == "ok" for rule in rules.values())
            and set(states.values()) == {"inactive"}
        ):
            break
        if time.monotonic() > deadline:
            lag = server.query("karma_consumer_lag_messages")["data"]["result"]
            pytest.fail(
                f"rules not all healthy and inactive: {states}\nlag: {lag}\n{json.dumps(rules)[-3000:]}"
            )
        time.sleep(0.5)
    assert server.api("alerts")["data"]["alerts"] == []
