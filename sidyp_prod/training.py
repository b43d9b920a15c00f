"""Training in PyTorch: Stage I (classifier ensemble and its training dynamics), noise marking,
the dynamic prior, and Stage II (the simplex-diffusion denoiser with iterative refinement).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .backends.base import EncodedBatch
from .config import SiDyPConfig
from .device import Precision
from .diffusion import cosine_alpha_bar, simplex, text_key
from .encoder import configure_tokenizer, tokenize
from .models import EMA, DenoiserEnsemble, ReverseProcess, SentenceEmbedder, SiDyPEncoder
from .neighbors import NeighborIndex
from .noise import centroid_distances, estimate_noise_ratio, mark_noisy, noise_scores
from .pretrained import PretrainedEncoder
from .prior import CERTAIN
from .refinement import RefineSettings, prior_from_neighbors, refine_batch
from .transformer import EncoderSlice, Trunk, pool, sentence_embedding, set_dropout


@dataclass
class RowFeatures:
    """What Stage I knows of every training row."""

    probs: np.ndarray  # (M, N, C) the final classifiers' probabilities
    dynamics: np.ndarray  # (M, N, S*H) raw training dynamics, before the denoiser's projection
    embedding: np.ndarray  # (N, H) sentence embeddings
    # (N, C) out-of-fold classifier probabilities (held_out_folds > 0), else None
    held_out_probs: np.ndarray | None = None


@dataclass
class TrainingResult:
    encoder: SiDyPEncoder
    denoiser: DenoiserEnsemble
    embeddings: np.ndarray  # (N, H) sentence embeddings: the reference set
    given: np.ndarray  # (N,) given-label indices of the reference set, -1 where refused
    clean: np.ndarray  # (M, N) bool clean marks
    centroids: np.ndarray  # (M, S, C, H) class centroids of each recorded snapshot
    noise_ratio: float
    noise_ratio_estimated: bool
    noise_scores: np.ndarray  # (M, N) each branch's noise score per row (NaN: unlabelled)
    features: RowFeatures  # the training rows' classifier probabilities and training dynamics
    prior_weights: np.ndarray  # (M, N, C) the dynamic prior after training
    prior_kind: np.ndarray  # (M, N)
    snapshot_epochs: list[int]
    best_diffusion_epoch: int
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def snapshot_epochs(epochs: int, snapshots: int) -> list[int]:
    """Evenly spaced 0-based epochs to record, always ending with the last epoch."""
    picks = np.round(np.linspace(epochs / snapshots, epochs, snapshots)).astype(int) - 1
    return sorted(set(picks.tolist()))


def linear_warmup_schedule(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, cosine: bool = False
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if cosine:
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class HiddenStateCache:
    """The frozen trunk's hidden states of every row, computed once (the trunk never trains) and
    kept on disk in fp16, read back a batch at a time: RAM does not grow with the corpus.

    Reads use ``os.pread`` rather than a memory map, so the pages land in the page cache (which
    the kernel reclaims) and not in the process's resident set."""

    def __init__(self, directory: Path, n_rows: int, hidden_size: int):
        self.path = directory / "trunk-states.f16"
        self.hidden_size = hidden_size
        self.offsets = np.zeros(n_rows, dtype=np.int64)
        self.lengths = np.zeros(n_rows, dtype=np.int64)
        self._end = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def __len__(self) -> int:
        return len(self.lengths)

    def put(self, row: int, states: np.ndarray) -> None:
        data = np.ascontiguousarray(states, dtype=np.float16).tobytes()
        os.pwrite(self._fd, data, self._end)
        self.offsets[row], self.lengths[row] = self._end, len(states)
        self._end += len(data)

    def get(self, row: int) -> np.ndarray:
        n = int(self.lengths[row])
        data = os.pread(self._fd, n * self.hidden_size * 2, int(self.offsets[row]))
        return np.frombuffer(data, dtype=np.float16).reshape(n, self.hidden_size)

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, H) float32 states, zero-padded to the longest row, and the (B, N) mask."""
        n = int(self.lengths[rows].max())
        h = np.zeros((len(rows), n, self.hidden_size), dtype=np.float32)
        mask = np.zeros((len(rows), n), dtype=np.int64)
        for i, r in enumerate(rows):
            states = self.get(int(r))
            h[i, : len(states)] = states
            mask[i, : len(states)] = 1
        return torch.from_numpy(h).to(device), torch.from_numpy(mask).to(device)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _batches(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def length_grouped_batches(
    rows: np.ndarray,
    lengths: np.ndarray,
    size: int,
    rng: np.random.Generator,
    pool_batches: int = 50,
) -> list[np.ndarray]:
    """Shuffled training batches of similar lengths (little padding): the rows are shuffled, cut
    into pools of ``pool_batches`` batches, sorted by length within a pool, batched, and the
    batches shuffled again."""
    shuffled = rng.permutation(rows)
    batches: list[np.ndarray] = []
    pool_size = size * pool_batches
    for start in range(0, len(shuffled), pool_size):
        block = shuffled[start : start + pool_size]
        block = block[np.argsort(lengths[block], kind="stable")]
        batches.extend(_batches(block, size))
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.inference_mode()
def _encode_trunk(
    texts: list[str],
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    work_dir: Path,
    device: torch.device,
    precision: Precision,
    progress: bool,
    embedding: str = "top",
) -> tuple[Trunk, EncoderSlice, HiddenStateCache, np.ndarray | None]:
    """The trunk's states of every row into a file, and the sentence embeddings: the trunk's
    states pooled (``embedding`` 'trunk'), the pretrained top slice's ('top'), or none
    ('separate')."""
    model = pretrained.model
    depth = int(model.config.num_hidden_layers)
    trainable = config.resolved_trainable_layers(depth)
    trunk = Trunk(model, depth - trainable).to(device).eval()
    top = EncoderSlice(model, depth - trainable, depth, share=True).to(device).eval()
    tokenizer = configure_tokenizer(pretrained.tokenizer, config.max_length, pretrained.pad_token)
    hidden_size = int(model.config.hidden_size)
    cache = HiddenStateCache(work_dir, len(texts), hidden_size)
    embeddings = (None if embedding == "separate"
                  else np.zeros((len(texts), hidden_size), dtype=np.float32))
    # Length-sorted batches waste little compute on padding.
    order = np.argsort([len(t) for t in texts], kind="stable")
    bar = tqdm(total=len(texts), desc="encode", unit="rows", disable=not progress)
    for rows in _batches(order, config.encode_batch_size):
        ids, mask = tokenize(tokenizer, [texts[r] for r in rows])
        ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        with precision.autocast():
            h = trunk(ids_t, mask_t)
            if embeddings is not None:
                pooled_from = h if embedding == "trunk" else top(h, mask_t)
                sentence = sentence_embedding(pooled_from.float(), mask_t,
                                              pretrained.pooling.mode)
                embeddings[rows] = sentence.float().cpu().numpy()
        states = h.float().cpu().numpy()
        for i, r in enumerate(rows):
            cache.put(int(r), states[i, : int(mask[i].sum())])
        bar.update(len(rows))
    bar.close()
    return trunk, top, cache, embeddings


@torch.inference_mode()
def embed_texts(
    texts: list[str],
    embedder: PretrainedEncoder,
    config: SiDyPConfig,
    device: torch.device,
    progress: bool = False,
) -> np.ndarray:
    """(N, H) normalised sentence embeddings of ``texts`` from a separate embedding model."""
    module = SentenceEmbedder(embedder.model, embedder.pooling.mode).to(device).eval()
    tokenizer = configure_tokenizer(embedder.tokenizer, config.max_length, embedder.pad_token)
    precision = Precision(device)
    embeddings = np.zeros((len(texts), int(embedder.config.hidden_size)), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    bar = tqdm(total=len(texts), desc="embed", unit="rows", disable=not progress)
    for rows in _batches(order, config.encode_batch_size):
        ids, mask = tokenize(tokenizer, [texts[r] for r in rows])
        with precision.autocast():
            sentence = module(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        embeddings[rows] = sentence.float().cpu().numpy()
        bar.update(len(rows))
    bar.close()
    return embeddings


def embedding_source(
    config: SiDyPConfig, pretrained: PretrainedEncoder, embedder: PretrainedEncoder | None
) -> str:
    """Where the neighbour prior's sentence embedding comes from: 'separate' (``embedder``),
    else the encoder's 'trunk' or 'top' (``config.knn_embedding``)."""
    if embedder is not None:
        return "separate"
    return config.resolved_knn_embedding(int(pretrained.config.num_hidden_layers))


@contextlib.contextmanager
def encoded_trunk(
    texts: list[str],
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    device: torch.device,
    work_dir: str | Path | None = None,
    progress: bool = False,
    embedder: PretrainedEncoder | None = None,
) -> Iterator[tuple[EncoderSlice, HiddenStateCache, np.ndarray]]:
    """The pretrained top slice, the trunk-state file and the sentence embeddings of ``texts``
    (from ``embedder`` when given, else the encoder's own layers as ``config.knn_embedding``
    says), the file in a temporary directory under ``work_dir`` that is removed on exit."""
    with tempfile.TemporaryDirectory(prefix="sidyp-train-", dir=work_dir) as tmp:
        _, top, cache, embeddings = _encode_trunk(
            texts, pretrained, config, Path(tmp), device, Precision(device), progress,
            embedding=embedding_source(config, pretrained, embedder),
        )
        try:
            if embeddings is None:
                embeddings = embed_texts(texts, embedder, config, device, progress)
            yield top, cache, embeddings
        finally:
            cache.close()


def pretrained_sentence_embeddings(
    texts: list[str],
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    device: torch.device | None = None,
    embedder: PretrainedEncoder | None = None,
) -> np.ndarray:
    """(N, H) the neighbour search's sentence embeddings of ``texts``, as training computes them."""
    if embedder is not None:
        return embed_texts(texts, embedder, config, device or torch.device("cpu"))
    with encoded_trunk(texts, pretrained, config, device or torch.device("cpu")) as (_, _, emb):
        return emb


class _Branch(nn.Module):
    def __init__(self, top: EncoderSlice, n_classes: int, dropout: float, pooling: str):
        super().__init__()
        self.stack = copy.deepcopy(top)  # a copy of the pretrained top layers to fine-tune
        set_dropout(self.stack, dropout)
        for p in self.stack.parameters():
            p.requires_grad_(False)
        for p in self.stack.trainable_parameters():
            p.requires_grad_(True)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(top.hidden_size, n_classes)

    def features(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool(self.stack(h, mask), mask, self.pooling).float()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(h, mask)))


def coregularization(probs: torch.Tensor) -> torch.Tensor:
    """Mean over branches of KL(mean of the branches' probabilities || branch probabilities)."""
    mean = probs.mean(0, keepdim=True)
    log_ratio = torch.log(mean.clamp_min(1e-8)) - torch.log(probs.clamp_min(1e-8))
    return (mean * log_ratio).sum(-1).mean()


@dataclass
class _StageOne:
    branches: list[_Branch]
    own_distances: np.ndarray  # (E, M, N) distance to the own label's centroid, every epoch
    dynamics: np.ndarray  # (M, N, S*H) pooled features of the recorded snapshots
    probs: np.ndarray  # (M, N, C) the final classifiers' probabilities
    snapshot_states: list[list[dict]]  # per branch, the top layers' weights at each snapshot
    centroids: np.ndarray  # (M, S, C, H)
    history: list[dict[str, float]]


@dataclass
class _Run:
    """Where and how a training run computes."""

    device: torch.device
    precision: Precision
    pooling: str
    progress: bool = False


def _stage_one(
    cache: HiddenStateCache,
    top: EncoderSlice,
    given: np.ndarray,
    n_classes: int,
    config: SiDyPConfig,
    rng: np.random.Generator,
    run: _Run,
) -> _StageOne:
    """Fine-tune M branches together and record their training dynamics."""
    n = len(given)
    labelled = np.flatnonzero(given >= 0)
    branches = [
        _Branch(top, n_classes, config.classifier_dropout, run.pooling).to(run.device)
        for _ in range(config.branches)
    ]
    stack_params = [p for b in branches for p in b.stack.trainable_parameters()]
    params = [
        {"params": stack_params, "lr": config.classifier_lr},
        {"params": [p for b in branches for p in b.head.parameters()], "lr": config.head_lr},
    ]
    optimizer = torch.optim.Adam(params)
    scaler = run.precision.scaler()
    steps_per_epoch = math.ceil(len(labelled) / config.classifier_batch_size)
    total = steps_per_epoch * config.classifier_epochs
    scheduler = linear_warmup_schedule(optimizer, total, int(config.warmup_fraction * total))
    coreg_epochs = math.ceil(config.coreg_warmup_fraction * config.classifier_epochs)
    recorded = snapshot_epochs(config.classifier_epochs, config.snapshots)
    own_distances = np.zeros((config.classifier_epochs, config.branches, n))
    snapshot_features: list[np.ndarray] = []
    snapshot_states: list[list[dict]] = [[] for _ in branches]
    hidden_size = branches[0].head.in_features
    centroids = np.zeros((config.branches, len(recorded), n_classes, hidden_size))
    history = []
    labels_t = torch.from_numpy(given).to(run.device)
    bar = tqdm(
        total=total * len(branches) * config.classifier_batch_size,
        desc="stage I",
        unit="rows",
        disable=not run.progress,
    )
    for epoch in range(config.classifier_epochs):
        alpha = 0.0 if epoch < coreg_epochs else config.coreg_alpha
        for b in branches:
            b.train()
        losses = []
        batches = length_grouped_batches(
            labelled, cache.lengths, config.classifier_batch_size, rng
        )
        for rows in batches:
            h, mask = cache.batch(rows, run.device)
            with run.precision.autocast():
                logits = torch.stack([b(h, mask) for b in branches]).float()
            target = labels_t[torch.from_numpy(rows).to(run.device)]
            ce = torch.stack([F.cross_entropy(lg, target) for lg in logits]).mean()
            loss = ce + alpha * coregularization(logits.softmax(-1)) if len(branches) > 1 else ce
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(len(rows) * len(branches))
        features, probs = _branch_outputs(branches, cache, config.encode_batch_size, run)
        for m, feats in enumerate(features):
            dist = centroid_distances(feats, given, n_classes)
            own = dist[np.arange(n), np.clip(given, 0, None)]
            own_distances[epoch, m] = np.where(given >= 0, own, np.nan)
        if epoch in recorded:
            s = recorded.index(epoch)
            snapshot_features.append(features)
            for m, b in enumerate(branches):
                snapshot_states[m].append(
                    {k: v.detach().cpu().clone() for k, v in b.stack.state_dict().items()}
                )
                for c in range(n_classes):
                    members = given == c
                    if members.any():
                        centroids[m, s, c] = features[m][members].mean(axis=0)
        history.append({"stage": 1, "epoch": epoch, "loss": float(np.mean(losses))})
    bar.close()
    dynamics = np.concatenate(snapshot_features, axis=-1).astype(np.float32)  # (M, N, S*H)
    return _StageOne(branches, own_distances, dynamics, probs, snapshot_states, centroids, history)


@torch.inference_mode()
def _branch_outputs(
    branches: list[_Branch], cache: HiddenStateCache, batch_size: int, run: _Run
) -> tuple[np.ndarray, np.ndarray]:
    """Every row's pooled features (M, N, H) and classifier probabilities (M, N, C)."""
    n = len(cache)
    features = np.zeros((len(branches), n, branches[0].head.in_features), dtype=np.float32)
    probs = np.zeros((len(branches), n, branches[0].head.out_features), dtype=np.float32)
    order = np.argsort(cache.lengths, kind="stable")
    for b in branches:
        b.eval()
    for rows in _batches(order, batch_size):
        h, mask = cache.batch(rows, run.device)
        for m, b in enumerate(branches):
            with run.precision.autocast():
                pooled = b.features(h, mask)
                logits = b.head(pooled).float()
            features[m, rows] = pooled.cpu().numpy()
            probs[m, rows] = logits.softmax(-1).cpu().numpy()
    return features, probs


def out_of_fold_probs(
    cache: HiddenStateCache,
    top: EncoderSlice,
    given: np.ndarray,
    n_classes: int,
    config: SiDyPConfig,
    rng: np.random.Generator,
    folds: int,
    run: _Run,
) -> np.ndarray:
    """(N, C) p(y_given | x) of one classifier (a single branch: the trunk, the top layer(s), a
    head) per fold, fine-tuned on the LLM labels of the other folds: for every row, the
    prediction of a classifier that never saw its label (cleanlab's out-of-sample probabilities)."""
    plain = replace(config, branches=1, snapshots=1, coreg_alpha=0.0)
    fold = rng.permutation(len(given)) % folds
    probs = np.zeros((len(given), n_classes), dtype=np.float32)
    quiet = replace(run, progress=False)
    for k in range(folds):
        train_given = np.where(fold == k, -1, given)
        stage = _stage_one(cache, top, train_given, n_classes, plain, rng, quiet)
        _, fold_probs = _branch_outputs(stage.branches, cache, plain.encode_batch_size, quiet)
        probs[fold == k] = fold_probs[0, fold == k]
    return probs


class _DenoiserBackend:
    """Lets the backend-agnostic refinement core call the denoiser while it trains."""

    def __init__(
        self, model: DenoiserEnsemble, settings: RefineSettings, device: torch.device
    ):
        self.model = model
        self.device = device
        schedule = settings.schedule
        self.reverse_process = ReverseProcess(
            model, schedule.timesteps, schedule.alpha_bar, settings.scale
        )

    @torch.inference_mode()
    def _eval(self, method: Callable, *arrays: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        out = method(*(torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays))
        self.model.train(was_training)
        return out.cpu().numpy()

    def condition(self, dynamics: np.ndarray) -> np.ndarray:
        return self._eval(self.model.condition, dynamics)

    def reverse(
        self, noise: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        return self._eval(self.reverse_process, noise, conditioning, y_given)

    def encoded(self, features: RowFeatures, rows: np.ndarray) -> EncodedBatch:
        """Some rows' encoder outputs, conditioned as the current denoiser would get them."""
        return EncodedBatch(
            features.probs[:, rows],
            self.condition(features.dynamics[:, rows]),
            features.embedding[rows],
        )


def _stage_two(
    features: RowFeatures,
    given: np.ndarray,
    keys: list[int],
    prior_weights: np.ndarray,
    prior_kind: np.ndarray,
    n_classes: int,
    config: SiDyPConfig,
    rng: np.random.Generator,
    run: _Run,
) -> tuple[DenoiserEnsemble, np.ndarray, int, list[dict[str, float]]]:
    """Train the denoisers with iterative refinement; return the best one, the refined weights,
    the chosen epoch and the loss history."""
    m, n, feature_dim = features.dynamics.shape
    settings = RefineSettings.from_config(config, n_classes)
    device = run.device
    model = DenoiserEnsemble(
        m, n_classes, feature_dim, config.denoiser_width, config.diffusion_steps
    ).to(device)
    ema = EMA(model, config.ema_decay)
    backend = _DenoiserBackend(model, settings, device)
    eval_backend = _DenoiserBackend(ema.shadow if config.use_ema else model, settings, device)

    n_hold = round(config.holdout_fraction * n) if n >= 20 else 0
    permutation = rng.permutation(n)
    holdout, train_rows = np.sort(permutation[:n_hold]), np.sort(permutation[n_hold:])
    # The holdout is scored against its own kNN-prior labels (majority over branches): no gold.
    prior_labels = _majority(prior_weights[:, holdout].argmax(-1), n_classes)

    steps_per_epoch = math.ceil(len(train_rows) / config.diffusion_batch_size)
    total = steps_per_epoch * config.diffusion_epochs
    optimizer = torch.optim.Adam(model.parameters(), lr=config.diffusion_lr)
    scheduler = linear_warmup_schedule(optimizer, total, max(1, total // 10), cosine=True)
    alpha_bar = torch.from_numpy(cosine_alpha_bar(config.diffusion_steps)).float().to(device)
    warmup_epochs = math.ceil(config.diffusion_warmup_fraction * config.diffusion_epochs)
    weights = prior_weights.copy()
    dynamics = torch.from_numpy(features.dynamics).to(device)
    y_vectors = torch.from_numpy(simplex(given, n_classes, config.simplex_scale)).to(device)
    scale = config.simplex_scale
    best_state, best_score, best_epoch = copy.deepcopy(eval_backend.model.state_dict()), -1.0, -1
    history = []
    for epoch in tqdm(
        range(config.diffusion_epochs), desc="stage II", unit="epoch", disable=not run.progress
    ):
        warm = epoch < warmup_epochs
        # Without the dynamic prior (an ablation) the targets keep the kNN weights.
        if not warm and config.dynamic_prior:
            weights[:, train_rows] = _refine_prior(
                backend,
                backend.encoded(features, train_rows),
                weights[:, train_rows],
                prior_kind[:, train_rows],
                given,
                train_rows,
                settings,
                rng,
            )
        targets = _draw_targets(weights, prior_kind, rng)  # (M, N)
        target_weight = np.take_along_axis(weights, targets[..., None], axis=-1)[..., 0]
        include = (prior_kind == CERTAIN) if warm else np.ones_like(prior_kind, dtype=bool)
        model.train()
        losses = []
        for rows in _batches(rng.permutation(train_rows), config.diffusion_batch_size):
            if len(rows) < 2:  # BatchNorm needs two rows
                continue
            t = torch.from_numpy(rng.integers(0, config.diffusion_steps, len(rows))).to(device)
            eps = torch.from_numpy(
                rng.standard_normal((len(rows), n_classes)).astype(np.float32)
            ).to(device)
            x0 = torch.from_numpy(simplex(targets[:, rows], n_classes, scale)).to(device)
            rows_t = torch.from_numpy(rows).to(device)
            ab = alpha_bar[t][None, :, None]
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * scale * eps[None]
            logits = model(x_t, t, dynamics[:, rows_t], y_vectors[rows_t])
            ce = F.cross_entropy(
                logits.reshape(-1, n_classes),
                torch.from_numpy(targets[:, rows]).reshape(-1).to(device),
                reduction="none",
            ).reshape(m, len(rows))
            w = torch.from_numpy(
                (target_weight[:, rows] * include[:, rows]).astype(np.float32)
            ).to(device)
            count = torch.from_numpy(
                include[:, rows].sum(1).clip(min=1).astype(np.float32)
            ).to(device)
            loss = ((ce * w).sum(1) / count).mean()
            if m > 1:
                loss = loss + config.coreg_lambda * coregularization(logits.softmax(-1))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(model)
            losses.append(float(loss.detach()))
        score = _holdout_accuracy(
            eval_backend,
            eval_backend.encoded(features, holdout),
            weights,
            prior_kind,
            given,
            keys,
            holdout,
            prior_labels,
            settings,
            config.label_source,
            config.dynamic_prior,
        )
        history.append(
            {
                "stage": 2,
                "epoch": epoch,
                "loss": float(np.mean(losses or [0.0])),
                "holdout_prior_accuracy": score,
            }
        )
        if score >= best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(eval_backend.model.state_dict())
    model.load_state_dict(best_state)
    return model.cpu().eval(), weights, best_epoch, history


def _majority(votes: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, R) class votes -> (R,) majority class (ties: the lowest class index)."""
    counts = np.stack([(votes == c).sum(0) for c in range(n_classes)], axis=1)
    return counts.argmax(axis=1)


def _draw_targets(weights: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Certain rows train toward their label; the others draw a target from their weights."""
    cumulative = weights.cumsum(-1)
    u = rng.random(weights.shape[:-1])[..., None]
    drawn = (u > cumulative).sum(-1).clip(max=weights.shape[-1] - 1)
    return np.where(kind == CERTAIN, weights.argmax(-1), drawn).astype(np.int64)


def _refine_prior(
    backend: _DenoiserBackend,
    encoded: EncodedBatch,
    weights: np.ndarray,
    kind: np.ndarray,
    given: np.ndarray,
    rows: np.ndarray,
    settings: RefineSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    """n_s reverse processes per non-certain row; candidates they predict gain weight."""
    from .prior import refine_weights

    m, _, c = weights.shape
    weights = weights.copy()
    open_rows = np.flatnonzero((kind != CERTAIN).any(axis=0))
    if len(open_rows) == 0:
        return weights
    sub = rows[open_rows]
    n_s, r = settings.refine_samples, len(sub)
    conditioning = np.repeat(encoded.conditioning[:, open_rows].transpose(1, 0, 2), n_s, axis=0)
    y = np.repeat(simplex(given[sub], c, settings.scale), n_s, axis=0)
    noise = rng.standard_normal((settings.schedule.steps, m, r * n_s, c)).astype(np.float32)
    # Drawn step-major as before, handed over rows first: (R, T, M, C) -> logits (R, M, C).
    logits = backend.reverse(noise.transpose(2, 0, 1, 3), conditioning, y).transpose(1, 0, 2)
    predicted = logits.argmax(-1).reshape(m, r, n_s)
    for branch in range(m):
        branch_open = kind[branch, open_rows] != CERTAIN
        idx = open_rows[branch_open]
        for s in range(n_s):
            weights[branch, idx] = refine_weights(
                weights[branch, idx], predicted[branch, branch_open, s], n_s
            )
    return weights


def _holdout_accuracy(
    backend: _DenoiserBackend,
    encoded: EncodedBatch,
    weights: np.ndarray,
    kind: np.ndarray,
    given: np.ndarray,
    keys: list[int],
    holdout: np.ndarray,
    prior_labels: np.ndarray,
    settings: RefineSettings,
    source: str,
    dynamic_prior: bool,
) -> float:
    if len(holdout) == 0:
        return 0.0
    refined = refine_batch(
        backend,
        encoded,
        weights[:, holdout],
        kind[:, holdout],
        given[holdout],
        [keys[i] for i in holdout],
        settings,
        update_prior=dynamic_prior,
        conditional=source == "given",  # as refine_rows: the own-label chains only when used
    )
    dist = refined.distribution(source)
    return float((dist.argmax(1) == prior_labels).mean())


def train_sidyp(
    texts: list[str],
    given: np.ndarray,
    n_classes: int,
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    device: torch.device | None = None,
    work_dir: str | Path | None = None,
    embedder: PretrainedEncoder | None = None,
) -> TrainingResult:
    """Run every training stage on (text, given label) pairs; ``given`` is -1 where refused.

    ``device`` is where the encoder and denoiser train (default the CPU); the trunk's hidden
    states go to a temporary file under ``work_dir`` (default the system's temporary directory)
    that is removed at the end. ``embedder``: a separate sentence-embedding model for the
    neighbour prior (default: the encoder's own pretrained top layers)."""
    config.validate()
    given = np.asarray(given, dtype=np.int64)
    if (given >= 0).sum() < 2:
        raise ValueError("need at least two labelled rows to train")
    device = device or torch.device("cpu")
    run = _Run(device, Precision(device), pretrained.pooling.mode, progress)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    timings: dict[str, float] = {}
    depth = int(pretrained.config.num_hidden_layers)
    trainable = config.resolved_trainable_layers(depth)

    start = time.perf_counter()
    with encoded_trunk(texts, pretrained, config, device, work_dir, progress, embedder) as (
        top, cache, embeddings
    ):
        timings["encode"] = time.perf_counter() - start
        start = time.perf_counter()
        stage_one = _stage_one(cache, top, given, n_classes, config, rng, run)
        timings["stage_one"] = time.perf_counter() - start

        start = time.perf_counter()
        labelled = given >= 0
        scores = [noise_scores(stage_one.own_distances[:, m]) for m in range(config.branches)]
        estimated = config.noise_ratio is None
        ratio = (
            float(np.mean([estimate_noise_ratio(s[labelled]) for s in scores]))
            if estimated
            else float(config.noise_ratio)
        )
        clean = np.stack([~mark_noisy(np.nan_to_num(s), ratio, labelled) for s in scores])
        settings = RefineSettings.from_config(config, n_classes)
        indexes = [NeighborIndex(embeddings[c], given[c]) for c in clean]
        prior = prior_from_neighbors(embeddings, indexes, settings)
        prior_weights, prior_kind = prior.weights, prior.kind
        timings["prior"] = time.perf_counter() - start
        if log:
            log(f"noise ratio {ratio:.3f} ({'estimated' if estimated else 'given'})")

        start = time.perf_counter()
        features = RowFeatures(stage_one.probs, stage_one.dynamics, embeddings)
        keys = [text_key(t) for t in texts]
        denoiser, refined_weights, best_epoch, history2 = _stage_two(
            features, given, keys, prior_weights, prior_kind, n_classes, config, rng, run
        )
        timings["stage_two"] = time.perf_counter() - start
        if config.held_out_folds:
            # Last, so that every earlier stage draws the same random numbers without it.
            start = time.perf_counter()
            features.held_out_probs = out_of_fold_probs(
                cache, top, given, n_classes, config, rng, config.held_out_folds, run
            )
            timings["held_out"] = time.perf_counter() - start

    encoder = SiDyPEncoder(
        pretrained.model, trainable, config.branches, len(stage_one.snapshot_states[0]),
        n_classes, pretrained.pooling.mode,
        embedding=embedding_source(config, pretrained, embedder),
    )
    for m, branch in enumerate(stage_one.branches):
        for s, state in enumerate(stage_one.snapshot_states[m]):
            encoder.snapshots[m][s].load_state_dict(state)
        encoder.heads[m].load_state_dict(branch.head.state_dict())
    return TrainingResult(
        encoder=encoder.cpu().eval(),
        denoiser=denoiser,
        embeddings=embeddings,
        given=given,
        clean=clean,
        centroids=stage_one.centroids.astype(np.float32),
        noise_ratio=ratio,
        noise_ratio_estimated=estimated,
        noise_scores=np.stack(scores),
        features=features,
        prior_weights=refined_weights,
        prior_kind=prior_kind,
        snapshot_epochs=snapshot_epochs(config.classifier_epochs, config.snapshots),
        best_diffusion_epoch=best_epoch,
        timings=timings,
        history=stage_one.history + history2,
    )
