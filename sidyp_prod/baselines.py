"""Baselines SiDyP is measured against: a plain classifier fine-tuned on the LLM labels."""

from __future__ import annotations

import numpy as np
import torch

from .config import SiDyPConfig
from .encoder import PretrainedEncoder
from .models import BertShape
from .training import _encode_trunk, out_of_fold_probs


def cross_fitted_classifier_probs(
    texts: list[str],
    given: np.ndarray,
    n_classes: int,
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    folds: int = 5,
) -> np.ndarray:
    """Out-of-fold p(y | x), (N, C), of one classifier (SiDyP's branch architecture: the frozen
    trunk, the top layer(s) and a head) fine-tuned on the LLM labels of the other folds."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    _, top, cache, _ = _encode_trunk(texts, pretrained, config, progress=False)
    shape = BertShape.from_config(pretrained.config)
    return out_of_fold_probs(cache, top, shape, given, n_classes, config, rng, folds)
