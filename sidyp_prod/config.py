"""Every hyper-parameter of a SiDyP run, in one dataclass that is recorded in the bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Decision settings added after the first bundles: absent from a manifest, they mean the paper's
# argmax without the per-class step, which is what those bundles did.
SETTINGS_OF_OLDER_BUNDLES: dict[str, Any] = {
    "change_rule": "argmax", "change_odds": 1.0, "class_calibration": False,
    "label_share_correction": False, "held_out_folds": 0, "min_class_rows": 0,
    "new_row_agreement": False, "temper_vote": False,
}


LABEL_SOURCES = ("product", "marginal", "given", "candidates", "classifier")
CHANGE_RULES = ("odds", "argmax", "keep")
TIMESTEP_MAPPINGS = ("spaced", "authors")
KNN_EMBEDDINGS = ("top", "trunk")

# Help panels of the options the CLI makes of these fields (``train --help`` groups by them).
INPUT, MODEL, STAGE1, PRIOR, STAGE2 = "Input", "Model", "Stage I", "Prior", "Stage II"
PREDICTION, PERFORMANCE = "Prediction", "Performance"


def setting(default: Any, help: str, panel: str, **cli: Any) -> Any:
    """A field with what the CLI needs to make an option of it: its help text and panel, and
    for some ``choices`` (a fixed set of values) or ``cli_type`` (str for int-or-"all")."""
    return field(default=default, metadata={"help": help, "panel": panel, **cli})


@dataclass
class SiDyPConfig:
    """Hyper-parameters. Defaults are sized for a CPU; the paper's values are in the comments.
    Each field's metadata is the help and panel of its ``train`` option (cli/main.py)."""

    # Encoder: the frozen lower trunk is shared; each branch fine-tunes copies of the top layers.
    max_length: int = setting(128, "Token limit; longer texts are truncated.", MODEL)  # paper: 128
    # paper: all 12 of bert-base
    trainable_layers: int | str = setting(
        1, "Top encoder layers each branch tunes, or 'all' (the paper's full fine-tune).", MODEL,
        cli_type=str)
    # Stage I: classifier ensemble and training dynamics.
    branches: int = setting(2, "Classifier branches M.", STAGE1)  # paper: 3
    classifier_epochs: int = setting(6, "Stage I epochs.", STAGE1)  # paper: 20
    classifier_batch_size: int = setting(32, "Stage I batch size.", STAGE1)
    # paper: 5e-5 for a full fine-tune; only the top layer trains here
    classifier_lr: float = setting(2e-4, "Learning rate of the tuned encoder layers.", STAGE1)
    head_lr: float = setting(2e-3, "Learning rate of the classifier heads.", STAGE1)
    classifier_dropout: float = setting(0.1, "Dropout before the classifier heads.", STAGE1)
    warmup_fraction: float = setting(0.06, "Stage I lr warm-up.", STAGE1)
    # alpha: weight of the KL co-regularisation between branches
    coreg_alpha: float = setting(5.0, "Stage I co-regularisation weight.", STAGE1)
    coreg_warmup_fraction: float = setting(  # alpha = 0 during this fraction of epochs
        0.1, "Stage I epochs without co-regularisation.", STAGE1)
    grad_clip: float = setting(1.0, "Gradient-norm clip (both stages).", STAGE1)
    snapshots: int = setting(  # epochs whose features condition the denoiser (paper: every one)
        1, "Recorded training-dynamics snapshots (evenly spaced epochs, ending with the "
        "last).", STAGE1)
    # Noise marking: rho; None = estimate from the data (paper: 0.5 given).
    noise_ratio: float | None = setting(
        None, "Noise fraction rho (default: estimated from the data).", PRIOR)
    # Dynamic prior (paper: 10, 0.9, 0.8).
    knn_k: int = setting(10, "Neighbours K of the prior.", PRIOR)
    # "trunk" saves a layer pass per row (refine 1.07x) but gave 0.3 points less on SemEval
    # (docs/experiments.md §24).
    knn_embedding: str = setting(
        "top", "Sentence embedding of the prior: 'top' (the pretrained top layers, as the "
        "checkpoint was trained) or 'trunk' (the frozen trunk's states: one layer pass fewer "
        "per row).", PRIOR, choices=KNN_EMBEDDINGS)
    tau_certain: float = setting(0.9, "Vote share that makes a row's candidate certain.", PRIOR)
    tau_dominant: float = setting(0.8, "Top-two vote share that makes a row dominant.", PRIOR)
    # Stage II: simplex diffusion.
    simplex_scale: float = setting(5.0, "S.", STAGE2)  # paper: 5
    diffusion_steps: int = setting(800, "T_train.", STAGE2)  # paper: 800
    # paper: 10; 3 spaced steps gave the labels of 10 within a few rows at a third of the cost
    inference_steps: int = setting(3, "T_infer.", STAGE2)
    timestep_mapping: str = setting(  # "spaced" (DDIM-style) or "authors" (T_infer-1..0)
        "spaced", "Inference time steps: DDIM-style spacing or the authors' indices.", STAGE2,
        choices=TIMESTEP_MAPPINGS)
    denoiser_width: int = setting(  # w is projected to this width first (paper: dim(w))
        256, "Width the conditioning is projected to.", STAGE2)
    diffusion_epochs: int = setting(  # paper: 10 (too few steps on small corpora; method.md)
        30, "Stage II epochs.", STAGE2)
    diffusion_batch_size: int = setting(128, "Stage II batch size.", STAGE2)  # paper: 128
    diffusion_lr: float = setting(1e-3, "Denoiser learning rate.", STAGE2)  # paper: 6e-4..1e-3
    diffusion_warmup_fraction: float = setting(
        0.2, "Stage II epochs on certain rows only.", STAGE2)
    refine_samples: int = setting(4, "n_s reverse processes per update.", STAGE2)  # paper: 4
    coreg_lambda: float = setting(2.0, "Stage II co-regularisation weight.", STAGE2)  # paper: 2
    dynamic_prior: bool = setting(  # True: the paper's iterative refinement of the targets
        False, "Refine the Stage II targets from the denoiser (the paper; off: the static kNN "
        "weights, measured better).", PRIOR)
    ema_decay: float = setting(0.99, "Decay of the denoiser's weight average.", STAGE2)
    # The authors keep an EMA but evaluate the raw weights.
    use_ema: bool = setting(False, "Keep the EMA denoiser weights.", STAGE2)
    holdout_fraction: float = setting(
        0.1, "Rows held out to pick the diffusion epoch.", STAGE2)
    # Prediction.
    # Which distribution gives predicted_label: "product" (geometric mean of the denoiser's
    # p(y | x) and the classifier ensemble) measured best on 3 seeds (docs/experiments.md).
    label_source: str = setting(
        "product", "Which distribution gives predicted_label.", PREDICTION,
        choices=LABEL_SOURCES)
    # When to change a given label (sidyp_prod/decision.py): "argmax" always takes the most
    # probable class (the paper); "odds" keeps the given label unless the calibrated
    # distribution makes another class change_odds times as probable; "keep" changes none
    # (what train --trusted-field falls back to when no rule fixes more than it breaks).
    change_rule: str = setting(
        "odds", "'odds': keep the LLM label unless another class is --change-odds times as "
        "probable; 'argmax': always the most probable class; 'keep': never change an LLM "
        "label (score only).", PREDICTION,
        choices=CHANGE_RULES)
    change_odds: float = setting(
        2.0, "Labels a change must be expected to fix per label it breaks.", PREDICTION)
    class_calibration: bool = setting(
        True, "Per-class label_score calibration from the noise marking.", PREDICTION)
    # Divide the distribution by the LLM's label shares first: the experts' learned class prior
    # is the LLM's habit, not evidence (decision.py, docs/experiments.md).
    label_share_correction: bool = setting(
        True, "Divide the distribution by the LLM labels' class shares before calibrating (the "
        "experts' learned prior is the LLM's habit).", PREDICTION)
    # Folds of single-branch classifiers fine-tuned on the other folds' labels: for a training
    # row, the product's third expert is a classifier that never saw its label; for a new row
    # it is the prior's kNN vote (0: two experts for both).
    held_out_folds: int = setting(
        5, "Folds of classifiers that never saw a training row's label: the product's third "
        "expert for --refined-out; new rows take the neighbours' vote there (0: off).",
        PREDICTION)
    # A new row's change must also be the classifier ensemble's prediction (decision.py's
    # agreed_change); a training row's ensemble saw its label, so there it does not apply.
    new_row_agreement: bool = setting(
        True, "On a new row, change an LLM label only to the class the classifier ensemble "
        "predicts too (--refined-out rows: not applied).", PREDICTION)
    # The neighbours' vote is far sharper than its agreement with the labels (temperature 3-5).
    # Tempering it halved the quality preset's new-row ECE on SemEval's folds, but not on valid,
    # nor in the defaults (a flatter output temperature already offsets the sharp vote), and it
    # cost where neighbours know better than the LLM (templated news): off (experiments §35).
    temper_vote: bool = setting(
        False, "Temper a new row's neighbours' vote (the product's third expert) by the "
        "temperature that fits the training rows' own votes to their labels.", PREDICTION)
    # Training sample: at most this many rows, drawn per LLM label (0 or None: every row); the
    # rest of the corpus is refined as new rows.
    max_train_rows: int | None = setting(
        10_000, "Train on a sample of this many rows drawn per LLM label (every class kept, "
        "chosen by --seed; 0: every row); the rest are refined as new rows.", INPUT)
    # A class with fewer LLM labels than this is kept as a label but never a change target: too
    # few rows to learn it from, and the label-share correction would inflate it (0: off).
    min_class_rows: int = setting(
        5, "A class with fewer LLM labels is kept but never a change target (0: off).",
        PREDICTION)
    # Runtime.
    seed: int = setting(0, "Seed of every random draw.", PERFORMANCE)
    encode_batch_size: int = setting(64, "Rows per encoder batch.", PERFORMANCE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> SiDyPConfig:
        """The settings of a named preset (PRESETS), with ``overrides`` on top."""
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r}: one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[preset], **overrides})

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

    def resolved_knn_embedding(self, depth: int) -> str:
        """``knn_embedding``, checked against an encoder ``depth`` layers deep."""
        if self.knn_embedding == "trunk" and self.resolved_trainable_layers(depth) == depth:
            raise ValueError("knn_embedding 'trunk' needs frozen layers: every layer is trained")
        return self.knn_embedding

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
        if self.knn_embedding not in KNN_EMBEDDINGS:
            raise ValueError(f"knn_embedding must be one of {KNN_EMBEDDINGS}")
        if self.timestep_mapping not in TIMESTEP_MAPPINGS:
            raise ValueError(f"timestep_mapping must be one of {TIMESTEP_MAPPINGS}")
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


# Named starting points of ``train --preset``; options given explicitly override them.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The paper's recipe: every encoder layer of three branches (and of the held-out
    # classifiers) fine-tuned at the paper's learning rate. Its CPU cost is in
    # docs/benchmarks.md; ``auto`` picks it when training runs on a GPU.
    "quality": {"trainable_layers": "all", "branches": 3, "classifier_epochs": 4,
                "classifier_lr": 5e-5},
}
PRESET_CHOICES = ("auto", *PRESETS)


def resolve_preset(preset: str, on_gpu: bool) -> str:
    """``auto``: ``quality`` when training runs on a GPU, else ``default``."""
    if preset == "auto":
        return "quality" if on_gpu else "default"
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: one of {list(PRESET_CHOICES)}")
    return preset
