"""`sidyp-prod refine corpus.jsonl` as written: trains, relabels every row, keeps the bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from sidyp_prod.cli.main import app

from synthetic import make_rows, write_jsonl

FAST = ["--max-train-rows", "100"]
SETTINGS = {"classifier_epochs": 2, "snapshots": 1, "diffusion_epochs": 3,
            "denoiser_width": 16, "max_length": 32, "held_out_folds": 2,
            "max_train_rows": 100}


def _config():
    from conftest import tiny_config

    return tiny_config(**SETTINGS)


def test_the_literal_command_in_an_empty_directory(tiny_encoder, tmp_path, monkeypatch):
    given = make_rows(100, seed=5)
    write_jsonl(tmp_path / "corpus.jsonl", given)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["refine", "corpus.jsonl", "--encoder", str(tiny_encoder),
                                      "--quiet", *FAST])
    assert result.exit_code == 0, result.output
    out = tmp_path / "corpus.refined.jsonl"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in given]
    assert all("predicted_label" in r for r in rows)
    assert (tmp_path / "corpus.sidyp-model" / "manifest.json").is_file()
    assert "model kept in" in result.output and "corpus.sidyp-model" in result.output
    assert not list(tmp_path.glob("*.training.jsonl"))  # the sidecar goes when done
    again = CliRunner().invoke(app, ["refine", "corpus.jsonl", "--encoder", str(tiny_encoder),
                                     "--quiet", *FAST])
    assert again.exit_code == 2 and "--resume" in again.output  # the bundle is not clobbered
    # --resume retrains only over a bundle of the same corpus, never another's.
    write_jsonl(tmp_path / "other.jsonl", make_rows(100, seed=6))
    stamp = (tmp_path / "corpus.sidyp-model" / "manifest.json").stat().st_mtime_ns
    other = CliRunner().invoke(app, ["refine", "other.jsonl", "--save-model",
                                     "corpus.sidyp-model", "--resume", "--encoder",
                                     str(tiny_encoder), "--quiet", *FAST])
    assert other.exit_code == 2 and "not a bundle trained on other.jsonl" in other.output
    assert (tmp_path / "corpus.sidyp-model" / "manifest.json").stat().st_mtime_ns == stamp


def test_same_labels_as_train_refined_out(tiny_encoder, tmp_path):
    from sidyp_prod import api

    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(90, seed=6))
    api.train(corpus, tmp_path / "b", _config(), encoder=str(tiny_encoder),
              refined_out=tmp_path / "train.jsonl", export=False)
    api.refine_corpus(corpus, tmp_path / "one.jsonl", _config(), save_model=tmp_path / "m",
                      encoder=str(tiny_encoder))
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "train.jsonl").read_bytes()


def test_past_the_sample_the_rest_is_refined_as_new(tiny_encoder, tmp_path):
    from sidyp_prod import api

    rows = make_rows(250, seed=8)
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    summary = api.refine_corpus(corpus, None, _config(), encoder=str(tiny_encoder))
    assert summary.trained is not None and summary.trained.rows == 100
    assert summary.refined.refined == 250
    assert "100 trained on, 150 refined as new rows" in summary.to_text()
    out = [json.loads(line) for line in api.default_refined_path(corpus).read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    given = {r["label"] for r in rows if r["label"]}
    sampled = json.loads((tmp_path / "c.sidyp-model" / "manifest.json").read_text())["labels"]
    assert set(sampled) == given  # no class lost to the sample


RUN = """
import sys
sys.path.insert(0, sys.argv[4])
from conftest import tiny_config
from sidyp_prod import api
settings = dict(__import__("json").loads(sys.argv[5]))
api.refine_corpus(sys.argv[1], sys.argv[2], tiny_config(**settings), encoder=sys.argv[3],
                  resume=True, chunk_size=40)
"""


def _run(corpus: Path, out: Path, encoder: Path, kill_when=None) -> int:
    """The one-command refine in a child process; ``kill_when(out)`` true: SIGKILL it there."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    tests = str(Path(__file__).parent)
    process = subprocess.Popen([sys.executable, "-c", RUN, str(corpus), str(out), str(encoder),
                                tests, json.dumps(SETTINGS)], env=env)
    deadline = time.monotonic() + 300
    while process.poll() is None and kill_when is not None and time.monotonic() < deadline:
        if kill_when(out):
            process.kill()
            break
        time.sleep(0.02)
    else:
        assert kill_when is None, "the run finished before it could be killed"
    return process.wait()


def test_resume_after_a_kill_in_training_and_in_refining(tiny_encoder, tmp_path):
    rows = make_rows(1200, seed=9)  # 100 trained on, 1,100 refined in chunks of 40
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    reference = tmp_path / "ref.jsonl"
    assert _run(corpus, reference, tiny_encoder) == 0
    out = tmp_path / "out.jsonl"
    model = tmp_path / "c.sidyp-model"
    import shutil

    shutil.rmtree(model)
    # Killed while training: no bundle is left that looks finished.
    assert _run(corpus, out, tiny_encoder, lambda o: list(tmp_path.glob("sidyp-train-*"))) != 0
    assert not (model / "manifest.json").exists() and not out.exists()
    # Killed after the first refined chunk: the training is reused, the output continues.
    journal = out.with_name(out.name + ".journal.json")
    assert _run(corpus, out, tiny_encoder, lambda o: journal.exists()) != 0
    assert (model / "manifest.json").exists() and not out.exists()
    stamp = (model / "manifest.json").stat().st_mtime_ns
    assert _run(corpus, out, tiny_encoder) == 0
    assert (model / "manifest.json").stat().st_mtime_ns == stamp  # not trained again
    assert out.read_bytes() == reference.read_bytes()
