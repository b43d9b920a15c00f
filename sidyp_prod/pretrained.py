"""Loading a pretrained encoder through transformers (``AutoConfig``/``AutoModel``/
``AutoTokenizer``) from a local directory or the local Hugging Face cache; never a download.

Training only: the refine path reads the bundle's own ``tokenizer.json`` with ``tokenizers`` and
never imports this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .encoder import DEFAULT_ENCODER, default_encoder_dir

# Families whose encoder is ``model.embeddings`` + ``model.encoder.layer`` (sidyp_prod.transformer).
SUPPORTED_FAMILIES = ("bert", "roberta", "xlm-roberta", "mpnet", "deberta-v2")


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence vector, from the checkpoint's sentence-transformers
    ``modules.json`` / ``1_Pooling/config.json`` (mean pooling when it ships none)."""

    mode: str = "mean"  # "mean", "cls" or "max"
    normalize: bool = False  # the checkpoint's own Normalize module (the kNN always normalises)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_pooling(directory: Path) -> Pooling:
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    modules = json.loads(modules_file.read_text())
    mode, normalize = "mean", False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            settings = json.loads((directory / module["path"] / "config.json").read_text())
            if settings.get("pooling_mode_cls_token"):
                mode = "cls"
            elif settings.get("pooling_mode_max_tokens"):
                mode = "max"
            elif settings.get("pooling_mode_mean_tokens", True):
                mode = "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    return Pooling(mode, normalize)


@dataclass
class PretrainedEncoder:
    """A checkpoint as training needs it: the transformers model, its fast tokenizer's
    ``tokenizers`` object (what the bundle stores), its pad token and pooling."""

    name: str
    directory: Path
    model: Any  # transformers.PreTrainedModel
    tokenizer: Tokenizer
    pad_token: str
    pad_id: int
    pooling: Pooling

    @property
    def family(self) -> str:
        return str(self.model.config.model_type)

    @property
    def config(self) -> Any:
        return self.model.config


def resolve_encoder(name_or_dir: str | None) -> tuple[str, str]:
    """(name, what to hand to ``from_pretrained``): the packaged default, a local directory, or
    a model id already in the local Hugging Face cache."""
    if name_or_dir in (None, "", DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        return DEFAULT_ENCODER, str(default_encoder_dir())
    path = Path(name_or_dir)  # type: ignore[arg-type]
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"encoder {name_or_dir!r}: a directory without config.json; expected a Hugging Face "
            "checkpoint (config.json, model.safetensors, tokenizer files)"
        )
    return str(name_or_dir), str(name_or_dir)


def load_pretrained(name_or_dir: str | None, attn_implementation: str | None = None,
                    role: str = "encoder") -> PretrainedEncoder:
    """Load the encoder named by ``--encoder`` (``local_files_only``: never downloads);
    ``role`` names it in errors ("embedding model" for ``--embedding-model``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The CLI prints its own progress and summary (which --json keeps parseable).
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    name, source = resolve_encoder(name_or_dir)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as error:
        raise FileNotFoundError(
            f"{role} {name!r}: not a local directory and not in the local Hugging Face cache "
            f"(models are never downloaded): {error}"
        ) from None
    if config.model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"{role} {name!r}: model_type {config.model_type!r} is not supported; "
            f"supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModel.from_pretrained(
            source, local_files_only=True, use_safetensors=True, **options
        )
    except OSError as error:
        raise FileNotFoundError(
            f"{role} {name!r}: no safetensors weights (pickled weights are never loaded): {error}"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{role} {name!r}: needs a fast tokenizer (tokenizer.json)")
    if tokenizer.pad_token is None:
        raise ValueError(f"{role} {name!r}: its tokenizer has no pad token")
    if Path(source).is_dir():
        directory = Path(source)
    else:  # a cached model id: its snapshot directory holds the pooling files
        from transformers.utils import cached_file

        directory = Path(cached_file(source, "config.json", local_files_only=True)).parent
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return PretrainedEncoder(
        name, directory, model.eval(), backend, str(tokenizer.pad_token),
        int(tokenizer.pad_token_id), read_pooling(directory),
    )
