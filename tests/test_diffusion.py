import numpy as np
import pytest

from sidyp_prod.diffusion import (
    ReverseSchedule,
    cosine_alpha_bar,
    q_sample,
    reverse_process,
    row_noise,
    simplex,
    text_key,
)


def test_cosine_schedule_goes_from_signal_to_noise():
    ab = cosine_alpha_bar(800)
    assert ab[0] > 0.999 and ab[-1] < 1e-3
    assert np.all(np.diff(ab) < 0)


def test_simplex_and_missing_labels():
    s = simplex(np.array([1, -1]), 3, 5.0)
    np.testing.assert_array_equal(s, [[-5, 5, -5], [0, 0, 0]])


def test_q_sample_keeps_the_signal_at_t0_and_loses_it_at_the_end():
    ab = cosine_alpha_bar(100)
    x0 = simplex(np.array([0]), 3, 5.0)
    eps = np.ones_like(x0)
    assert np.abs(q_sample(x0, np.array([0]), ab, eps, 5.0) - x0).max() < 0.2
    assert np.abs(q_sample(x0, np.array([99]), ab, eps, 5.0) - 5.0 * eps).max() < 0.2


@pytest.mark.parametrize("mapping", ["spaced", "authors"])
def test_reverse_process_recovers_what_a_perfect_denoiser_says(mapping):
    schedule = ReverseSchedule.build(800, 10, mapping)
    target = np.array([2, 0, 1])
    seen_t = []

    def denoise(x, t):
        seen_t.append(int(t.flat[0]))
        return simplex(target, 3, 5.0)

    noise = np.random.default_rng(0).standard_normal((10, 3, 3)).astype(np.float32)
    logits = reverse_process(denoise, noise, schedule, 5.0)
    assert logits.argmax(-1).tolist() == target.tolist()
    assert seen_t == schedule.timesteps[::-1].tolist()
    if mapping == "spaced":
        assert seen_t[0] == 720 and seen_t[-1] == 0
    else:
        assert seen_t == list(range(9, -1, -1))


def test_row_noise_depends_on_the_row_not_the_batch():
    keys = [text_key("a"), text_key("b"), text_key("c")]
    together = row_noise(7, keys, (2, 3))
    alone = row_noise(7, keys[1:2], (2, 3))
    np.testing.assert_array_equal(together[1], alone[0])
    assert not np.array_equal(row_noise(8, keys[1:2], (2, 3)), alone)
