"""When to change a given label: the refinement's safety rule.

The refined distribution is an estimate, and on real corpora an overconfident one; moving every
row to its argmax changes many labels on weak evidence, and a wrong change costs as much as a
missed fix. The rule here keeps the given (LLM) label unless the calibrated distribution makes
another class at least ``odds`` times as probable as the given one. For a calibrated
distribution, changing g -> a fixes the row with probability p[a] and breaks it with probability
p[g], so ``odds`` is the number of labels a change must be expected to fix per label it breaks
(1 = plain argmax).

Before calibration the distribution is divided by each class's share of the training rows' given
labels (``divide_by_label_shares``). Both experts behind it learn the LLM's label frequencies as
their class prior: a class the LLM over-uses gets probability because the LLM uses it, not
because of the text. Divided by the shares, p[a] / p[g] compares how typical the text is of the
rows the LLM labelled a with how typical it is of those it labelled g (docs/experiments.md
measures it on two corpora with opposite label biases).

Calibration has two gold-free steps. A global temperature makes the mean probability of the given
labels equal the estimated clean fraction 1 - rho (calibration.py). A per-class bias on the given
label's log-probability then makes the mean label_score of the rows labelled c equal 1 - rho_c,
the fraction of those rows that the noise marking found clean: a class the LLM labels reliably
keeps its labels on weaker evidence than one it labels badly. Where held-out classifiers exist,
rho is the mean of two estimates (``calibration_targets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .calibration import fit_temperature, temper
from .config import CHANGE_RULES


@dataclass(frozen=True)
class DecisionRule:
    """How output_fields turns a refined distribution into predicted labels."""

    # "argmax": always the most probable class; "odds": see module docstring; "keep": never
    # change a given label
    rule: str = "odds"
    odds: float = 2.0  # fixes a change must be expected to make per label it breaks
    label_bias: np.ndarray | None = None  # (C,) per given class; None: no per-class step
    blocked: tuple[int, ...] = ()  # classes that are never a change target (small_classes)

    @classmethod
    def from_config(
        cls, config: object, label_bias: np.ndarray | None = None, blocked: Sequence[int] = ()
    ) -> DecisionRule:
        use_bias = bool(getattr(config, "class_calibration", False))
        return cls(
            rule=getattr(config, "change_rule", "argmax"),
            odds=float(getattr(config, "change_odds", 1.0)),
            label_bias=label_bias if use_bias else None,
            blocked=tuple(int(c) for c in blocked),
        )


def rule_name(rule: str, odds: float) -> str:
    """How summaries and benchmarks print a change rule: "odds 2", "argmax", "keep"."""
    return f"odds {odds:g}" if rule == "odds" else rule


def small_classes(given: np.ndarray, n_classes: int, min_rows: int) -> list[int]:
    """Classes with fewer than ``min_rows`` given labels (none when every class is that small:
    then there is nothing better to move a row to)."""
    counts = np.bincount(given[given >= 0], minlength=n_classes)
    small = [c for c in range(n_classes) if counts[c] < min_rows]
    return small if len(small) < n_classes else []


def class_noise_ratios(clean: np.ndarray, given: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class c, the fraction of rows labelled c that the noise marking called noisy.

    ``clean`` is (M, N) per branch; the branches are averaged. A class with no labelled row
    gets the overall noisy fraction. Weighted by class counts these average to the overall rho.
    """
    labelled = given >= 0
    noisy = 1.0 - np.asarray(clean, dtype=np.float64).mean(axis=0)
    overall = float(noisy[labelled].mean()) if labelled.any() else 0.5
    out = np.full(n_classes, overall)
    for c in range(n_classes):
        rows = given == c
        if rows.any():
            out[c] = noisy[rows].mean()
    return out


def calibration_targets(
    noise_ratio: float,
    class_noise: np.ndarray,
    given: np.ndarray,
    held_out: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """The noise ratio, overall and per given class, that the calibration fits to.

    Without held-out probabilities: the noise marking's (the mixture's rho and each class's
    noisy-marked fraction). With them, rho is the mean of the mixture's and 1 - the mean held-out
    p(given | x) over the labelled rows, and the per-class ratios are scaled to match. The two err
    in opposite directions where the LLM's errors look like clean rows (the mixture 0.27, the
    held-out classifiers 0.44 on a corpus 0.40 noisy); their mean kept the ECE of ``confidence``
    under 0.10 on the three corpora measured, the mixture alone did not (docs/experiments.md).
    """
    class_noise = np.asarray(class_noise, dtype=np.float64)
    labelled = given >= 0
    if held_out is None or not labelled.any():
        return float(noise_ratio), class_noise
    p_given = held_out[np.flatnonzero(labelled), given[labelled]]
    rho = 0.5 * (float(noise_ratio) + 1.0 - float(p_given.mean()))
    if noise_ratio <= 0.0:
        return rho, np.full_like(class_noise, rho)
    return rho, np.clip(class_noise * (rho / noise_ratio), 0.0, 1.0)


def label_shares(given: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of the labelled rows; a class no row is labelled with counts as one
    row (so that dividing by its share stays finite)."""
    labelled = given[given >= 0]
    counts = np.maximum(np.bincount(labelled, minlength=n_classes).astype(np.float64), 1.0)
    return counts / counts.sum()


def divide_by_label_shares(dist: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """dist[:, c] / shares[c], renormalised: the LLM's label frequencies taken out as a prior."""
    out = np.asarray(dist, dtype=np.float64) / np.asarray(shares, dtype=np.float64)[None, :]
    return out / out.sum(axis=1, keepdims=True)


def apply_label_bias(dist: np.ndarray, given: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Add bias[g] to the log-probability of each row's given label g, renormalised."""
    labelled = given >= 0
    if not labelled.any():
        return dist
    out = np.array(dist, dtype=np.float64, copy=True)
    rows = np.flatnonzero(labelled)
    g = given[rows]
    out[rows, g] *= np.exp(bias[g])
    return out / out.sum(axis=1, keepdims=True)


def fit_label_bias(
    dist: np.ndarray, given: np.ndarray, clean_fraction: np.ndarray, iterations: int = 60
) -> np.ndarray:
    """Per class c, the bias at which the mean label_score of rows labelled c is clean_fraction[c].

    Bisection on each class separately (the mean is increasing in the bias); the bias is 0 for
    a class without labelled rows and clipped to +-20 where the target is out of reach.
    """
    n_classes = dist.shape[1]
    bias = np.zeros(n_classes)
    for c in range(n_classes):
        rows = np.flatnonzero(given == c)
        if len(rows) == 0:
            continue
        p = np.clip(dist[rows, c].astype(np.float64), 1e-12, 1.0)
        lo, hi = -20.0, 20.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            shifted = p * np.exp(mid)
            if (shifted / (shifted + 1.0 - p)).mean() < clean_fraction[c]:
                lo = mid
            else:
                hi = mid
        bias[c] = (lo + hi) / 2
    return bias


def fit_calibration(
    dist: np.ndarray, given: np.ndarray, noise_ratio: float, class_noise: np.ndarray
) -> tuple[float, np.ndarray]:
    """Both gold-free steps, fitted on the training rows' distribution: the temperature at which
    the mean label_score is 1 - rho, then the per-class bias on the tempered distribution."""
    temperature = fit_temperature(dist, given, 1.0 - noise_ratio)
    bias = fit_label_bias(temper(dist, temperature), given, 1.0 - np.asarray(class_noise))
    return temperature, bias


def calibrate(dist: np.ndarray, given: np.ndarray, decision: DecisionRule) -> np.ndarray:
    """The per-class step on an already tempered distribution, when the rule has one."""
    if decision.label_bias is None:
        return dist
    return apply_label_bias(dist, given, decision.label_bias)


def _targets(dist: np.ndarray, given: np.ndarray, decision: DecisionRule) -> np.ndarray:
    """``dist`` with the blocked classes out of reach, except where they are given."""
    if not decision.blocked:
        return dist
    # A small class is never a change target: it is predicted only where it is given.
    targets = np.array(dist, dtype=np.float64, copy=True)
    targets[:, list(decision.blocked)] = -np.inf
    rows = np.flatnonzero(given >= 0)
    targets[rows, given[rows]] = dist[rows, given[rows]]
    return targets


def decide(
    dist: np.ndarray, given: np.ndarray, decision: DecisionRule,
    agree_with: np.ndarray | None = None,
) -> np.ndarray:
    """Predicted class per row of a calibrated distribution.

    A row without a given label always takes the argmax: there is nothing to keep. With
    ``agree_with`` (N, C), a given label changes only to the class that distribution's argmax
    is too (:func:`agreed_change`).
    """
    labelled = given >= 0
    best = _targets(dist, given, decision).argmax(axis=1)
    if decision.rule == "argmax":
        change = np.ones(len(dist), dtype=bool)
    elif decision.rule == "keep":
        return np.where(labelled, given, best)
    elif decision.rule == "odds":
        g = np.where(labelled, given, 0)
        p_given = dist[np.arange(len(dist)), g]
        p_best = dist[np.arange(len(dist)), best]
        # >= so that odds = 1 is exactly the argmax (ties already go to the argmax's first class).
        change = p_best >= decision.odds * p_given
    else:
        raise ValueError(f"change rule must be one of {CHANGE_RULES}")
    if agree_with is not None:
        change &= agreed_change(best, agree_with)
    return np.where(labelled & ~change, given, best)


def agreed_change(best: np.ndarray, agree_with: np.ndarray) -> np.ndarray:
    """Whether each row's proposed label is also the argmax of ``agree_with``.

    On a new row refine passes the classifier ensemble's p(y | x): the product proposes a
    change, and the ensemble alone must predict the same class (cleanlab's check that the
    predicted label differs from the given one). On SemEval's new rows the changes it vetoes
    fixed about as many labels as they broke (docs/experiments.md §31).
    """
    return np.asarray(agree_with).argmax(axis=1) == best


def decision_margin(
    dist: np.ndarray, given: np.ndarray, decision: DecisionRule,
    agree_with: np.ndarray | None = None,
) -> np.ndarray:
    """How far each row's :func:`decide` is from going another way, in log-probability: the
    change rule's threshold (log of p[best] / (odds * p[given])) and, where the row takes its
    best class, the gap to the runner-up; with ``agree_with``, where the rule would change the
    label, also the gap between that distribution's top two. 0 on a tie; inf where nothing can
    change it (a given label under ``keep``)."""
    rows = np.arange(len(dist))
    targets = _targets(dist, given, decision)
    log = np.log(np.maximum(targets, 1e-30))
    top_two = -np.sort(-log, axis=1)[:, :2]
    runner_up = top_two[:, 0] - top_two[:, 1]
    labelled = given >= 0
    if decision.rule == "keep":
        return np.where(labelled, np.inf, runner_up)
    if decision.rule == "argmax":
        would_change = np.ones(len(dist), dtype=bool)
        margin = runner_up
    else:
        g = np.where(labelled, given, 0)
        threshold = top_two[:, 0] - np.log(decision.odds) - log[rows, g]
        would_change = threshold >= 0
        # A kept row stays kept until its threshold is crossed, whichever class would cross it.
        margin = np.where(would_change, np.minimum(threshold, runner_up), -threshold)
    if agree_with is not None:
        # Where the rule would change the label, the agreeing argmax can flip it back.
        agree_log = np.log(np.maximum(np.asarray(agree_with, dtype=np.float64), 1e-30))
        agree_top = -np.sort(-agree_log, axis=1)[:, :2]
        margin = np.where(labelled & would_change,
                          np.minimum(margin, agree_top[:, 0] - agree_top[:, 1]), margin)
    return np.where(labelled, margin, runner_up)
