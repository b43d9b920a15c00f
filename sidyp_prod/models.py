"""PyTorch modules: the SiDyP encoder (a transformers encoder split into a frozen trunk and
per-branch top layers, sidyp_prod.transformer) and the label denoiser."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import EncoderSlice, Trunk, pool, sentence_embedding


class SiDyPEncoder(nn.Module):
    """Everything the refinement needs from the text, in one pass over the shared trunk.

    Outputs: the branches' classifier probabilities (M, B, C), the training-dynamics features
    (M, B, S*H: one pooled vector per recorded snapshot of each branch) and the normalised
    sentence embedding (B, H) for neighbour search: ``embedding`` 'trunk' pools the frozen
    trunk's states, 'top' runs the untouched pretrained top layers over them (one more layer
    pass per row), 'separate' outputs none (a SentenceEmbedder gives it). ``model`` is a
    transformers encoder (pretrained, or built from a bundle's config and then loaded from its
    state dict); ``pooling`` is the checkpoint's pooling mode.
    """

    def __init__(
        self,
        model: Any,
        trainable_layers: int,
        branches: int,
        snapshots: int,
        n_classes: int,
        pooling: str = "mean",
        embedding: str = "top",
    ):
        super().__init__()
        depth = int(model.config.num_hidden_layers)
        if not 1 <= trainable_layers <= depth:
            raise ValueError(f"trainable_layers must be between 1 and the encoder's depth {depth}")
        if embedding not in ("trunk", "top", "separate"):
            raise ValueError(f"embedding must be 'trunk', 'top' or 'separate', not {embedding!r}")
        if embedding == "trunk" and trainable_layers == depth:
            raise ValueError("a 'trunk' embedding needs frozen layers: every layer is trained")
        self.pooling = pooling
        self.embedding = embedding
        self.trunk = Trunk(model, depth - trainable_layers)
        self.sentence_top = (
            EncoderSlice(model, depth - trainable_layers, depth, share=True)
            if embedding == "top" else None
        )
        self.snapshots = nn.ModuleList(
            nn.ModuleList(
                EncoderSlice(model, depth - trainable_layers, depth) for _ in range(snapshots)
            )
            for _ in range(branches)
        )
        hidden = int(model.config.hidden_size)
        self.heads = nn.ModuleList(nn.Linear(hidden, n_classes) for _ in range(branches))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """(probs, dynamics, embedding), or (probs, dynamics) with a separate embedding."""
        hidden = self.trunk(input_ids, attention_mask)
        probs, dynamics = [], []
        for branch, head in zip(self.snapshots, self.heads, strict=True):
            pooled = [pool(stack(hidden, attention_mask), attention_mask, self.pooling)
                      for stack in branch]
            dynamics.append(torch.cat(pooled, dim=-1))
            probs.append(head(pooled[-1]).softmax(-1))  # the last snapshot is the final epoch
        if self.embedding == "separate":
            return torch.stack(probs), torch.stack(dynamics)
        top = hidden if self.sentence_top is None else self.sentence_top(hidden, attention_mask)
        embedding = sentence_embedding(top, attention_mask, self.pooling)
        return torch.stack(probs), torch.stack(dynamics), embedding


class SentenceEmbedder(nn.Module):
    """A separate sentence-embedding model for the neighbour prior (``--embedding-model``): the
    whole pretrained transformers encoder, pooled as its checkpoint says, L2-normalised."""

    def __init__(self, model: Any, pooling: str = "mean"):
        super().__init__()
        self.family = str(model.config.model_type)
        self.embeddings = model.embeddings
        self.layers = EncoderSlice(model, 0, int(model.config.num_hidden_layers), share=True)
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = Trunk.embed(self.embeddings, self.family, input_ids, attention_mask)
        return sentence_embedding(self.layers(hidden, attention_mask), attention_mask,
                                  self.pooling)


class TimestepLinear(nn.Module):
    """Linear layer whose output is scaled elementwise by a learned per-timestep vector."""

    def __init__(self, n_in: int, n_out: int, timesteps: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.scale = nn.Embedding(timesteps, n_out)
        nn.init.uniform_(self.scale.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale(t)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x). Exported as relu(x) + log(1 + e^-|x|): ONNX Runtime's Softplus kernel is
    scalar and took two thirds of the reverse process's time on CPU; Exp and Log are vectorised."""
    if torch.onnx.is_in_onnx_export():
        return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))
    return F.softplus(x)


class Denoiser(nn.Module):
    """f(x_t, t, w, y_given) -> logits over the classes (the authors' conditional MLP).

    w (the training dynamics) is batch-normalised and projected to ``width`` first: the authors'
    network is as wide as w itself, which is large (snapshots x hidden).
    """

    def __init__(self, n_classes: int, feature_dim: int, width: int, timesteps: int):
        super().__init__()
        self.feature_norm = nn.BatchNorm1d(feature_dim)
        self.feature_proj = nn.Linear(feature_dim, width)
        self.layer1 = TimestepLinear(2 * n_classes, width, timesteps)
        self.norm1 = nn.BatchNorm1d(width)
        self.layer2 = TimestepLinear(width, width, timesteps)
        self.norm2 = nn.BatchNorm1d(width)
        self.layer3 = TimestepLinear(width, width, timesteps)
        self.norm3 = nn.BatchNorm1d(width)
        self.out = nn.Linear(width, n_classes)

    def condition(self, w: torch.Tensor) -> torch.Tensor:
        """The part that depends on the row only: computed once, not at every step."""
        return self.feature_proj(self.feature_norm(w))

    def step(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, y_given: torch.Tensor
    ) -> torch.Tensor:
        h = softplus(self.norm1(self.layer1(torch.cat([x_t, y_given], dim=-1), t))) * cond
        h = softplus(self.norm2(self.layer2(h, t)))
        h = softplus(self.norm3(self.layer3(h, t)))
        return self.out(h)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, w: torch.Tensor, y_given: torch.Tensor
    ) -> torch.Tensor:
        return self.step(x_t, t, self.condition(w), y_given)


class DenoiserEnsemble(nn.Module):
    """One denoiser per branch, called together: (M, R, C) in, (M, R, C) out."""

    def __init__(self, branches: int, n_classes: int, feature_dim: int, width: int, timesteps: int):
        super().__init__()
        self.members = nn.ModuleList(
            Denoiser(n_classes, feature_dim, width, timesteps) for _ in range(branches)
        )

    def condition(self, w: torch.Tensor) -> torch.Tensor:
        """(M, R, F) training dynamics -> (M, R, width) conditioning."""
        return torch.stack([m.condition(w[i]) for i, m in enumerate(self.members)])

    def step(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, y_given: torch.Tensor
    ) -> torch.Tensor:
        return torch.stack(
            [m.step(x_t[i], t, cond[i], y_given) for i, m in enumerate(self.members)]
        )

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, w: torch.Tensor, y_given: torch.Tensor
    ) -> torch.Tensor:
        return self.step(x_t, t, self.condition(w), y_given)


class InferenceEncoder(nn.Module):
    """The text side of inference, batch first (the layout Triton's batcher needs): probs
    (B, M, C), conditioning (B, M, W), embedding (B, H). The denoiser's projection of the
    training dynamics is fused in, so it runs once per row rather than once per step."""

    def __init__(self, encoder: SiDyPEncoder, denoiser: DenoiserEnsemble):
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        probs, dynamics, *embedding = self.encoder(input_ids, attention_mask)
        conditioning = self.denoiser.condition(dynamics)
        return (probs.transpose(0, 1), conditioning.transpose(0, 1), *embedding)


class ReverseProcess(nn.Module):
    """The whole reverse process of every branch's denoiser for R chains, in one call.

    noise (R, T, M, C) standard normal draws (noise[:, 0] starts each chain, noise[:, j] re-noises
    before step j), conditioning (R, M, W), y_given (R, C) -> the last step's logits (R, M, C).
    The schedule is fixed at construction, so an exported graph needs one call per batch instead
    of one per step. Same arithmetic as :func:`sidyp_prod.diffusion.reverse_process`.
    """

    def __init__(
        self, denoiser: DenoiserEnsemble, timesteps: Any, alpha_bar: Any, scale: float
    ):
        super().__init__()
        self.denoiser = denoiser
        self.timesteps = [int(t) for t in timesteps]
        self.alpha_bar = [float(a) for a in alpha_bar]
        self.scale = float(scale)

    def forward(
        self, noise: torch.Tensor, conditioning: torch.Tensor, y_given: torch.Tensor
    ) -> torch.Tensor:
        noise = noise.permute(1, 2, 0, 3)  # (T, M, R, C): steps outermost, branches batched
        cond = conditioning.transpose(0, 1)
        n_classes, scale = noise.shape[-1], self.scale
        x = scale * noise[0]
        row = torch.zeros_like(y_given[:, 0], dtype=torch.long)
        logits = x
        for j, i in enumerate(range(len(self.timesteps) - 1, -1, -1)):
            logits = self.denoiser.step(x, row + self.timesteps[i], cond, y_given)
            if i == 0:
                break
            x0 = F.one_hot(logits.argmax(-1), n_classes).to(x.dtype) * (2 * scale) - scale
            ab = self.alpha_bar[i - 1]
            x = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * scale * noise[j + 1]
        return logits.transpose(0, 1)


class EMA:
    """Exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for s, p in zip(
            self.shadow.state_dict().values(), module.state_dict().values(), strict=True
        ):
            if s.dtype.is_floating_point:
                s.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)
            else:
                s.copy_(p)
