"""The CLI parses and hands over: help texts, exit codes, and the three commands end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sidyp_prod.cli.main import app

from synthetic import make_rows, write_jsonl

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "refine", "report", "evaluate"):
        assert command in result.output


def test_train_help_lists_every_hyper_parameter():
    from dataclasses import fields

    from sidyp_prod.config import SiDyPConfig

    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250", "TERM": "dumb"})
    assert result.exit_code == 0
    for f in fields(SiDyPConfig):
        assert "--" + f.name.replace("_", "-") in result.output, f.name


def test_train_refine_evaluate(tiny_encoder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(120, seed=4))
    result = runner.invoke(app, [
        "train", str(corpus), "--out", str(tmp_path / "bundle"), "--encoder", str(tiny_encoder),
        "--classifier-epochs", "2", "--snapshots", "1", "--diffusion-epochs", "2",
        "--denoiser-width", "16", "--max-length", "32", "--quiet", "--json",
        "--refined-out", str(tmp_path / "refined.jsonl"),
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == 120 and summary["classes"] == 4

    result = runner.invoke(app, ["refine", str(corpus), "--model", str(tmp_path / "bundle"),
                                 "--out", str(tmp_path / "out.jsonl"), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    refined = json.loads(result.output)
    assert refined["refined"] == 120
    # Its own training corpus: refined as new rows, and told where better labels come from.
    assert any("trained on" in note and "--refined-out" in note for note in refined["notes"])
    other = write_jsonl(tmp_path / "other.jsonl", make_rows(30, seed=5))
    result = runner.invoke(app, ["refine", str(other), "--model", str(tmp_path / "bundle"),
                                 "--out", str(tmp_path / "other-out.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained on" not in result.output

    result = runner.invoke(app, ["evaluate", str(tmp_path / "out.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.output)["refined_accuracy"] <= 1.0
    result = runner.invoke(app, ["evaluate", str(tmp_path / "out.jsonl"),
                                 "--plot", str(tmp_path / "plots")])
    assert "accuracy" in result.output.lower()
    for name in ("accuracy.png", "reliability.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000

    # Refine to stdout: only JSONL on stdout.
    result = runner.invoke(app, ["refine", str(corpus), "--model", str(tmp_path / "bundle"),
                                 "--out", "-", "--quiet"])
    assert result.exit_code == 0
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 120


def test_preset_gives_the_settings_that_options_do_not(tiny_encoder, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(60, seed=5))
    result = runner.invoke(app, [
        "train", str(corpus), "--out", str(tmp_path / "b"), "--encoder", str(tiny_encoder),
        "--preset", "quality", "--branches", "2", "--classifier-epochs", "1",
        "--diffusion-epochs", "1", "--held-out-folds", "0", "--denoiser-width", "16",
        "--max-length", "32", "--no-export", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "preset quality" in result.output
    config = json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]
    # From the preset: every layer (the tiny encoder has two) at the paper's rate; given
    # explicitly: two branches.
    assert config["trainable_layers"] == 2 and config["classifier_lr"] == 5e-5
    assert config["branches"] == 2 and config["classifier_epochs"] == 1
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "c"),
                                 "--preset", "fast"])
    assert result.exit_code == 2 and "fast" in result.output


def test_strict_bad_input_exits_2_naming_file_line_and_field(trained, tmp_path):
    bundle, _, _ = trained
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": "song", "label": "music"}\n{"text": 5}\n')
    result = runner.invoke(app, ["refine", str(corpus), "--model", str(bundle),
                                 "--out", str(tmp_path / "o.jsonl"), "--strict", "--quiet"])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output and "text" in result.output


def test_a_trusted_label_outside_the_label_set_exits_2_before_training(tiny_encoder, tmp_path):
    rows = make_rows(40, seed=5)
    rows[2]["human_label"] = "weather"
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "bundle"),
                                 "--encoder", str(tiny_encoder), "--trusted-field",
                                 "human_label", "--quiet"])
    assert result.exit_code == 2
    assert "c.jsonl, line 3: field 'human_label' is 'weather'" in result.output
    assert not (tmp_path / "bundle").exists()
    # refine without --model trains first: the same check, before any training.
    result = runner.invoke(app, ["refine", str(corpus), "--encoder", str(tiny_encoder),
                                 "--trusted-field", "human_label", "--quiet"])
    assert result.exit_code == 2
    assert "c.jsonl, line 3: field 'human_label' is 'weather'" in result.output
    # With a bundle nothing is trained: training options are refused, on either engine.
    for engine in ("local", "ray"):
        result = runner.invoke(app, ["refine", str(corpus), "--model", str(tmp_path),
                                     "--trusted-field", "human_label", "--seed", "3",
                                     "--engine", engine, "--quiet"])
        assert result.exit_code == 2
        assert "--trusted-field, --seed apply only when refine trains a bundle" in result.output
    # stdin has no name to put the output beside.
    result = runner.invoke(app, ["refine", "-", "--model", str(tmp_path)], input="")
    assert result.exit_code == 2 and "give --out" in result.output


def test_missing_bundle_exits_2(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(3))
    result = runner.invoke(app, ["refine", str(corpus), "--model", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "o.jsonl"), "--quiet"])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_evaluate_without_gold_exits_2(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"given_label": "a", "predicted_label": "a", "confidence": 1.0}))
    result = runner.invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 2
    assert "gold" in result.output


def test_invalid_hyper_parameter_exits_2(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(10))
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "b"),
                                 "--snapshots", "99", "--quiet"])
    assert result.exit_code == 2
    assert "snapshots" in result.output


def test_evaluate_of_a_file_that_is_not_jsonl_exits_2_naming_it(tmp_path):
    path = tmp_path / "refined.parquet.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\xd8\xff")
    result = runner.invoke(app, ["evaluate", str(path)])
    assert result.exit_code == 2
    assert "refined.parquet.gz: not a readable Parquet file" in result.output
