"""Online competency: what the judge's verdicts say about each model, blended with its prior.

Pure functions, no Kafka. The rating stage keeps, per unordered model pair, how often the two
met in the current hopping window and how much the first of them scored (a win is 1, a tie
half); `assess` turns those tallies into one superiority per model:

- prior: the profile superiority (a model with no profile: the pool mean);
- online: a Bradley-Terry fit of the window's verdicts on the superiority scale, where
  P(a beats b) = sigmoid((s_a - s_b) / scale). A weak Gaussian prior around the profile
  (precision `RIDGE` in log-odds units) keeps the fit finite for a model that won or lost
  every comparison, and anchors the scale's origin, which verdicts alone cannot fix;
- blended: prior + w * (online - prior), w = n / (n + evidence), n = the model's comparisons
  in the window. With no evidence a model keeps its prior; with `evidence` comparisons the
  two weigh the same; old evidence leaves as the window hops on.

All three are clipped to [0, 1], the range of profile superiority.

Versions (`karma train` writes them) are players of their own: `player_of("m", 2)` is "m@v2"
(version 1 keeps the bare name, so evidence from before versions existed counts for it). A
version's prior is its parent's blended superiority, computed in the same assessment: it starts
where its parent stands and moves with its own verdicts. Its profile (for similarity) is its
model's. "@" is not allowed in a model's name (streams/config.py), so a player names one version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from karma.agents.kinship import KinRule, Profiles
from karma.schemas.models import Preference, Winner

RIDGE = 0.1  # prior precision per model in log-odds units: a standard deviation of ~3.2 `scale`s
MAX_ITERATIONS = 100
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Tally:
    """Comparisons of a pair (a, b) with a < b: how many, and a's score (wins + ties / 2)."""

    n: float
    score_a: float


VERSION_MARK = "@v"
PRIOR_PASSES = 8  # a version's prior follows its parent's blended: a chain settles in a few passes


def player_of(model: str, version: int = 1) -> str:
    """The name online competency knows a model's version by: "m" for version 1, "m@v2" after."""
    return model if version <= 1 else f"{model}{VERSION_MARK}{version}"


def version_of(player: str) -> tuple[str, int]:
    """(model, version) of a player name: the inverse of `player_of`."""
    model, mark, version = player.rpartition(VERSION_MARK)
    if mark and version.isdigit() and int(version) >= 2:
        return model, int(version)
    return player, 1


def parent_of(player: str) -> str | None:
    """The version a player's version was trained from (None for version 1)."""
    model, version = version_of(player)
    return None if version == 1 else player_of(model, version - 1)


def superiority_of(model: str, version: int, superiority: Mapping[str, float], profiles: Profiles) -> float:
    """The superiority pairing uses for `version` of `model`: its own value, or else its nearest
    ancestor's (a version not assessed yet starts where its parent stands), or else the profile's."""
    for ancestor in range(version, 0, -1):
        value = superiority.get(player_of(model, ancestor))
        if value is not None:
            return value
    return profiles.superiority(model)


def pair_key(model_a: str, model_b: str) -> tuple[str, str]:
    return (model_a, model_b) if model_a <= model_b else (model_b, model_a)


def score_of_first(key: tuple[str, str], model_a: str, winner: Winner) -> float:
    """The score of key[0] in a verdict between response A (from `model_a`) and response B."""
    score_a = {Winner.A: 1.0, Winner.B: 0.0, Winner.TIE: 0.5}[winner]
    return score_a if key[0] == model_a else 1.0 - score_a


# Labellers that read the models' superiority instead of the answers (agents/backends/zebra.py): their
# verdicts restate the current order, so counting them as evidence would only widen its gaps.
RULE_LABELLERS = frozenset({"zebra"})


def is_evidence(preference: Preference) -> bool:
    """Whether a verdict tells anything about the models' competency: it must compare two
    different models and come from a judge that read the answers."""
    return (
        preference.response_a.model != preference.response_b.model and preference.judge not in RULE_LABELLERS
    )


def tally(verdicts: Iterable[tuple[str, str, Winner]]) -> dict[tuple[str, str], Tally]:
    """Tallies (model of A, model of B, winner) verdicts; a verdict between two responses of the
    same model says nothing about competency and is left out."""
    counts: dict[tuple[str, str], list[float]] = {}
    for model_a, model_b, winner in verdicts:
        if model_a == model_b:
            continue
        key = pair_key(model_a, model_b)
        entry = counts.setdefault(key, [0.0, 0.0])
        entry[0] += 1
        entry[1] += score_of_first(key, model_a, winner)
    return {key: Tally(n, score) for key, (n, score) in counts.items()}


def fit_bradley_terry(
    comparisons: Mapping[tuple[str, str], Tally], prior: Mapping[str, float], scale: float
) -> dict[str, float]:
    """Maximum-a-posteriori Bradley-Terry superiorities (unclipped) of the compared models.

    Newton's method with a backtracking line search on a strictly concave objective (the ridge
    makes it so): a handful of iterations for pools of tens of models.
    """
    models = sorted({m for (a, b), t in comparisons.items() if t.n > 0 for m in (a, b)})
    if not models:
        return {}
    index = {m: i for i, m in enumerate(models)}
    mean_prior = sum(prior.values()) / len(prior) if prior else 0.5
    theta0 = np.array([prior.get(m, mean_prior) / scale for m in models])
    pairs = [(index[a], index[b], t.n, t.score_a) for (a, b), t in comparisons.items() if t.n > 0]
    i, j = (np.array([p[k] for p in pairs], dtype=int) for k in (0, 1))
    n, score = (np.array([p[k] for p in pairs], dtype=float) for k in (2, 3))

    def objective(theta: np.ndarray) -> float:
        d = theta[i] - theta[j]
        # score*log(sigmoid(d)) + (n - score)*log(sigmoid(-d)), written stably
        log_lik = score * -np.logaddexp(0.0, -d) + (n - score) * -np.logaddexp(0.0, d)
        return float(log_lik.sum() - RIDGE / 2 * ((theta - theta0) ** 2).sum())

    theta = theta0.copy()
    for _ in range(MAX_ITERATIONS):
        p = 1.0 / (1.0 + np.exp(-(theta[i] - theta[j])))
        residual = score - n * p
        gradient = -RIDGE * (theta - theta0)
        np.add.at(gradient, i, residual)
        np.add.at(gradient, j, -residual)
        weight = n * p * (1.0 - p)
        hessian = np.diag(np.full(len(models), RIDGE))  # the negated Hessian: positive definite
        np.add.at(hessian, (i, i), weight)
        np.add.at(hessian, (j, j), weight)
        np.add.at(hessian, (i, j), -weight)
        np.add.at(hessian, (j, i), -weight)
        step = np.linalg.solve(hessian, gradient)
        current, length = objective(theta), 1.0
        while objective(theta + length * step) < current and length > 1e-6:
            length /= 2
        theta = theta + length * step
        if np.abs(length * step).max() < TOLERANCE:
            break
    return {m: float(theta[index[m]] * scale) for m in models}


@dataclass(frozen=True)
class Competency:
    model: str
    prior: float
    online: float | None  # None: no comparison in the window
    comparisons: float
    weight: float  # of the online estimate in the blend
    blended: float


def assess(
    models: Iterable[str],
    profiles: Profiles,
    comparisons: Mapping[tuple[str, str], Tally],
    *,
    evidence: float,
    scale: float,
) -> dict[str, Competency]:
    """Prior, online and blended superiority of `models` (players: a model or one of its
    versions) and of any player met in `comparisons`.

    A version's prior is its parent's blended superiority, and the parent's blended value comes
    out of the same fit, so the fit is repeated with the versions' priors updated until they
    stop moving (`PRIOR_PASSES` at most); with no versions it runs once."""
    names = sorted(set(models) | {m for key in comparisons for m in key})
    prior = {m: profiles.superiority(version_of(m)[0]) for m in names}
    counts = dict.fromkeys(names, 0.0)
    for (a, b), t in comparisons.items():
        counts[a] += t.n
        counts[b] += t.n
    result: dict[str, Competency] = {}
    for _ in range(PRIOR_PASSES):
        online = fit_bradley_terry(comparisons, prior, scale)
        result = {}
        for m in names:
            n = counts[m]
            weight = n / (n + evidence)
            estimate = _clip(online[m]) if m in online else None
            blended = prior[m] if estimate is None else _clip(prior[m] + weight * (estimate - prior[m]))
            result[m] = Competency(m, prior[m], estimate, n, weight, blended)
        inherited = {m: _inherited_prior(m, result, profiles) for m in names if parent_of(m) is not None}
        if all(abs(inherited[m] - prior[m]) < TOLERANCE for m in inherited):
            break
        prior.update(inherited)
    return result


def _inherited_prior(player: str, assessed: Mapping[str, Competency], profiles: Profiles) -> float:
    """A version's prior: its nearest assessed ancestor's blended superiority (or the profile's)."""
    model, version = version_of(player)
    return superiority_of(model, version - 1, {m: c.blended for m, c in assessed.items()}, profiles)


def kin_of(model: str, superiority: Mapping[str, float], profiles: Profiles, rule: KinRule) -> list[str]:
    """The players kin to player `model` at these superiorities (lengths are per response: not
    here). Versions of one model never answer the same prompt together, so they are not kin."""
    base = version_of(model)[0]
    return sorted(
        other
        for other in superiority
        if version_of(other)[0] != base
        and rule.is_kin(
            profiles.similarity(base, version_of(other)[0]), abs(superiority[model] - superiority[other])
        )
    )


def pool_table(
    models: Iterable[str],
    profiles: Profiles,
    rule: KinRule,
    comparisons: Mapping[tuple[str, str], Tally],
    *,
    evidence: float,
    scale: float,
) -> list[dict[str, object]]:
    """One row per player (a model, or a version of one), most superior first: prior, online and
    blended superiority, comparisons in the window, the online weight, and its kin now."""
    assessed = assess(models, profiles, comparisons, evidence=evidence, scale=scale)
    blended = {m: c.blended for m, c in assessed.items()}
    return [
        {
            "model": c.model,
            "version": version_of(c.model)[1],
            "prior": c.prior,
            "online": c.online,
            "blended": c.blended,
            "comparisons": c.comparisons,
            "weight": c.weight,
            "has_profile": version_of(c.model)[0] in profiles.vectors,
            "kin": kin_of(c.model, blended, profiles, rule),
        }
        for c in sorted(assessed.values(), key=lambda c: (-c.blended, c.model))
    ]


def window_of(now_s: float, size_s: int, step_s: int) -> tuple[float, float]:
    """The oldest hopping window that holds `now_s`, [start, start + size): the one whose tallies
    cover a whole window of history. The same arithmetic as faust's HoppingWindow.earliest."""
    start = math.floor(now_s / step_s) * step_s - size_s + step_s
    return float(start), float(start + size_s)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
