"""The training sample of a corpus larger than training needs: drawn per LLM label."""

from __future__ import annotations

import numpy as np

# Every class keeps at least this many rows (or all it has), whatever its share.
MIN_PER_CLASS = 20


def stratified_sample(codes: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_rows`` rows, drawn per value of ``codes`` (the LLM label's
    index, -1 for rows the LLM refused) in proportion to its count, every class keeping at
    least ``min(count, MIN_PER_CLASS)`` rows; the same seed draws the same rows.

    Parameters
    ----------
    codes : (N,) int array, one stratum per distinct value.
    max_rows : the sample size; ``N <= max_rows`` returns every row.
    """
    codes = np.asarray(codes)
    n = len(codes)
    if n <= max_rows:
        return np.arange(n)
    values, counts = np.unique(codes, return_counts=True)
    quota = np.maximum(
        np.minimum(counts, MIN_PER_CLASS), np.floor(max_rows * counts / n).astype(np.int64)
    )
    # Floors and minimums leave the total off max_rows: adjust the largest strata.
    while quota.sum() > max_rows and (quota > np.minimum(counts, MIN_PER_CLASS)).any():
        spare = np.where(quota > np.minimum(counts, MIN_PER_CLASS), quota, -1)
        quota[int(spare.argmax())] -= 1
    while quota.sum() < max_rows and (quota < counts).any():
        room = np.where(quota < counts, counts - quota, -1)
        quota[int(room.argmax())] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(codes == value), size=int(q), replace=False)
        for value, q in zip(values, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
