"""A transformers encoder split into a frozen trunk (embeddings and lower layers) and slices of
top layers that each branch and snapshot fine-tunes a copy of.

The layers, embeddings and the family's shared position parts (MPNet's relative attention bias,
DeBERTa-v2's relative embeddings) are the transformers modules themselves; a slice runs the
family's own encoder loop over its layers, so activations, positions and attention follow the
checkpoint (``hidden_act``, absolute or relative positions, SDPA where the family has it).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Families whose encoder takes the raw (B, N) mask and builds its own attention mask.
RAW_MASK_FAMILIES = ("deberta-v2",)
# Additive mask value: exp(-1e4) is 0 in every float type, and it does not overflow fp16.
MASKED = -1e4


def attention_mask_for(family: str, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (B, N) 0/1 mask in the form the family's encoder layers take."""
    if family in RAW_MASK_FAMILIES:
        return mask
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASKED


def pool(h: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Token states (B, N, H) -> sentence vectors (B, H), padding ignored."""
    if mode == "cls":
        return h[:, 0]
    m = mask[..., None].to(h.dtype)
    if mode == "max":
        return (h + (m - 1.0) * 1e4).max(1).values
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class EncoderSlice(nn.Module):
    """Layers ``start:stop`` of a pretrained encoder, run by the family's own encoder module.

    ``share=True`` uses the pretrained layer modules themselves (frozen parts); otherwise the
    slice owns deep copies (a branch or snapshot that trains)."""

    def __init__(self, model: Any, start: int, stop: int, share: bool = False):
        super().__init__()
        config = copy.deepcopy(model.config)
        config.num_hidden_layers = stop - start
        self.family = str(config.model_type)
        self.hidden_size = int(config.hidden_size)
        with torch.device("meta"):  # the layers built here are replaced at once
            encoder = type(model.encoder)(config)
        layers = list(model.encoder.layer[start:stop])
        encoder.layer = nn.ModuleList(layers if share else copy.deepcopy(layers))
        for name, child in model.encoder.named_children():
            if name != "layer":  # shared position parts: relative bias / embeddings
                setattr(encoder, name, child if share else copy.deepcopy(child))
        if getattr(encoder, "conv", None) is not None and start > 0:
            encoder.conv = None  # DeBERTa-v2's convolution follows the first layer only
        self.encoder = encoder

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if len(self.encoder.layer) == 0:
            return hidden
        attention = attention_mask_for(self.family, mask, hidden.dtype)
        if self.family in RAW_MASK_FAMILIES:
            out = self.encoder(hidden, attention, output_hidden_states=False)
        else:
            out = self.encoder(hidden, attention_mask=attention)
        return out[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The layers' parameters: the shared position parts stay as pretrained."""
        return list(self.encoder.layer.parameters())


class Trunk(nn.Module):
    """Embeddings plus the frozen lower layers shared by every branch and snapshot."""

    def __init__(self, model: Any, n_layers: int):
        super().__init__()
        self.family = str(model.config.model_type)
        self.embeddings = model.embeddings
        self.lower = EncoderSlice(model, 0, n_layers, share=True)

    @staticmethod
    def embed(embeddings: nn.Module, family: str, input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> torch.Tensor:
        """The family's embedding layer over token ids."""
        if family in RAW_MASK_FAMILIES:
            return embeddings(input_ids=input_ids, mask=attention_mask)
        return embeddings(input_ids=input_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.embeddings, self.family, input_ids, attention_mask)
        return self.lower(h, attention_mask)


def set_dropout(module: nn.Module, p: float) -> None:
    """Every dropout of a fine-tuned slice at the configured rate (the checkpoint's may differ)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = p


def sentence_embedding(h: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The neighbour search's vector: pooled and L2-normalised (L2 distances of unit vectors)."""
    return F.normalize(pool(h, mask, mode), dim=-1)
