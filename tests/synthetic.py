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


def vocabulary() -> list[str]:
    words = sorted({w for ws in TOPIC_WORDS.values() for w in ws} | set(FILLER))
    return SPECIAL + words


def make_tiny_encoder(directory: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random BERT with a small WordPiece vocabulary, saved like a Hugging Face checkpoint."""
    import torch
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def make_rows(n: int, noise: float = 0.35, refused: float = 0.03, seed: int = 0) -> list[dict]:
    """Rows with a gold label (the majority topic) and an LLM label that is the minority topic
    on a ``noise`` fraction of rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = CLASSES[i % len(CLASSES)]
        other = CONFUSED_WITH[gold]
        words = rng.sample(TOPIC_WORDS[gold], 5) + rng.sample(TOPIC_WORDS[other], 2)
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
