"""A model bundle as refinement reads it: the tokenizers, the reference set's neighbour indexes
and the fitted calibration. Torch-free: the refine path, the Triton models and the Ray actors
import it. Writing a bundle and its PyTorch modules: :mod:`sidyp_prod.torch_bundle`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .bundle import Bundle, BundleError
from .config import SiDyPConfig
from .decision import DecisionRule
from .encoder import configure_tokenizer
from .neighbors import NeighborIndex
from .trusted import PlattScaling

ENCODER_FILE = "encoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
REFERENCE_FILE = "reference.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# A separate sentence-embedding model (--embedding-model): its weights and tokenizer.
EMBEDDER_FILE = "embedder.safetensors"
EMBEDDING_TOKENIZER_FILE = "embedding_tokenizer.json"


def separate_embedder(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a bundle's separate embedding model, or None (the encoder's own layers;
    bundles written before the choice existed have no record)."""
    record = manifest.get("embedding_model")
    return None if record is None or record.get("shared_with_encoder") else record


def embedding_width(manifest: dict[str, Any]) -> int:
    """The width of the sentence embeddings (the reference set's)."""
    record = separate_embedder(manifest) or manifest["encoder"]
    return int(record["hidden_size"] if "hidden_size" in record else record["bert"]["hidden_size"])


CALIBRATION_FILE = "calibration.json"


@dataclass
class OutputCalibration:
    """The output calibration and decision state fitted after training (post_training.py):
    what refine needs beyond the models. Its own bundle file, hashed like the others."""

    temperature: float = 1.0
    label_bias: np.ndarray | None = None  # (C,) per-class calibration; None: temperature only
    label_shares: np.ndarray | None = None  # (C,) the LLM's label shares, when divided by
    blocked: list[int] = field(default_factory=list)  # classes never a change target
    # The change rule train chose on trusted labels (trusted.py); None: the configuration's.
    change_rule: str | None = None
    change_odds: float | None = None
    # The outputs' probabilities rescaled on trusted labels (trusted.py); None: as they are.
    confidence_scaling: PlattScaling | None = None
    label_score_scaling: PlattScaling | None = None
    # The temperature that fits the training rows' leave-self-out neighbour votes to their
    # labels (None: a bundle without held-out classifiers, or from before).
    vote_temperature: float | None = None

    def new_row_vote_temperature(self, config: SiDyPConfig) -> float:
        """The temperature of a new row's neighbours' vote: the fitted one where
        ``config.temper_vote`` is on, else 1.0."""
        if self.vote_temperature is None or not getattr(config, "temper_vote", False):
            return 1.0
        return self.vote_temperature

    def decision_rule(self, config: SiDyPConfig) -> DecisionRule:
        """The rule that turns the calibrated distribution into labels."""
        rule = DecisionRule.from_config(config, self.label_bias, blocked=self.blocked)
        if self.change_rule is None:
            return rule
        return replace(rule, rule=self.change_rule, odds=float(self.change_odds or rule.odds))

    def to_json(self) -> bytes:
        def floats(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in a]

        record = {"temperature": float(self.temperature), "label_bias": floats(self.label_bias),
                  "label_shares": floats(self.label_shares),
                  "blocked": [int(c) for c in self.blocked]}
        if self.change_rule is not None:
            record |= {"change_rule": self.change_rule, "change_odds": self.change_odds}
        scalings = {"confidence_scaling": self.confidence_scaling,
                    "label_score_scaling": self.label_score_scaling}
        record |= {name: s.to_list() for name, s in scalings.items() if s is not None}
        if self.vote_temperature is not None:
            record["vote_temperature"] = float(self.vote_temperature)
        return json.dumps(record, indent=1).encode()

    @classmethod
    def from_bundle(cls, bundle: Bundle, config: SiDyPConfig) -> OutputCalibration:
        """The bundle's record; a bundle written before it existed kept these values in its
        training summary (and one without a bias keeps the global temperature alone)."""
        if CALIBRATION_FILE in bundle.files:
            values = json.loads(bundle.path(CALIBRATION_FILE).read_text())
        else:
            training = bundle.manifest.get("training", {})
            labels = bundle.manifest["labels"]
            values = {**training, "blocked": [labels.index(label) for label in
                                              training.get("small_classes") or []
                                              if label in labels]}

        def array(key: str) -> np.ndarray | None:
            value = values.get(key)
            return None if value is None else np.asarray(value, dtype=np.float64)

        shares = array("label_shares") if config.label_share_correction else None
        odds = values.get("change_odds")
        return cls(float(values.get("temperature", 1.0)), array("label_bias"), shares,
                   [int(c) for c in values.get("blocked", [])], values.get("change_rule"),
                   None if odds is None else float(odds),
                   PlattScaling.from_list(values.get("confidence_scaling")),
                   PlattScaling.from_list(values.get("label_score_scaling")),
                   None if values.get("vote_temperature") is None
                   else float(values["vote_temperature"]))


@dataclass
class LoadedModel:
    """Everything refinement needs from a bundle except the back end's models."""

    bundle: Bundle
    labels: list[str]
    config: SiDyPConfig
    tokenizer: Tokenizer
    indexes: list[NeighborIndex]
    # The separate embedding model's tokenizer (None: the encoder's graph gives the embedding).
    embedding_tokenizer: Tokenizer | None
    calibration: OutputCalibration = field(default_factory=OutputCalibration)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    @property
    def label_bias(self) -> np.ndarray | None:
        return self.calibration.label_bias

    @property
    def label_shares(self) -> np.ndarray | None:
        return self.calibration.label_shares


def load_bundle_tokenizer(bundle: Bundle, embedding: bool = False) -> Tokenizer:
    """The bundle's tokenizer (``embedding``: the separate embedding model's), truncating and
    padding as its model expects; on its own so a tokenizing stage need not build the
    reference set's indexes."""
    config = SiDyPConfig.from_bundle(bundle.manifest["config"])
    record = separate_embedder(bundle.manifest) if embedding else bundle.manifest["encoder"]
    if record is None:
        raise BundleError(f"bundle {bundle.directory}: no separate embedding model")
    pad_token = record.get("pad_token", "[PAD]")  # older bundles: BERT's
    name = record["tokenizer"] if embedding else TOKENIZER_FILE
    return configure_tokenizer(
        Tokenizer.from_file(str(bundle.path(name))), config.max_length, pad_token
    )


def load_model(bundle: Bundle, use_gpu: bool | None = None) -> LoadedModel:
    manifest = bundle.manifest
    config = SiDyPConfig.from_bundle(manifest["config"])
    tokenizer = load_bundle_tokenizer(bundle)
    embedding_tokenizer = (load_bundle_tokenizer(bundle, embedding=True)
                           if separate_embedder(manifest) else None)
    reference = bundle.arrays(REFERENCE_FILE)
    indexes = [
        NeighborIndex(reference["embeddings"][clean], reference["labels"][clean], use_gpu)
        for clean in reference["clean"].astype(bool)
    ]
    return LoadedModel(
        bundle, list(manifest["labels"]), config, tokenizer, indexes, embedding_tokenizer,
        OutputCalibration.from_bundle(bundle, config),
    )
