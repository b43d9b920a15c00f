"""Baselines SiDyP is measured against: a plain classifier fine-tuned on the LLM labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .config import SiDyPConfig
from .encoder import PretrainedEncoder
from .models import BertShape
from .training import _branch_outputs, _encode_trunk, _stage_one


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
    plain = replace(config, branches=1, snapshots=1, coreg_alpha=0.0)
    _, top, cache, _ = _encode_trunk(texts, pretrained, plain, progress=False)
    shape = BertShape.from_config(pretrained.config)
    fold = rng.permutation(len(texts)) % folds
    probs = np.zeros((len(texts), n_classes), dtype=np.float32)
    for k in range(folds):
        train_given = np.where(fold == k, -1, given)
        stage = _stage_one(cache, top, shape, train_given, n_classes, plain, rng, progress=False)
        _, fold_probs = _branch_outputs(stage.branches, cache, plain.encode_batch_size)
        probs[fold == k] = fold_probs[0, fold == k]
    return probs
