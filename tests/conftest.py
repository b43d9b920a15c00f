"""Shared fixtures: a tiny local BERT, synthetic corpora with planted noise, a trained bundle."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from sidyp_prod.config import SiDyPConfig

from synthetic import make_rows, make_tiny_encoder, write_jsonl


def tiny_config(**overrides: object) -> SiDyPConfig:
    """Settings sized for a 64-wide, 2-layer random BERT and a few hundred rows."""
    values: dict = {
        "branches": 2,
        "classifier_epochs": 10,
        "snapshots": 2,
        "classifier_lr": 1e-3,
        "head_lr": 1e-2,
        "classifier_batch_size": 16,
        "diffusion_epochs": 30,
        "denoiser_width": 32,
        "diffusion_batch_size": 64,
        "encode_batch_size": 32,
        "max_length": 32,
        "held_out_folds": 2,  # the feature stays on; two folds keep each train call quick
    }
    values.update(overrides)
    return SiDyPConfig(**values)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("encoder"), hidden=64)


@pytest.fixture(scope="session")
def train_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "train.jsonl", make_rows(800, seed=0))


@pytest.fixture(scope="session")
def fresh_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows the model never saw, drawn the same way."""
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "fresh.jsonl", make_rows(400, seed=1))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, train_corpus: Path):
    """(bundle directory, transductive refined output, train summary)."""
    from sidyp_prod import api

    out = tmp_path_factory.mktemp("trained")
    summary = api.train(
        train_corpus, out / "bundle", tiny_config(), encoder=str(tiny_encoder),
        refined_out=out / "refined.jsonl",
    )
    return out / "bundle", out / "refined.jsonl", summary
