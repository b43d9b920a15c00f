"""The rule that decides when a given label is changed, on arrays where the answer is known."""

from dataclasses import replace

import numpy as np
import pytest

from sidyp_prod.decision import (
    DecisionRule,
    apply_label_bias,
    calibration_targets,
    class_noise_ratios,
    decide,
    decision_margin,
    divide_by_label_shares,
    fit_label_bias,
    label_shares,
)
from sidyp_prod.refinement import (
    BatchRefinement,
    fit_output_calibration,
    for_new_rows,
    output_fields,
)


def test_odds_rule_changes_only_on_strong_evidence():
    dist = np.array(
        [
            [0.30, 0.60, 0.10],  # best 1 is exactly 2x the given 0: change
            [0.35, 0.60, 0.05],  # 1.71x: keep the given label
            [0.05, 0.90, 0.05],  # given label is the argmax: nothing to change
            [0.10, 0.20, 0.70],  # 7x: change
            [0.40, 0.50, 0.10],  # no given label: argmax
        ]
    )
    given = np.array([0, 0, 1, 0, -1])
    rule = DecisionRule("odds", 2.0)
    np.testing.assert_array_equal(decide(dist, given, rule), [1, 0, 1, 2, 1])
    # odds = 1 and the argmax rule agree.
    np.testing.assert_array_equal(decide(dist, given, DecisionRule("odds", 1.0)), dist.argmax(1))
    np.testing.assert_array_equal(decide(dist, given, DecisionRule("argmax")), dist.argmax(1))


def test_a_change_needs_the_agreeing_argmax():
    dist = np.array(
        [
            [0.20, 0.70, 0.10],  # the rule changes 0 -> 1, and the classifier predicts 1: change
            [0.20, 0.70, 0.10],  # the same, but the classifier predicts 2: keep
            [0.20, 0.70, 0.10],  # the classifier predicts the given label: keep
            [0.35, 0.60, 0.05],  # the rule keeps it (1.71x) whatever the classifier says
            [0.40, 0.50, 0.10],  # no given label: the argmax, whatever the classifier says
        ]
    )
    given = np.array([0, 0, 0, 0, -1])
    classifier = np.array([[0.1, 0.6, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1],
                           [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    for rule, alone in ((DecisionRule("odds", 2.0), [1, 1, 1, 0, 1]),
                        (DecisionRule("argmax"), [1, 1, 1, 1, 1])):
        np.testing.assert_array_equal(decide(dist, given, rule), alone)
        agreed = np.where(given >= 0, np.where(classifier.argmax(1) == alone, alone, given), alone)
        np.testing.assert_array_equal(decide(dist, given, rule, classifier), agreed)
    # A change the classifier vetoes is close when the classifier's top two are.
    tied = np.array([[0.1, 0.45, 0.45]])
    margin = decision_margin(dist[1:2], given[1:2], DecisionRule("odds", 2.0), tied)
    assert margin[0] == pytest.approx(0.0)


def test_higher_odds_never_change_more_labels():
    rng = np.random.default_rng(0)
    dist = rng.dirichlet(np.ones(5), size=400)
    given = rng.integers(0, 5, size=400)
    changed = [(decide(dist, given, DecisionRule("odds", k)) != given).sum()
               for k in (1.0, 1.5, 2.0, 4.0, 10.0)]
    assert changed == sorted(changed, reverse=True)
    assert changed[0] > changed[-1]


@pytest.mark.parametrize("rule", [DecisionRule("odds", 2.0), DecisionRule("argmax"),
                                  DecisionRule("keep"), DecisionRule("odds", 2.0, blocked=(3,))])
def test_a_decision_outside_its_margin_survives_any_smaller_perturbation(rule):
    """What the fp32 re-check of int8 close calls relies on: moving every log-probability by less
    than half a row's margin never changes its label; and each margin is reached by some move."""
    rng = np.random.default_rng(0)
    dist = rng.dirichlet(np.full(5, 0.7), size=400)
    given = rng.integers(-1, 5, size=400)
    # With a classifier whose argmax a change must agree with (refine's new rows), too.
    classifier = rng.dirichlet(np.full(5, 0.7), size=400)
    for agree_with in (None, classifier):
        margin = decision_margin(dist, given, rule, agree_with)
        predicted = decide(dist, given, rule, agree_with)
        assert (margin >= 0).all()
        if rule.rule == "keep":
            assert np.isinf(margin[given >= 0]).all()
        for _ in range(20):
            half = (0.499 * np.minimum(margin, 5))[:, None]
            moved = dist * np.exp(rng.uniform(-1, 1, size=dist.shape) * half)
            agree_moved = None if agree_with is None else (
                agree_with * np.exp(rng.uniform(-1, 1, size=dist.shape) * half))
            assert (decide(moved / moved.sum(1, keepdims=True), given, rule, agree_moved)
                    == predicted).all()
    # The kept row of test_odds_rule...: p(best) 0.5 against 2 x p(given) 0.6 -> log(0.6/0.5).
    one = decision_margin(np.array([[0.5, 0.3, 0.2]]), np.array([1]), DecisionRule("odds", 2.0))
    assert one[0] == pytest.approx(np.log(0.6 / 0.5))


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError):
        decide(np.eye(2), np.array([0, 1]), DecisionRule("vote"))


def test_class_noise_ratios_average_branches_and_fall_back_for_empty_classes():
    clean = np.array([[True, False, True, True], [True, False, False, True]])
    given = np.array([0, 0, 1, -1])
    ratios = class_noise_ratios(clean, given, 3)
    # Class 0: rows 0 (clean, clean) and 1 (noisy, noisy) -> 0.5; class 1: row 2 -> 0.5 noisy.
    np.testing.assert_allclose(ratios[:2], [0.5, 0.5])
    # Class 2 has no rows: the overall noisy fraction of labelled rows (rows 0-2: 1.5 / 3).
    assert ratios[2] == pytest.approx(0.5)


def test_label_bias_hits_each_class_target():
    rng = np.random.default_rng(1)
    dist = rng.dirichlet(np.ones(4), size=600)
    given = rng.integers(0, 4, size=600)
    target = np.array([0.2, 0.5, 0.7, 0.9])
    bias = fit_label_bias(dist, given, target)
    calibrated = apply_label_bias(dist, given, bias)
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    for c in range(4):
        rows = given == c
        assert calibrated[rows, c].mean() == pytest.approx(target[c], abs=1e-6)
    # A less reliable class (lower clean fraction) gets a lower bias: its labels are kept less.
    assert np.all(np.diff(bias) > 0)


def test_output_fields_keep_the_given_label_unless_the_evidence_is_strong():
    marginal = np.array([[0.4, 0.6], [0.1, 0.9]])
    refinement = BatchRefinement(
        classifier=marginal, conditional=marginal, marginal=marginal, candidates=marginal,
        prior_kind=np.zeros((1, 2), dtype=np.int64),
    )
    given = np.array([0, 0])
    paper = output_fields(refinement, given, ["a", "b"], "marginal")
    assert [r["predicted_label"] for r in paper] == ["b", "b"]
    safe = output_fields(refinement, given, ["a", "b"], "marginal",
                         decision=DecisionRule("odds", 2.0))
    assert [r["predicted_label"] for r in safe] == ["a", "b"]
    assert [r["is_label_issue"] for r in safe] == [False, True]
    # A kept label reports its own probability as the confidence.
    assert safe[0]["confidence"] == pytest.approx(0.4)
    assert safe[0]["label_score"] == pytest.approx(0.4)


def test_label_shares_count_an_unused_class_as_one_row():
    given = np.array([0, 0, 0, 1, -1])
    np.testing.assert_allclose(label_shares(given, 3), [3 / 5, 1 / 5, 1 / 5])


def test_dividing_by_label_shares_takes_the_llm_habit_out():
    dist = np.array([[0.6, 0.4], [0.9, 0.1]])
    # Equal shares change nothing.
    np.testing.assert_allclose(divide_by_label_shares(dist, np.array([0.5, 0.5])), dist)
    # The LLM gave class 0 to 80% of the rows: its probability there was mostly that habit.
    divided = divide_by_label_shares(dist, np.array([0.8, 0.2]))
    np.testing.assert_allclose(divided.sum(1), 1.0)
    np.testing.assert_allclose(divided[0], [0.75 / 2.75, 2.0 / 2.75])
    assert divided[1].argmax() == 0  # strong text evidence still wins


def test_output_fields_divide_by_the_label_shares_before_deciding():
    dist = np.array([[0.6, 0.4]])
    refinement = BatchRefinement(
        classifier=dist, conditional=dist, marginal=dist, candidates=dist,
        prior_kind=np.zeros((1, 1), dtype=np.int64),
    )
    given, rule = np.array([0]), DecisionRule("odds", 2.0)
    kept = output_fields(refinement, given, ["a", "b"], "marginal", decision=rule)
    changed = output_fields(refinement, given, ["a", "b"], "marginal", decision=rule,
                            label_shares=np.array([0.8, 0.2]))
    assert kept[0]["predicted_label"] == "a"
    assert changed[0]["predicted_label"] == "b"
    assert changed[0]["confidence"] == pytest.approx(2.0 / 2.75)


def test_the_product_takes_the_held_out_classifier_as_a_third_expert():
    marginal = np.array([[0.5, 0.5]])
    classifier = np.array([[0.9, 0.1]])  # has seen the row's label (class 0)
    held_out = np.array([[0.2, 0.8]])  # has not
    two = BatchRefinement(classifier=classifier, conditional=None, marginal=marginal,
                          candidates=marginal, prior_kind=np.zeros((1, 1), dtype=np.int64))
    three = BatchRefinement(classifier=classifier, conditional=None, marginal=marginal,
                            candidates=marginal, prior_kind=np.zeros((1, 1), dtype=np.int64),
                            held_out=held_out)
    assert two.distribution("product")[0].argmax() == 0
    expected = np.cbrt(marginal * classifier * held_out)
    np.testing.assert_allclose(three.distribution("product"),
                               expected / expected.sum(), rtol=1e-3)
    both = BatchRefinement.concatenate([three, three])
    assert both.held_out is not None and both.held_out.shape == (2, 2)
    mixed = BatchRefinement.concatenate([two, three])
    assert mixed.held_out is None  # all or nothing: a batch without it has two experts


def test_held_out_folds_must_be_off_or_at_least_two():
    from sidyp_prod.config import SiDyPConfig

    with pytest.raises(ValueError, match="held_out_folds"):
        SiDyPConfig(held_out_folds=1).validate()
    SiDyPConfig(held_out_folds=0).validate()


def test_calibration_targets_average_the_mixture_and_the_held_out_classifiers():
    given = np.array([0, 0, 1, 1, -1])
    held_out = np.array([[0.9, 0.1], [0.5, 0.5], [0.4, 0.6], [0.2, 0.8], [0.0, 1.0]])
    class_noise = np.array([0.2, 0.4])
    # Without held-out probabilities the marking's estimates are the targets, unchanged.
    rho, per_class = calibration_targets(0.3, class_noise, given)
    assert rho == 0.3
    np.testing.assert_array_equal(per_class, class_noise)
    # Held-out p(given): 0.9, 0.5, 0.6, 0.8 (the unlabeled row does not count): noise 0.3.
    rho, per_class = calibration_targets(0.5, class_noise, given, held_out)
    assert rho == pytest.approx(0.4)
    np.testing.assert_allclose(per_class, class_noise * 0.4 / 0.5)
    # A marking that found no noise cannot be scaled: every class gets the overall target.
    rho, per_class = calibration_targets(0.0, np.zeros(2), given, held_out)
    assert rho == pytest.approx(0.15)
    np.testing.assert_allclose(per_class, [0.15, 0.15])


def test_a_new_rows_held_out_expert_is_its_neighbours_vote_when_the_bundle_has_held_out_folds():
    marginal = np.array([[0.5, 0.5]])
    vote = np.array([[0.2, 0.8]])
    refined = BatchRefinement(classifier=np.array([[0.9, 0.1]]), conditional=None,
                              marginal=marginal, candidates=marginal,
                              prior_kind=np.zeros((1, 1), dtype=np.int64), neighbors=vote)
    assert for_new_rows(refined, 0).held_out is None  # two experts, as the bundle was trained
    third = for_new_rows(refined, 5)
    np.testing.assert_array_equal(third.held_out, vote)
    # The product leans where all three do: the vote pulls this row off the ensemble's class.
    assert third.distribution("product")[0, 1] > refined.distribution("product")[0, 1]
    with pytest.raises(ValueError, match="neighbour vote"):
        for_new_rows(replace(refined, neighbors=None), 5)


def test_output_calibration_fits_the_targets_it_reports():
    rng = np.random.default_rng(0)
    n = 400
    given = rng.integers(0, 2, n)
    marginal = rng.dirichlet([2.0, 2.0], n)
    held_out = rng.dirichlet([2.0, 2.0], n)
    refinement = BatchRefinement(classifier=marginal, conditional=None, marginal=marginal,
                                 candidates=marginal, prior_kind=np.zeros((1, n), dtype=np.int64),
                                 held_out=held_out)
    class_noise = np.array([0.3, 0.5])
    alone = fit_output_calibration(refinement, given, "product", 0.4, class_noise,
                                   average_held_out=False)
    averaged = fit_output_calibration(refinement, given, "product", 0.4, class_noise)
    assert alone.noise_ratio == 0.4
    expected, _ = calibration_targets(0.4, class_noise, given, held_out)
    assert averaged.noise_ratio == pytest.approx(expected)
    # Each class's mean label score lands on its (scaled) clean fraction after calibration.
    for calibration, scale in ((alone, 1.0), (averaged, expected / 0.4)):
        rule = DecisionRule("argmax", label_bias=calibration.label_bias)
        fields = output_fields(refinement, given, ["a", "b"], "product",
                               calibration.temperature, rule)
        scores = np.array([f["label_score"] for f in fields])
        for c in (0, 1):
            target = 1 - class_noise[c] * scale
            assert scores[given == c].mean() == pytest.approx(target, abs=2e-3)
