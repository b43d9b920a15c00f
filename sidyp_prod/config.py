"""Every hyper-parameter of a SiDyP run, in one dataclass that is recorded in the bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Decision settings added after the first bundles: absent from a manifest, they mean the paper's
# argmax without the per-class step, which is what those bundles did.
SETTINGS_OF_OLDER_BUNDLES: dict[str, Any] = {
    "change_rule": "argmax", "change_odds": 1.0, "class_calibration": False,
    "label_share_correction": False, "held_out_folds": 0, "min_class_rows": 0,
}


@dataclass
class SiDyPConfig:
    """Hyper-parameters. Defaults are sized for a CPU; the paper's values are in the comments."""

    # Encoder: the frozen lower trunk is shared; each branch fine-tunes copies of the top layers.
    max_length: int = 128  # paper: 128
    # Top transformer layers each branch fine-tunes, or "all" (paper: all 12 of bert-base).
    trainable_layers: int | str = 1
    # Stage I: classifier ensemble and training dynamics.
    branches: int = 2  # paper: 3
    classifier_epochs: int = 6  # paper: 20
    classifier_batch_size: int = 32
    classifier_lr: float = 2e-4  # paper: 5e-5 for a full fine-tune; only the top layer trains here
    head_lr: float = 2e-3
    classifier_dropout: float = 0.1
    warmup_fraction: float = 0.06
    coreg_alpha: float = 5.0  # alpha: weight of the KL co-regularisation between branches
    coreg_warmup_fraction: float = 0.1  # alpha = 0 during this fraction of epochs
    grad_clip: float = 1.0
    snapshots: int = 1  # epochs whose branch features condition the denoiser (paper: every epoch)
    # Noise marking.
    noise_ratio: float | None = None  # rho; None = estimate from the data (paper: 0.5 given)
    # Dynamic prior.
    knn_k: int = 10  # paper: 10
    tau_certain: float = 0.9  # paper: 0.9
    tau_dominant: float = 0.8  # paper: 0.8
    # Stage II: simplex diffusion.
    simplex_scale: float = 5.0  # S, paper: 5
    diffusion_steps: int = 800  # T_train, paper: 800
    inference_steps: int = 10  # T_infer, paper: 10
    timestep_mapping: str = "spaced"  # "spaced" (DDIM-style) or "authors" (indices 9..0)
    denoiser_width: int = 256  # w is projected to this width first (paper: dim(w))
    diffusion_epochs: int = 30  # paper: 10 (too few steps on small corpora; docs/method.md)
    diffusion_batch_size: int = 128  # paper: 128
    diffusion_lr: float = 1e-3  # paper: 6e-4 to 1e-3
    diffusion_warmup_fraction: float = 0.2  # only certain rows train during this fraction of epochs
    refine_samples: int = 4  # n_s, paper: 4
    coreg_lambda: float = 2.0  # lambda, paper: 2
    dynamic_prior: bool = False  # True: the paper's iterative refinement of the targets
    ema_decay: float = 0.99
    use_ema: bool = False  # the authors keep an EMA but evaluate the raw weights
    holdout_fraction: float = 0.1  # rows held out of Stage II to choose the best diffusion epoch
    # Prediction.
    # Which distribution gives predicted_label: "product" (geometric mean of the denoiser's
    # p(y | x) and the classifier ensemble) measured best on 3 seeds (docs/experiments.md).
    label_source: str = "product"
    # When to change a given label (sidyp_prod/decision.py): "argmax" always takes the most
    # probable class (the paper); "odds" keeps the given label unless the calibrated
    # distribution makes another class change_odds times as probable.
    change_rule: str = "odds"
    change_odds: float = 2.0  # labels a change must be expected to fix per label it breaks
    class_calibration: bool = True  # per-class label_score calibration from the noise marking
    # Divide the distribution by the LLM's label shares first: the experts' learned class prior
    # is the LLM's habit, not evidence (decision.py, docs/experiments.md).
    label_share_correction: bool = True
    # Folds of single-branch classifiers fine-tuned on the other folds' labels: for a training
    # row, the product's third expert is a classifier that never saw its label (0: two experts).
    held_out_folds: int = 5
    # Training sample: at most this many rows, drawn per LLM label (0 or None: every row); the
    # rest of the corpus is refined as new rows.
    max_train_rows: int | None = 10_000
    # A class with fewer LLM labels than this is kept as a label but never a change target: too
    # few rows to learn it from, and the label-share correction would inflate it (0: off).
    min_class_rows: int = 5
    # Runtime.
    seed: int = 0
    encode_batch_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_trainable_layers(self, depth: int) -> int:
        """``trainable_layers`` as a number of layers of an encoder ``depth`` layers deep."""
        if self.trainable_layers == "all":
            return depth
        layers = int(self.trainable_layers)
        if not 1 <= layers <= depth:
            raise ValueError(
                f"trainable_layers {layers}: the encoder has {depth} layers (1..{depth} or 'all')"
            )
        return layers

    @classmethod
    def from_bundle(cls, values: dict[str, Any]) -> SiDyPConfig:
        """A bundle's recorded settings. Settings added after a bundle was written take the value
        that keeps its behaviour, not today's default: its labels must not change on upgrade."""
        return cls.from_dict({**SETTINGS_OF_OLDER_BUNDLES, **values})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SiDyPConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown hyper-parameters: {sorted(unknown)}")
        return cls(**values)

    def validate(self) -> None:
        if self.branches < 1:
            raise ValueError("branches must be >= 1")
        if self.trainable_layers != "all" and (
            not isinstance(self.trainable_layers, int) or self.trainable_layers < 1
        ):
            raise ValueError("trainable_layers must be a positive number of layers or 'all'")
        if self.max_train_rows not in (None, 0) and self.max_train_rows < 2:
            raise ValueError("max_train_rows must be 0 (no limit) or >= 2")
        if self.held_out_folds == 1 or self.held_out_folds < 0:
            raise ValueError("held_out_folds must be 0 (off) or >= 2")
        if not 1 <= self.snapshots <= self.classifier_epochs:
            raise ValueError("snapshots must be between 1 and classifier_epochs")
        if self.noise_ratio is not None and not 0.0 <= self.noise_ratio < 1.0:
            raise ValueError("noise_ratio must be in [0, 1)")
        if self.timestep_mapping not in ("spaced", "authors"):
            raise ValueError("timestep_mapping must be 'spaced' or 'authors'")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}")
        if self.change_rule not in CHANGE_RULES:
            raise ValueError(f"change_rule must be one of {CHANGE_RULES}")
        if self.change_odds < 1.0:
            raise ValueError("change_odds must be >= 1 (1 = the argmax)")
        if self.min_class_rows < 0:
            raise ValueError("min_class_rows must be >= 0")
        if not 0.0 < self.tau_dominant <= self.tau_certain <= 1.0:
            raise ValueError("need 0 < tau_dominant <= tau_certain <= 1")


LABEL_SOURCES = ("marginal", "given", "candidates", "product", "classifier")
CHANGE_RULES = ("argmax", "odds")
