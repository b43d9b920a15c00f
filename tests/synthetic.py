"""Tiny local encoders and synthetic corpora with planted, structured label noise."""

from __future__ import annotations

import json
import random
from pathlib import Path

CLASSES = ["sports", "cooking", "music", "travel"]
TOPIC_WORDS = {
    "sports": "goal match team score coach league player ball stadium referee".split(),
    "cooking": "oven recipe flour sauce bake chef spoon garlic butter pan".split(),
    "music": "guitar song melody drum concert band chord piano singer album".split(),
    "travel": "flight hotel passport beach luggage airport tour map island train".split(),
}
FILLER = "the a of and to in with on for it was very some then".split()
# Every text mixes its own topic with a few words of another; on a ``noise`` fraction of rows the
# "LLM" follows the minority topic: the error follows the text, as real LLM errors do.
CONFUSED_WITH = {"sports": "music", "cooking": "travel", "music": "sports", "travel": "cooking"}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary(seed: int | None = None) -> list[str]:
    """The special tokens, then the corpus's words: sorted, or shuffled by ``seed`` (another
    model's token ids for the same words)."""
    words = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(FILLER))
    if seed is not None:
        random.Random(seed).shuffle(words)
    return SPECIAL + words


# One tiny random config per supported transformers family (sidyp_prod.pretrained).
FAMILIES = ("bert", "roberta", "xlm-roberta", "mpnet", "deberta-v2")


def _family_config(family: str, vocab_size: int, hidden: int, layers: int):
    from transformers import (
        BertConfig,
        DebertaV2Config,
        MPNetConfig,
        RobertaConfig,
        XLMRobertaConfig,
    )

    common = {
        "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 2, "intermediate_size": 2 * hidden, "max_position_embeddings": 80,
        "pad_token_id": 0,
    }
    if family == "bert":
        return BertConfig(**common)
    if family == "roberta":  # positions start after the pad id, and a non-default activation
        return RobertaConfig(**common, hidden_act="gelu_new", bos_token_id=2, eos_token_id=3)
    if family == "xlm-roberta":
        return XLMRobertaConfig(**common, hidden_act="relu", bos_token_id=2, eos_token_id=3)
    if family == "mpnet":
        return MPNetConfig(**common, bos_token_id=2, eos_token_id=3)
    if family == "deberta-v2":  # relative attention, as DeBERTa-v3 checkpoints have it
        return DebertaV2Config(
            **common, relative_attention=True, position_biased_input=False,
            pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=32,
            norm_rel_ebd="layer_norm", type_vocab_size=0,
        )
    raise ValueError(family)


def make_tiny_encoder(
    directory: Path, hidden: int = 32, layers: int = 2, seed: int = 0, family: str = "bert",
    sentence_transformers: bool = False, vocab_seed: int | None = None,
) -> Path:
    """A random encoder of ``family`` with a small WordPiece vocabulary, saved like a Hugging
    Face checkpoint (config, safetensors, fast tokenizer); ``sentence_transformers`` adds a
    CLS-pooling sentence-transformers configuration; ``vocab_seed`` shuffles the vocabulary's
    ids."""
    import torch
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import AutoModel, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(vocab_seed)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    ).save_pretrained(directory)
    torch.manual_seed(seed)
    config = _family_config(family, len(vocab), hidden, layers)
    AutoModel.from_config(config).save_pretrained(directory, safe_serialization=True)
    if sentence_transformers:
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": hidden, "pooling_mode_cls_token": True,
             "pooling_mode_mean_tokens": False}))
        (directory / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"},
        ]))
    return directory


def make_rows(n: int, noise: float = 0.35, refused: float = 0.03, seed: int = 0,
              misleading: float = 0.0) -> list[dict]:
    """Rows with a gold label (the majority topic) and an LLM label that is the minority topic
    on a ``noise`` fraction of rows. A ``misleading`` fraction of rows are a hard task with
    clean labels: their gold label is the minority topic of their words (no text feature tells
    them from the confused class's own rows), and the LLM labels them right."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = CLASSES[i % len(CLASSES)]
        other = CONFUSED_WITH[gold]
        major, minor = gold, other
        if misleading and rng.random() < misleading:
            major, minor = other, gold
        words = rng.sample(TOPIC_WORDS[major], 5) + rng.sample(TOPIC_WORDS[minor], 2)
        words += rng.sample(FILLER, 2)
        rng.shuffle(words)
        label: str | None = other if rng.random() < noise else gold
        if rng.random() < refused:
            label = None
        rows.append({"id": f"row-{i}", "text": " ".join(words), "label": label, "gold_label": gold})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def kill_when_journal_passes(command: list[str], journal: Path, lines: int) -> int:
    """Run ``command`` (a refine) and SIGKILL it once its journal records ``lines`` input rows
    done; the rows done when it died."""
    import os
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and json.loads(journal.read_text())["progress"]["lines"] >= lines:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return json.loads(journal.read_text())["progress"]["lines"]
