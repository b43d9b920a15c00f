"""The change rule's check and the output rescaling on trusted labels (sidyp_prod/trusted.py),
on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from sidyp_prod.decision import DecisionRule, decide
from sidyp_prod.trusted import (
    PlattScaling,
    check_changes,
    fit_platt,
    scaling_on_trusted,
    wilson_interval,
)


def _rows(ratios: list[float], right: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows given class 0 whose class 1 is ``ratio`` times as probable; ``right``: whether the
    person's label is 1 (a change fixes the row) or 0 (a change breaks it)."""
    p1 = np.array(ratios) / (1.0 + np.array(ratios))
    dist = np.stack([1.0 - p1, p1], axis=1)
    given = np.zeros(len(ratios), dtype=np.int64)
    trusted = np.where(right, 1, 0).astype(np.int64)
    return dist, given, trusted


def test_the_configured_rule_is_kept_when_its_changes_fix_more_than_they_break():
    dist, given, trusted = _rows([2.5] * 7 + [1.5], [True] * 6 + [False, False])
    check = check_changes(dist, given, trusted, DecisionRule(rule="odds", odds=2.0))
    assert check.decision == DecisionRule(rule="odds", odds=2.0)
    assert [(t.changed, t.fixed, t.broken) for t in check.tried] == [(7, 6, 1)]
    assert check.rows == 8 and check.noise_ratio == pytest.approx(6 / 8)


def test_one_net_fix_among_many_changes_is_not_evidence_enough():
    # 5 fixed, 4 broken: 1 net fix, under the sign test's bound (1.645 * 3); stricter rules
    # change none.
    dist, given, trusted = _rows([2.5] * 9, [True] * 5 + [False] * 4)
    check = check_changes(dist, given, trusted, DecisionRule(rule="odds", odds=2.0))
    assert check.tried[0].net_fixes == 1 and check.decision.rule == "keep"
    assert check_changes(dist, given, trusted, DecisionRule(rule="odds", odds=2.0),
                         z=0.0).decision.odds == 2.0


def test_a_stricter_rule_is_chosen_when_only_confident_changes_fix():
    # Changes at odds 2-3 break rows, those at odds >= 5 fix them.
    dist, given, trusted = _rows([2.2, 2.4, 2.6, 6.0, 7.0, 8.0], [False] * 3 + [True] * 3)
    check = check_changes(dist, given, trusted, DecisionRule(rule="odds", odds=2.0))
    assert [(t.odds, t.net_fixes) for t in check.tried] == [(2.0, 0), (3.0, 3)]
    assert check.decision.rule == "odds" and check.decision.odds == 3.0


def test_no_label_changes_when_no_rule_fixes_more_than_it_breaks():
    dist, given, trusted = _rows([2.5, 4.0, 12.0, 1.2], [False, False, False, True])
    check = check_changes(dist, given, trusted, DecisionRule(rule="odds", odds=2.0))
    assert check.decision.rule == "keep"
    assert [t.net_fixes for t in check.tried] == [-3, -2, -1, -1]
    assert not (decide(dist, given, check.decision) != given).any()


def test_rows_without_a_trusted_or_given_label_are_not_counted():
    dist, given, trusted = _rows([3.0] * 5, [True, True, True, False, False])
    trusted[3] = -1
    given[4] = -1
    check = check_changes(dist, given, trusted, DecisionRule(rule="argmax"))
    assert check.rows == 3 and check.tried[0].fixed == 3
    assert check.decision.rule == "argmax"


def test_keep_changes_no_given_label_and_fills_missing_ones():
    dist = np.array([[0.1, 0.9], [0.2, 0.8]])
    assert decide(dist, np.array([0, -1]), DecisionRule(rule="keep")).tolist() == [0, 1]


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (45, 100)])
def test_the_noise_interval_brackets_the_observed_fraction(k, n):
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert high - low < 1.0


def test_the_interval_narrows_with_more_rows():
    assert np.subtract(*wilson_interval(50, 100)[::-1]) < np.subtract(*wilson_interval(5, 10)[::-1])
    assert wilson_interval(5, 10) == pytest.approx((0.2693, 0.7307), abs=1e-3)


def _platt_rows(slope: float, intercept: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose rows are right with the probability a known Platt scaling gives."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.02, 0.98, n)
    right = rng.uniform(size=n) < PlattScaling(slope, intercept)(prob)
    return prob, right


def test_platt_fit_recovers_a_known_scaling():
    prob, right = _platt_rows(0.3, 1.5, 20_000, seed=0)
    scaling, statistic = fit_platt(prob, right)
    assert scaling.slope == pytest.approx(0.3, abs=0.05)
    assert scaling.intercept == pytest.approx(1.5, abs=0.1)
    assert statistic > 100
    assert scaling_on_trusted(prob, right) == scaling


def test_calibrated_probabilities_are_left_as_they_are():
    # Rows right with exactly their probability: no scaling fits significantly better.
    prob, right = _platt_rows(1.0, 0.0, 300, seed=1)
    assert fit_platt(prob, right)[1] < 5.991
    assert scaling_on_trusted(prob, right) is None
    assert scaling_on_trusted(prob[:0], right[:0]) is None


def test_separated_rows_get_a_finite_slope_and_reversed_or_equal_ones_a_constant():
    prob = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 1.0])
    separated, _ = fit_platt(prob, prob > 0.5)
    assert 0 < separated.slope < 100
    assert separated(np.array([0.9]))[0] > 0.5 > separated(np.array([0.2]))[0]
    reversed_, _ = fit_platt(prob, prob < 0.5)
    # Platt's smoothed targets: right rows 4/5, wrong rows 1/5, so a constant of one half.
    assert reversed_.slope == 0.0
    assert reversed_(prob) == pytest.approx(np.full(6, 0.5))
    same, _ = fit_platt(np.ones(5), np.array([True, True, True, True, False]))
    # Every row at one probability: a constant, the mean smoothed target (4 * 5/6 + 1/3) / 5.
    assert same.slope == 0.0
    assert same(np.array([0.2]))[0] == pytest.approx((4 * 5 / 6 + 1 / 3) / 5)


def test_a_platt_scaling_keeps_the_order_and_stays_inside_the_unit_interval():
    scaling = PlattScaling(0.2, 1.8)
    out = scaling(np.array([0.0, 0.3, 0.5, 0.9, 1.0]))
    assert np.all(np.diff(out) > 0) and np.all((out > 0) & (out < 1))
    assert PlattScaling.from_list(scaling.to_list()) == scaling
    assert PlattScaling.from_list(None) is None
