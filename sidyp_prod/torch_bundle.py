"""The trained PyTorch modules and reference set <-> a model bundle directory (training and the
PyTorch back end; needs ``sidyp-prod[train]``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from . import __version__
from .bundle import Bundle, BundleError, save_bundle, sha256_file
from .config import SiDyPConfig
from .model_io import (
    CALIBRATION_FILE,
    DENOISER_FILE,
    EMBEDDER_FILE,
    EMBEDDING_TOKENIZER_FILE,
    ENCODER_FILE,
    REFERENCE_FILE,
    TOKENIZER_FILE,
    OutputCalibration,
    separate_embedder,
)
from .models import DenoiserEnsemble, SentenceEmbedder, SiDyPEncoder
from .pretrained import PretrainedEncoder
from .training import TrainingResult, embedding_source


def encoder_record(pretrained: PretrainedEncoder) -> dict[str, Any]:
    """What the bundle says of its encoder: enough to rebuild the architecture without the
    checkpoint (its transformers config), and what identifies the checkpoint it came from."""
    weights = [p for p in sorted(pretrained.directory.glob("*.safetensors"))]
    return {
        "name": pretrained.name,
        "family": pretrained.family,
        "config": pretrained.config.to_dict(),
        "hidden_size": int(pretrained.config.hidden_size),
        "pooling": pretrained.pooling.to_dict(),
        "pad_token": pretrained.pad_token,
        "checkpoint_sha256": {p.name: sha256_file(p) for p in weights},
    }


def embedding_record(
    pretrained: PretrainedEncoder, embedder: PretrainedEncoder | None, source: str = "top"
) -> dict[str, Any]:
    """The neighbour prior's sentence-embedding model: the encoder's own layers (``source``
    'trunk' or 'top'), or a separate checkpoint (its record as the encoder's, plus its files in
    the bundle)."""
    if embedder is None:
        layers = "frozen trunk" if source == "trunk" else "pretrained top layers"
        return {"name": pretrained.name, "shared_with_encoder": True,
                "sentence_embedding": f"{pretrained.pooling.mode}-pooled {layers}, L2-normalised"}
    record = encoder_record(embedder)
    record["sentence_embedding"] = f"{embedder.pooling.mode}-pooled, L2-normalised"
    return {**record, "shared_with_encoder": False, "file": EMBEDDER_FILE,
            "tokenizer": EMBEDDING_TOKENIZER_FILE}


def _bare_tokenizer(pretrained: PretrainedEncoder) -> Tokenizer:
    tokenizer = Tokenizer.from_str(pretrained.tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def save_trained(
    directory: str | Path,
    result: TrainingResult,
    labels: list[str],
    config: SiDyPConfig,
    pretrained: PretrainedEncoder,
    summary: dict[str, Any],
    calibration: OutputCalibration,
    positions: np.ndarray,
    overwrite: bool = False,
    embedder: PretrainedEncoder | None = None,
) -> Path:
    """The bundle: manifest, weights, reference set (with ``positions``, each reference row's
    place among the training corpus's usable rows), tokenizers and calibration."""
    depth = int(pretrained.config.num_hidden_layers)
    source = embedding_source(config, pretrained, embedder)
    config = replace(config, trainable_layers=config.resolved_trainable_layers(depth))
    manifest = {
        "kind": "sidyp-prod-bundle",
        "sidyp_prod_version": __version__,
        "labels": labels,
        "config": config.to_dict(),
        "encoder": encoder_record(pretrained),
        "embedding_model": embedding_record(pretrained, embedder, source),
        "branches": config.branches,
        "snapshot_epochs": result.snapshot_epochs,
        "feature_dim": int(result.features.dynamics.shape[-1]),
        "training": summary,
    }
    arrays = {
        ENCODER_FILE: _numpy_state(result.encoder),
        DENOISER_FILE: _numpy_state(result.denoiser),
        REFERENCE_FILE: {
            "embeddings": result.embeddings.astype(np.float32),
            "labels": result.given.astype(np.int64),
            "clean": result.clean,
            "centroids": result.centroids,
            "rows": np.asarray(positions, dtype=np.int64),
        },
    }
    files = {TOKENIZER_FILE: _bare_tokenizer(pretrained).to_str().encode("utf-8"),
             CALIBRATION_FILE: calibration.to_json()}
    if embedder is not None:
        module = SentenceEmbedder(embedder.model, embedder.pooling.mode)
        arrays[EMBEDDER_FILE] = _numpy_state(module)
        files[EMBEDDING_TOKENIZER_FILE] = _bare_tokenizer(embedder).to_str().encode("utf-8")
    return save_bundle(directory, manifest, arrays, files, overwrite=overwrite)


def load_torch_models(
    bundle: Bundle,
) -> tuple[SiDyPEncoder, DenoiserEnsemble, SentenceEmbedder | None]:
    """The bundle's PyTorch modules: the encoder, the denoisers, and the separate embedding
    model (None when the encoder's own layers give the sentence embedding)."""
    manifest = bundle.manifest
    config = SiDyPConfig.from_bundle(manifest["config"])
    record = manifest["encoder"]
    arrays = bundle.arrays(ENCODER_FILE)
    if "bert" in record:  # written by sidyp-prod 0.1's hand-written BERT
        model, pooling = _legacy_bert_model(record["bert"]), "mean"
        arrays = legacy_encoder_state(arrays)
    else:
        model, pooling = _model_from_config(record), record["pooling"]["mode"]
    n_classes = len(manifest["labels"])
    encoder = SiDyPEncoder(
        model,
        config.resolved_trainable_layers(int(model.config.num_hidden_layers)),
        manifest["branches"],
        len(manifest["snapshot_epochs"]),
        n_classes,
        pooling,
        embedding="separate" if separate_embedder(manifest) else config.resolved_knn_embedding(
            int(model.config.num_hidden_layers)),
    )
    _load_state(bundle, encoder, arrays, ENCODER_FILE)
    embedder = None
    if (record := separate_embedder(manifest)) is not None:
        embedder = SentenceEmbedder(_model_from_config(record), record["pooling"]["mode"])
        _load_state(bundle, embedder, bundle.arrays(record["file"]), record["file"])
        embedder.eval()
    denoiser = DenoiserEnsemble(
        manifest["branches"],
        n_classes,
        manifest["feature_dim"],
        config.denoiser_width,
        config.diffusion_steps,
    )
    denoiser.load_state_dict(_torch_state(bundle.arrays(DENOISER_FILE)))
    return encoder.eval(), denoiser.eval(), embedder


def _load_state(
    bundle: Bundle, module: torch.nn.Module, arrays: dict[str, np.ndarray], name: str
) -> None:
    missing, unexpected = module.load_state_dict(_torch_state(arrays), strict=False)
    if missing or unexpected:
        raise BundleError(
            f"bundle {bundle.directory}: {name} does not match its model record "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def _model_from_config(record: dict[str, Any]) -> Any:
    """The transformers architecture of a bundle's encoder, with untrained weights (the bundle's
    own state dict replaces them)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    values = dict(record["config"])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModel.from_config(config).eval()


# sidyp-prod 0.1's BERT layer names -> transformers' BertLayer names.
_LEGACY_LAYER_NAMES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}


def _legacy_bert_model(shape: dict[str, Any]) -> Any:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**shape), add_pooling_layer=False).eval()


def legacy_encoder_state(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A 0.1 bundle's encoder weights under the names of the transformers-based encoder: the
    same BERT arithmetic (exact GELU, token type 0, absolute positions), so the same labels."""
    mapped = {}
    for key, value in arrays.items():
        parts = key.split(".")
        if parts[0] == "trunk" and parts[1] == "stack":  # trunk.stack.layers.i.name.p
            i, name, p = parts[3], parts[4], parts[5]
            key = f"trunk.lower.encoder.layer.{i}.{_LEGACY_LAYER_NAMES[name]}.{p}"
        elif parts[0] == "sentence_top":  # sentence_top.layers.i.name.p
            i, name, p = parts[2], parts[3], parts[4]
            key = f"sentence_top.encoder.layer.{i}.{_LEGACY_LAYER_NAMES[name]}.{p}"
        elif parts[0] == "snapshots":  # snapshots.m.s.layers.i.name.p
            m, s, i, name, p = parts[1], parts[2], parts[4], parts[5], parts[6]
            key = f"snapshots.{m}.{s}.encoder.layer.{i}.{_LEGACY_LAYER_NAMES[name]}.{p}"
        mapped[key] = value
    return mapped


def _torch_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
