"""PyTorch modules: a BERT encoder split into a frozen trunk and per-branch top layers, and the
label denoiser. Written out explicitly (not through transformers' BertModel) so that weights load
from any BERT checkpoint and the graphs export to ONNX without version-specific attention code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertShape:
    """The parts of a BERT config the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str = "gelu"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertShape:
        if config.get("model_type", "bert") != "bert":
            raise ValueError(f"only BERT-family encoders are supported, got {config['model_type']}")
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            max_position_embeddings=config["max_position_embeddings"],
            type_vocab_size=config.get("type_vocab_size", 2),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
            hidden_act=config.get("hidden_act", "gelu"),
        )


class BertEmbeddings(nn.Module):
    def __init__(self, shape: BertShape):
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.position_embeddings = nn.Embedding(shape.max_position_embeddings, shape.hidden_size)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab_size, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        # Single-segment input: token type 0 everywhere.
        h = h + self.token_type_embeddings.weight[0]
        return self.LayerNorm(h)


class BertLayer(nn.Module):
    """One post-LayerNorm BERT block; parameter names follow the Hugging Face checkpoints."""

    def __init__(self, shape: BertShape, dropout: float = 0.0):
        super().__init__()
        h = shape.hidden_size
        self.heads = shape.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attention_out = nn.Linear(h, h)
        self.attention_norm = nn.LayerNorm(h, eps=shape.layer_norm_eps)
        self.intermediate = nn.Linear(h, shape.intermediate_size)
        self.output = nn.Linear(shape.intermediate_size, h)
        self.output_norm = nn.LayerNorm(h, eps=shape.layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        head_dim = d // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + additive_mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        h = self.attention_norm(h + self.dropout(self.attention_out(context)))
        inner = F.gelu(self.intermediate(h))
        return self.output_norm(h + self.dropout(self.output(inner)))

    HF_NAMES: ClassVar[dict[str, str]] = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_norm": "output.LayerNorm",
    }


def additive_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, N) 0/1 mask -> (B, 1, 1, N) additive mask for the attention scores."""
    return (1.0 - attention_mask[:, None, None, :].float()) * -1e4


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask[..., None].to(h.dtype)
    return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class LayerStack(nn.Module):
    def __init__(self, shape: BertShape, n_layers: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(shape, dropout) for _ in range(n_layers))

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, additive_mask)
        return h


class Trunk(nn.Module):
    """Embeddings plus the frozen lower layers shared by every branch and snapshot."""

    def __init__(self, shape: BertShape, n_layers: int):
        super().__init__()
        self.embeddings = BertEmbeddings(shape)
        self.stack = LayerStack(shape, n_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.stack(self.embeddings(input_ids), additive_attention_mask(attention_mask))


def load_bert_weights(trunk: Trunk, top: LayerStack, state: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face BERT state dict into a trunk and the pretrained top layers."""
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    emb = {
        k.removeprefix("embeddings."): v
        for k, v in state.items()
        if k.startswith("embeddings.") and "position_ids" not in k
    }
    trunk.embeddings.load_state_dict(emb)
    layers = [*trunk.stack.layers, *top.layers]
    for i, layer in enumerate(layers):
        layer_state = {}
        for ours, theirs in BertLayer.HF_NAMES.items():
            for p in ("weight", "bias"):
                layer_state[f"{ours}.{p}"] = state[f"encoder.layer.{i}.{theirs}.{p}"]
        layer.load_state_dict(layer_state)


class SiDyPEncoder(nn.Module):
    """Everything the refinement needs from the text, in one pass over the shared trunk.

    Outputs: the branches' classifier probabilities (M, B, C), the training-dynamics features
    (M, B, S*H: one pooled vector per recorded snapshot of each branch) and the normalised
    sentence embedding (B, H) from the untouched pretrained top layers, for neighbour search.
    """

    def __init__(
        self,
        shape: BertShape,
        trainable_layers: int,
        branches: int,
        snapshots: int,
        n_classes: int,
    ):
        super().__init__()
        self.shape = shape
        trunk_layers = shape.num_hidden_layers - trainable_layers
        if trunk_layers < 0:
            raise ValueError("trainable_layers exceeds the encoder's depth")
        self.trunk = Trunk(shape, trunk_layers)
        self.sentence_top = LayerStack(shape, trainable_layers)
        self.snapshots = nn.ModuleList(
            nn.ModuleList(LayerStack(shape, trainable_layers) for _ in range(snapshots))
            for _ in range(branches)
        )
        self.heads = nn.ModuleList(nn.Linear(shape.hidden_size, n_classes) for _ in range(branches))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.trunk(input_ids, attention_mask)
        mask = additive_attention_mask(attention_mask)
        sentence = mean_pool(self.sentence_top(hidden, mask), attention_mask)
        embedding = F.normalize(sentence, dim=-1)
        probs, dynamics = [], []
        for branch, head in zip(self.snapshots, self.heads, strict=True):
            pooled = [mean_pool(stack(hidden, mask), attention_mask) for stack in branch]
            dynamics.append(torch.cat(pooled, dim=-1))
            probs.append(head(pooled[-1]).softmax(-1))  # the last snapshot is the final epoch
        return torch.stack(probs), torch.stack(dynamics), embedding


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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs, dynamics, embedding = self.encoder(input_ids, attention_mask)
        conditioning = self.denoiser.condition(dynamics)
        return probs.transpose(0, 1), conditioning.transpose(0, 1), embedding


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
