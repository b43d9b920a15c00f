"""A check of the label changes against rows a person labelled (``train --trusted-field``).

Without human labels the product cannot tell a hard task with clean labels from noisy labels:
classifiers trained on the labels are calibrated to the labels either way, so on a corpus where
the LLM is 90% right they still disagree with a third of its labels, and changing those breaks
more than it fixes (docs/experiments.md §22). A small random sample of rows that also carry a
person's label can tell: on those rows, count the labels each change rule fixes and breaks.

``check_changes`` keeps the configured rule when its changes show net fixes on the trusted rows
(fixed - broken at least ``NET_FIXES_Z`` standard deviations of a sign test, sqrt(fixed +
broken), and at least one: a one-sided 95% test that the changes fix more than they break);
else it tries stricter rules (larger odds, ``ODDS_STEPS``), and when none passes it keeps every
given label (rule ``keep``): no change without the evidence. The trusted labels are never
trained on, so the counts are those of any other row.

The trusted rows also measure the noise ratio (``trusted_noise_ratio``, with a Wilson interval);
where that interval and the gold-free estimate's do not overlap, the output calibration fits the
trusted ratio instead (post_training.py). And they rescale ``confidence`` and ``label_score``
(``scaling_on_trusted``): a mean that matches the noise ratio can still rank right and wrong rows
poorly (on a corpus whose LLM is 90% right, ECE 0.13 with every label kept), which a fitted Platt
scaling corrects; it is kept only where it fits the trusted rows significantly better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .decision import DecisionRule, decide

ODDS_STEPS = (3.0, 5.0, 10.0)  # the stricter rules tried after the configured one
# How many sign-test standard deviations the net fixes must reach: a one-sided 95% test. Over
# resampled 200-row trusted samples (benchmarks/trusted_sample.py) a corpus whose LLM is 90%
# right ended worse than the LLM in 21% of draws with 0, 5.5% with 1 (one draw run end to end
# lost 1.6 points), 3.1% with 1.645 (by at most a row or two), while SemEval kept 2.7 of its 3.9
# points (3.5 with 1; docs/benchmarks.md).
NET_FIXES_Z = 1.645
INTERVAL_Z = 1.6449  # the two-sided 90% normal quantile
# A Platt scaling is kept when twice its log-likelihood gain over the identity on the trusted
# rows reaches the 95% quantile of chi-squared with two degrees of freedom (its two parameters).
SCALING_CHI2 = 5.991
LOGIT_EPS = 1e-6  # probabilities of exactly 0 or 1 (rounded outputs) get a finite logit


@dataclass(frozen=True)
class RuleOnTrusted:
    """What one change rule does to the trusted rows."""

    rule: str
    odds: float
    changed: int
    fixed: int  # changed to the trusted label
    broken: int  # the given label was the trusted one

    @property
    def net_fixes(self) -> int:
        return self.fixed - self.broken

    def shows_net_fixes(self, z: float) -> bool:
        """Net fixes of at least one and of ``z`` sign-test standard deviations."""
        return self.net_fixes >= max(1.0, z * math.sqrt(self.fixed + self.broken))


@dataclass(frozen=True)
class PlattScaling:
    """p -> sigmoid(slope * logit(p) + intercept) (Platt 1999), fitted on the trusted rows.
    The slope is never negative, so the rows keep their order."""

    slope: float
    intercept: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return _sigmoid(self.slope * _logit(p) + self.intercept)

    def to_list(self) -> list[float]:
        return [self.slope, self.intercept]  # JSON keeps a float exactly: refine = train

    @classmethod
    def from_list(cls, values: list[float] | None) -> PlattScaling | None:
        return None if values is None else cls(float(values[0]), float(values[1]))


def _as_list(scaling: PlattScaling | None) -> list[float] | None:
    return None if scaling is None else scaling.to_list()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _platt_loss(x: np.ndarray, target: np.ndarray, slope: float, intercept: float) -> float:
    z = slope * x + intercept
    return float(np.sum(np.logaddexp(0.0, z) - target * z))


def fit_platt(prob: np.ndarray, right: np.ndarray) -> tuple[PlattScaling, float]:
    """The maximum-likelihood Platt scaling of ``prob`` to whether each row is ``right``, and
    twice its log-likelihood gain over the identity (the likelihood-ratio statistic).

    Platt's smoothed targets ((n+1)/(n+2) for right rows, 1/(m+2) for wrong ones) keep the
    slope finite where the probabilities separate right from wrong rows perfectly; Newton's
    method with step halving (the loss is convex). A negative slope would reverse the rows'
    order: the best slope is then 0 (convexity), a constant probability; so is it where every
    row has the same probability (nothing to tell a slope from an intercept).
    """
    x, right = _logit(prob), np.asarray(right, dtype=bool)
    n_right, n_wrong = int(right.sum()), int((~right).sum())
    target = np.where(right, (n_right + 1) / (n_right + 2), 1 / (n_wrong + 2))
    features = np.stack([x, np.ones_like(x)], axis=1)
    w = np.array([1.0, 0.0])
    loss = _platt_loss(x, target, *w)
    for _ in range(100):
        p = _sigmoid(features @ w)
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, features.T @ (p - target))
        size = 1.0
        while size > 1e-8 and _platt_loss(x, target, *(w - size * step)) > loss:
            size /= 2
        w, previous = w - size * step, loss
        loss = _platt_loss(x, target, *w)
        if previous - loss < 1e-10:
            break
    if w[0] < 0 or np.ptp(x) < 1e-9:
        mean = float(target.mean())
        w = np.array([0.0, math.log(mean / (1 - mean))])
        loss = _platt_loss(x, target, *w)
    statistic = 2 * (_platt_loss(x, target, 1.0, 0.0) - loss)
    return PlattScaling(float(w[0]), float(w[1])), float(statistic)


def scaling_on_trusted(prob: np.ndarray, right: np.ndarray,
                       threshold: float = SCALING_CHI2) -> PlattScaling | None:
    """The Platt scaling where it fits the trusted rows significantly better than the
    probabilities as they are (a likelihood-ratio test), else None."""
    if len(prob) == 0:
        return None
    scaling, statistic = fit_platt(prob, right)
    return scaling if statistic >= threshold else None


def scalings_on_trusted(
    dist: np.ndarray, given: np.ndarray, trusted: np.ndarray, decision: DecisionRule
) -> tuple[PlattScaling | None, PlattScaling | None]:
    """The scalings of confidence (is the decided label the trusted one?) and of label_score (is
    the given label?) that the trusted rows support, under ``decision``; ``dist`` as for
    ``check_changes``."""
    rows = both_labelled(given, trusted)
    predicted = decide(dist[rows], given[rows], decision)
    return (scaling_on_trusted(dist[rows, predicted], predicted == trusted[rows]),
            scaling_on_trusted(dist[rows, given[rows]], given[rows] == trusted[rows]))


@dataclass(frozen=True)
class TrustedCheck:
    rows: int  # trusted rows that have a given label
    noise_ratio: float  # the fraction of them whose given label is not the trusted one
    noise_ratio_interval: tuple[float, float]  # 90% (Wilson)
    tried: tuple[RuleOnTrusted, ...]
    decision: DecisionRule  # the rule the bundle keeps
    # Whether the output calibration fitted the trusted rows' noise ratio (post_training.py).
    calibrated_to_trusted: bool = False
    # The rescaling of the outputs' probabilities fitted on the trusted rows (None: kept as is).
    confidence_scaling: PlattScaling | None = None
    label_score_scaling: PlattScaling | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "noise_ratio": round(self.noise_ratio, 4),
                "noise_ratio_interval": [round(x, 4) for x in self.noise_ratio_interval],
                "tried": [asdict(t) for t in self.tried],
                "chosen": {"rule": self.decision.rule, "odds": self.decision.odds},
                "calibrated_to_trusted": self.calibrated_to_trusted,
                "confidence_scaling": _as_list(self.confidence_scaling),
                "label_score_scaling": _as_list(self.label_score_scaling)}


def wilson_interval(successes: int, n: int, z: float = INTERVAL_Z) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ((0, 1) for n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def both_labelled(given: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """Indices of the rows with a given and a trusted label: the only ones the check counts."""
    return np.flatnonzero((trusted >= 0) & (given >= 0))


def trusted_noise_ratio(
    given: np.ndarray, trusted: np.ndarray
) -> tuple[float, tuple[float, float]]:
    """The fraction of rows with both labels whose given label is not the trusted one, and its
    90% interval."""
    rows = both_labelled(given, trusted)
    wrong = int((given[rows] != trusted[rows]).sum())
    return (wrong / len(rows) if len(rows) else 0.0), wilson_interval(wrong, len(rows))


def disjoint(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals do not overlap."""
    return a[1] < b[0] or b[1] < a[0]


def rule_on_trusted(
    dist: np.ndarray, given: np.ndarray, trusted: np.ndarray, decision: DecisionRule
) -> RuleOnTrusted:
    """Changes, fixes and breaks of ``decision`` on the rows with a trusted and a given label."""
    rows = both_labelled(given, trusted)
    predicted = decide(dist[rows], given[rows], decision)
    changed = predicted != given[rows]
    return RuleOnTrusted(
        decision.rule, decision.odds, int(changed.sum()),
        int((changed & (predicted == trusted[rows])).sum()),
        int((changed & (given[rows] == trusted[rows])).sum()),
    )


def check_changes(
    dist: np.ndarray,
    given: np.ndarray,
    trusted: np.ndarray,
    decision: DecisionRule,
    z: float = NET_FIXES_Z,
) -> TrustedCheck:
    """The change rule to keep, judged on the trusted rows (module docstring).

    ``dist``: the calibrated distribution ``decide`` reads; ``given`` and ``trusted``: class
    indices, -1 where a row has none.
    """
    rows = len(both_labelled(given, trusted))
    noise = trusted_noise_ratio(given, trusted)
    stricter = [] if decision.rule == "keep" else [
        replace(decision, rule="odds", odds=odds) for odds in ODDS_STEPS
        if decision.rule == "argmax" or odds > decision.odds]
    tried: list[RuleOnTrusted] = []
    for candidate in [decision, *stricter]:
        tried.append(rule_on_trusted(dist, given, trusted, candidate))
        if candidate.rule == "keep" or tried[-1].shows_net_fixes(z):
            return TrustedCheck(rows, *noise, tuple(tried), candidate)
    return TrustedCheck(rows, *noise, tuple(tried), replace(decision, rule="keep"))
