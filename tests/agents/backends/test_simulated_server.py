"""The simulated OpenAI-compatible server, as a real process on loopback, through real clients.

Each scenario starts its own `karma simulated-server` process (faults are counted per process)
and talks to it with the official `openai` client, or plain HTTP where the client would hide
what is checked (status codes, headers, bodies). /stats proves what the server really saw.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import openai
import pytest
from openai import AsyncOpenAI
from typer.testing import CliRunner

from karma.agents.backends.simulated import SimulatedGenerator, SimulatedJudge
from karma.agents.backends.simulated_server import p_first_wins, pair_key, prompt_key
from karma.agents.judge_prompt import VerdictError, judge_messages, parse_verdict
from karma.agents.kinship import load_profiles
from karma.cli import app
from tests.conftest import start_simulated_servers, stop_processes

T = TypeVar("T")

QUESTION = "How do tides work?"

# One server per scenario (fault counters are per process), started together to overlap start-ups;
# each fault scenario is used by one test only, so its /stats are that test's.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "fail_first": ("--fail-first", "2"),
    "rate_limit": ("--rate-limit-first", "2"),
    "retry_429": ("--rate-limit-first", "1"),
    "malformed_first": ("--malformed-first", "1"),
    "malformed_always": ("--malformed-always",),
    "fail_when": ("--fail-when", "poison pill", "--fail-when", "never-matches"),
    "latency": ("--latency-s", "0.5"),
    "quality": ("--quality", "pythia-12b=1.0", "--quality", "gpt-4=0", "--quality", "new-model=0.5"),
}


def http(url: str, body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """GET (or POST `body`) without a client library: status, headers and the JSON body."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


class Sim:
    """One running server, seen through the official `openai` client. Every call runs on one
    event loop per module, and clients are kept per retry budget: making one costs ~0.1 s."""

    def __init__(self, url: str, loop: asyncio.Runner) -> None:
        self.url = url
        self.loop = loop
        self.clients: dict[int, AsyncOpenAI] = {}

    def client(self, retries: int = 0) -> AsyncOpenAI:
        if retries not in self.clients:
            self.clients[retries] = AsyncOpenAI(
                base_url=self.url, api_key="not-needed", max_retries=retries, timeout=15
            )
        return self.clients[retries]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run(coro)

    def ask(self, text: str, model: str = "gpt-4", retries: int = 0, **extra: Any) -> Any:
        messages = [{"role": "user", "content": text}]
        return self.run(self.client(retries).chat.completions.create(model=model, messages=messages, **extra))

    def judge(self, first: str, second: str, **extra: Any) -> Any:
        """One pass of the judge prompt the pipeline sends, `first` shown as answer A."""
        messages = judge_messages(QUESTION, first, second, tag="t3st")
        return self.run(
            self.client().chat.completions.create(model="judge", messages=messages, temperature=0.0, **extra)  # type: ignore[arg-type]
        )

    def answer(self, model: str) -> str:
        return self.ask(QUESTION, model=model, seed=1).choices[0].message.content

    def stats(self) -> dict[str, Any]:
        return http(self.url.removesuffix("/v1") + "/stats")[2]

    def close(self) -> None:
        for api in self.clients.values():
            self.run(api.close())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, loop: asyncio.Runner) -> Iterator[dict[str, Sim]]:
    started = start_simulated_servers(tmp_path_factory.mktemp("simulated-server"), *SCENARIOS.values())
    sims = {name: Sim(url, loop) for name, (_process, url) in zip(SCENARIOS, started, strict=True)}
    try:
        yield sims
    finally:
        for sim in sims.values():
            sim.close()
        stop_processes([process for process, _url in started])


@pytest.fixture
def server(servers: dict[str, Sim]) -> Sim:
    """The fault-free server, shared by the tests that only read from it."""
    return servers["plain"]


def test_models_health_and_every_response_are_marked_simulated(server: Sim) -> None:
    status, headers, listing = http(f"{server.url}/models")
    assert status == 200 and headers["X-Karma-Simulated"] == "true"
    assert listing["object"] == "list"
    assert {m["id"] for m in listing["data"]} == set(load_profiles().vectors)
    assert {m["owned_by"] for m in listing["data"]} == {"karma-simulated"}
    status, headers, _ = http(server.url.removesuffix("/v1") + "/health")
    assert status == 200 and headers["X-Karma-Simulated"] == "true"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.url}/no-such-route", timeout=5)
    assert missing.value.code == 404 and missing.value.headers["X-Karma-Simulated"] == "true"


def test_generation_is_simulated_seeded_and_deterministic(server: Sim) -> None:
    prompt = "Why is the sky blue?"
    raw = server.run(
        server.client().chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": prompt}], seed=7
        )
    )
    reply = raw.parse()
    assert raw.headers["x-karma-simulated"] == "true"
    assert reply.object == "chat.completion" and reply.system_fingerprint == "karma-simulated"
    text = reply.choices[0].message.content
    assert text.startswith("[simulated gpt-4] ")
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.role == "assistant"
    words = len(text.split())
    assert reply.usage.completion_tokens == words
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + words == 5 + words
    # The pipeline's own simulator with the profile's quality: the server adds nothing of its own.
    quality = load_profiles().superiority("gpt-4")
    assert text == SimulatedGenerator("gpt-4", quality, seed=7).generate(prompt_key(prompt), prompt)
    assert server.ask(prompt, seed=7).choices[0].message.content == text
    assert server.ask(prompt, seed=8).choices[0].message.content != text
    assert server.ask(prompt, model="pythia-12b", seed=7).choices[0].message.content != text
    unknown = server.ask(prompt, model="my-new-model").choices[0].message.content
    assert unknown.startswith("[simulated my-new-model] ")


def test_max_tokens_cuts_the_text_but_keeps_the_mark(server: Sim) -> None:
    reply = server.ask("Explain entropy.", max_tokens=3)
    text = reply.choices[0].message.content
    assert text.startswith("[simulated gpt-4] ") and len(text.split()) == 2 + 3
    assert reply.choices[0].finish_reason == "length"


def test_the_better_model_wins_in_both_orders_with_a_parseable_verdict(server: Sim) -> None:
    strong, weak = server.answer("gpt-4"), server.answer("pythia-12b")
    ab, ba = server.judge(strong, weak), server.judge(weak, strong)
    assert ab.system_fingerprint == ba.system_fingerprint == "karma-simulated"
    verdict_ab = parse_verdict(ab.choices[0].message.content)
    verdict_ba = parse_verdict(ba.choices[0].message.content)
    assert (verdict_ab.winner, verdict_ba.winner) == ("A", "B")
    assert verdict_ab.rationale.startswith("simulated verdict: ")
    assert "gpt-4" in verdict_ab.rationale and "pythia-12b" in verdict_ab.rationale
    # Same request, same verdict.
    assert server.judge(strong, weak).choices[0].message.content == ab.choices[0].message.content


def pipeline_judge() -> SimulatedJudge:
    """The pipeline's simulated judge over the bundled profiles, with the config's defaults."""
    profiles = load_profiles()
    qualities = {m: profiles.superiority(m) for m in profiles.vectors}
    return SimulatedJudge(qualities, position_bias=0.3, temperature=0.1, length_bias=0.5)


def test_verdicts_are_the_pipeline_judges_with_the_config_defaults(server: Sim) -> None:
    """On close pairs a verdict is a coin with odds; it must be the pipeline's simulated judge's."""
    sim = pipeline_judge()
    assert pair_key(QUESTION, "x", "y") == pair_key(QUESTION, "y", "x") != pair_key("other", "x", "y")
    for first_model, second_model in [
        ("llama-2-13b-chat", "wizardlm-13b"),
        ("wizardlm-13b", "vicuna-33b"),
        ("vicuna-33b", "llama-2-13b-chat"),
    ]:
        first, second = server.answer(first_model), server.answer(second_model)
        for a, b, ma, mb in (
            (first, second, first_model, second_model),
            (second, first, second_model, first_model),
        ):
            reply = parse_verdict(server.judge(a, b).choices[0].message.content)
            expected = sim.judge(pair_key(QUESTION, a, b), ma, mb, len(a.split()), len(b.split()))
            assert reply.winner == expected.winner.value
            assert reply.confidence == pytest.approx(expected.confidence)
    # An answer that is not simulated is "unknown": the pool's mean quality, still judged.
    plain = parse_verdict(server.judge("Gravity of the moon.", "Magic.").choices[0].message.content)
    assert plain.winner in ("A", "B") and "unknown" in plain.rationale


def test_the_order_dependent_judge_picks_the_first_in_both_orders(
    simulated_server: Callable[..., str], loop: asyncio.Runner
) -> None:
    server = Sim(simulated_server("--first-always-wins"), loop)
    try:
        strong, weak = server.answer("gpt-4"), server.answer("pythia-12b")
        assert parse_verdict(server.judge(strong, weak).choices[0].message.content).winner == "A"
        assert parse_verdict(server.judge(weak, strong).choices[0].message.content).winner == "A"
    finally:
        server.close()


def soft_label(reply: Any) -> tuple[str, float, float]:
    """(the winner's token, P(A), P(B)) from the token whose alternatives are A and B."""
    tokens = reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == reply.choices[0].message.content
    found = [t for t in tokens if {alt.token for alt in t.top_logprobs} == {"A", "B"}]
    assert len(found) == 1
    alternatives = {alt.token: math.exp(alt.logprob) for alt in found[0].top_logprobs}
    assert math.exp(found[0].logprob) == pytest.approx(alternatives[found[0].token])
    return found[0].token, alternatives["A"], alternatives["B"]


def test_logprobs_give_a_soft_label_that_follows_the_better_answer(server: Sim) -> None:
    strong, weak = server.answer("gpt-4"), server.answer("pythia-12b")
    labels = []
    for a, b in ((strong, weak), (weak, strong)):
        reply = server.judge(a, b, logprobs=True, top_logprobs=2)
        token, p_a, p_b = soft_label(reply)
        verdict = parse_verdict(reply.choices[0].message.content)
        assert token == verdict.winner
        assert p_a + p_b == pytest.approx(1.0)
        assert verdict.confidence == pytest.approx(max(p_a, p_b))
        labels.append(p_a)
    assert labels[0] > 0.5 > labels[1]
    # The server's P(A) is the simulated judge's own probability.
    expected = p_first_wins(pipeline_judge(), "gpt-4", "pythia-12b", len(strong.split()), len(weak.split()))
    assert labels[0] == pytest.approx(expected)


def test_bad_requests_get_openai_style_400s(server: Sim) -> None:
    user = [{"role": "user", "content": "hi"}]
    cases = {
        b"{not json": "not valid JSON",
        json.dumps({"model": "gpt-4"}).encode(): "messages",
        json.dumps(
            {"model": "gpt-4", "messages": user, "stream": True}
        ).encode(): "streaming is not supported",
        json.dumps({"model": "gpt-4", "messages": user, "n": 2}).encode(): "n=2",
    }
    for body, message in cases.items():
        status, headers, error = http(f"{server.url}/chat/completions", body)
        assert status == 400, body
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["code"] is None
        assert message in error["error"]["message"]
        assert headers["X-Karma-Simulated"] == "true"
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        server.ask("hi", stream=True)


def test_fail_first_gives_500s_that_a_retrying_client_gets_past(servers: dict[str, Sim]) -> None:
    server = servers["fail_first"]
    with pytest.raises(openai.InternalServerError) as failed:
        server.ask("hello")
    assert failed.value.status_code == 500
    assert failed.value.body["type"] == "server_error"  # type: ignore[index]
    reply = server.ask("hello", retries=2)  # one more 500, then the answer
    assert reply.choices[0].message.content.startswith("[simulated gpt-4]")
    counts = server.stats()
    assert counts["requests"] == 3
    assert counts["outcomes"] == {"ok": 1, "400": 0, "429": 0, "500": 2, "malformed": 0}
    assert counts["kinds"] == {"judge": 0, "generation": 1}


def test_rate_limit_first_gives_429_with_retry_after(servers: dict[str, Sim]) -> None:
    server = servers["rate_limit"]
    body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, headers, error = http(f"{server.url}/chat/completions", body)
    assert status == 429 and headers["Retry-After"] == "0"
    assert error["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        server.ask("hi")
    assert server.ask("hi").choices[0].message.content.startswith("[simulated gpt-4]")
    counts = server.stats()
    assert counts["requests"] == 3 and counts["outcomes"]["429"] == 2 and counts["outcomes"]["ok"] == 1


def test_the_official_client_retries_a_429(servers: dict[str, Sim]) -> None:
    server = servers["retry_429"]
    assert server.ask("hi", retries=1).choices[0].message.content.startswith("[simulated gpt-4]")
    counts = server.stats()
    assert counts["requests"] == 2 and counts["outcomes"]["429"] == 1 and counts["outcomes"]["ok"] == 1


def test_malformed_first_spoils_only_the_first_judge_replies(servers: dict[str, Sim]) -> None:
    server = servers["malformed_first"]
    strong, weak = server.answer("gpt-4"), server.answer("pythia-12b")  # generations are never spoiled
    first = server.judge(strong, weak)
    with pytest.raises(VerdictError):
        parse_verdict(first.choices[0].message.content)
    assert first.system_fingerprint == "karma-simulated"
    assert parse_verdict(server.judge(strong, weak).choices[0].message.content).winner == "A"
    counts = server.stats()
    assert counts["outcomes"] == {"ok": 3, "400": 0, "429": 0, "500": 0, "malformed": 1}
    assert counts["kinds"] == {"judge": 2, "generation": 2}


def test_malformed_always_spoils_every_judge_reply(servers: dict[str, Sim]) -> None:
    server = servers["malformed_always"]
    strong, weak = server.answer("gpt-4"), server.answer("pythia-12b")
    for a, b in ((strong, weak), (weak, strong), (strong, weak)):
        with pytest.raises(VerdictError):
            parse_verdict(server.judge(a, b).choices[0].message.content)
    assert server.stats()["outcomes"] == {"ok": 2, "400": 0, "429": 0, "500": 0, "malformed": 3}


def test_fail_when_fails_one_prompt_always_while_others_flow(servers: dict[str, Sim]) -> None:
    server = servers["fail_when"]
    with pytest.raises(openai.InternalServerError):
        server.ask("please swallow the poison pill", retries=1)  # retried once, failed again
    assert server.ask("a healthy prompt").choices[0].message.content.startswith("[simulated gpt-4]")
    with pytest.raises(openai.InternalServerError):  # inside a judged answer too
        server.judge("[simulated gpt-4] the poison pill", "[simulated bard] fine")
    counts = server.stats()
    assert counts["requests"] == 4
    assert counts["outcomes"]["500"] == 3 and counts["outcomes"]["ok"] == 1


def test_latency_makes_every_request_slow_but_not_serialised(servers: dict[str, Sim]) -> None:
    server = servers["latency"]
    started = time.perf_counter()
    server.ask("slowly")
    assert time.perf_counter() - started >= 0.5

    async def four() -> float:
        api = server.client()
        began = time.perf_counter()
        await asyncio.gather(
            *(
                api.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(4)
            )
        )
        return time.perf_counter() - began

    elapsed = server.run(four())
    assert 0.5 <= elapsed < 1.9  # concurrent sleeps: one model, many requests in flight
    assert server.stats()["outcomes"]["ok"] == 5


def test_quality_overrides_decide_the_verdict(servers: dict[str, Sim]) -> None:
    server = servers["quality"]
    assert "new-model" in {m["id"] for m in http(f"{server.url}/models")[2]["data"]}
    strong, weak = server.answer("pythia-12b"), server.answer("gpt-4")
    assert parse_verdict(server.judge(strong, weak).choices[0].message.content).winner == "A"
    assert parse_verdict(server.judge(weak, strong).choices[0].message.content).winner == "B"


@pytest.mark.parametrize("bad", ["gpt-4=high", "gpt-4", "=0.5", "gpt-4=1.5", "gpt-4=nan"])
def test_a_bad_quality_exits_2_naming_it(bad: str) -> None:
    result = CliRunner().invoke(app, ["simulated-server", "--quality", "bard=0.2", "--quality", bad])
    assert result.exit_code == 2
    assert repr(bad) in result.output and "Traceback" not in result.output
