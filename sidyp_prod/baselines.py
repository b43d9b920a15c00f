"""Baselines SiDyP is measured against: a plain classifier fine-tuned on the LLM labels."""

from __future__ import annotations

import numpy as np
import torch

from .config import SiDyPConfig
from .device import Precision
from .pretrained import PretrainedEncoder
from .training import _Run, encoded_trunk, out_of_fold_probs


def cross_fitted_classifier_probs(
    texts: list[str],
    given: np.ndarray,
    n_classes: int,
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    folds: int = 5,
    device: torch.device | None = None,
) -> np.ndarray:
    """Out-of-fold p(y | x), (N, C), of one classifier (SiDyP's branch architecture: the frozen
    trunk, the top layer(s) and a head) fine-tuned on the LLM labels of the other folds."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = device or torch.device("cpu")
    run = _Run(device, Precision(device), pretrained.pooling.mode)
    with encoded_trunk(texts, pretrained, config, device) as (top, cache, _):
        return out_of_fold_probs(cache, top, given, n_classes, config, rng, folds, run)
