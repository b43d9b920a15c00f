"""What a new user hits at the edges of the CLI (issue 22): failures that must be loud and early,
refusals that leave nothing behind, and help that says what options take."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from servers import free_ports
from typer.testing import CliRunner

from sidyp_prod.cli.main import app

from synthetic import CLASSES, make_rows, write_jsonl

runner = CliRunner()
FAST = ["--classifier-epochs", "2", "--snapshots", "1", "--diffusion-epochs", "3",
        "--denoiser-width", "16", "--max-length", "32", "--held-out-folds", "0", "--quiet"]


def _refine(corpus: Path, bundle: Path, out: Path, *extra: str):
    return runner.invoke(app, ["refine", str(corpus), "--model", str(bundle), "--out", str(out),
                               "--quiet", *extra])


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()
                  if ".partial" in p.name or p.name.endswith(".journal.json"))


# 1. A run whose output is mostly rejects fails (exit 3) and shows the first reasons.


def test_a_mostly_rejected_refine_exits_3_with_the_first_reasons(trained, tmp_path):
    bundle, _, _ = trained
    corpus = tmp_path / "news.jsonl"  # CSV lines in a JSONL file (a .csv name is read as CSV)
    rows = make_rows(4, seed=3)
    corpus.write_text("id,text,label\n" + "".join(f"{i},words,x\n" for i in range(9))
                      + "".join(json.dumps(r) + "\n" for r in rows))
    result = _refine(corpus, bundle, tmp_path / "o.jsonl")
    assert result.exit_code == 3, result.output
    assert "10 of 14 rows rejected" in result.output
    assert "line 1: invalid JSON" in result.output and "line 2: invalid JSON" in result.output
    # Every row is still accounted for: the output and the rejects are written.
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 4
    assert len((tmp_path / "o.rejects.jsonl").read_text().splitlines()) == 10
    # The threshold is an option.
    result = _refine(corpus, bundle, tmp_path / "o2.jsonl", "--max-reject-fraction", "0.9")
    assert result.exit_code == 0, result.output


def test_labels_of_another_task_exit_3(trained, tmp_path):
    bundle, _, _ = trained
    rows = make_rows(40, seed=5)
    for row in rows:
        row["label"] = None if row["label"] is None else "positive"
    corpus = write_jsonl(tmp_path / "sentiment.jsonl", rows)
    result = _refine(corpus, bundle, tmp_path / "o.jsonl", "--max-reject-fraction", "1")
    assert result.exit_code == 3, result.output
    assert "no label of the corpus is in the bundle's label set" in result.output


# 2. An existing bundle directory is refused before any training.


def test_train_refuses_an_existing_bundle_before_training(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(20))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("{}")
    # A missing encoder would fail the training: the refusal must come before it.
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "m"),
                                 "--encoder", str(tmp_path / "no-encoder"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "already exists" in result.output and "--overwrite" in result.output
    assert "overwrite=True" not in result.output
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "new"),
                                 "--refined-out", str(tmp_path / "nodir" / "r.jsonl"),
                                 "--encoder", str(tmp_path / "no-encoder"), "--quiet"])
    assert result.exit_code == 2 and "does not exist" in result.output


# 3. A misnamed label field says which fields the rows have.


def test_a_misnamed_label_field_names_the_fields_the_rows_have(trained, tmp_path):
    bundle, _, _ = trained
    rows = [{"id": r["id"], "text": r["text"], "llm_label": r["label"]} for r in make_rows(30)]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert '"label" is missing from 30 of 30 rows' in result.output
    assert '"llm_label"' in result.output and "--label-field" in result.output
    result = _refine(corpus, bundle, tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output
    assert '"llm_label"' in result.output and "--label-field" in result.output


# 4. A class too small to train on is never a change target, and says so.


def test_a_one_row_class_is_never_a_change_target(tiny_encoder, tmp_path):
    rows = make_rows(160, seed=6)
    rows[0]["label"] = "rare"
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    result = runner.invoke(app, [
        "train", str(corpus), "--out", str(tmp_path / "m"), "--encoder", str(tiny_encoder),
        "--refined-out", str(tmp_path / "r.jsonl"), "--no-export", "--json", *FAST,
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["small_classes"] == ["rare"]
    assert any("never a change target" in w and '"rare" (1 rows)' in w
               for w in summary["warnings"])
    assert "noise_ratio_at_clip" in summary
    refined = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["id"] for r in refined if r["predicted_label"] == "rare"] in ([], ["row-0"])
    # The rule travels with the bundle: refine of new rows never moves a row to "rare".
    fresh = write_jsonl(tmp_path / "f.jsonl", make_rows(60, seed=7))
    result = runner.invoke(app, ["refine", str(fresh), "--model", str(tmp_path / "m"),
                                 "--backend", "torch", "--out", str(tmp_path / "o.jsonl"),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert not [r for r in out if r["predicted_label"] == "rare"]


def test_an_estimate_at_its_clip_is_reported_as_such():
    from sidyp_prod.api import TrainSummary

    summary = TrainSummary("m", 10, 0, 0, 2, 0.9, True, {}, 0, 1, 1.0, noise_ratio_at_clip=True)
    assert "at a bound of its clip" in summary.to_text()


# 5. A directory as input is refused with exit 2, and refusals leave no partial files.


def test_a_directory_as_corpus_is_refused_without_partial_files(trained, tmp_path):
    bundle, _, _ = trained
    (tmp_path / "adir").mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _refine(tmp_path / "adir", bundle, out_dir / "o.jsonl")
    assert result.exit_code == 2, result.output
    assert "is a directory" in result.output and "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []
    result = runner.invoke(app, ["train", str(tmp_path / "adir"), "--out", str(out_dir / "m"),
                                 "--quiet"])
    assert result.exit_code == 2 and "is a directory" in result.output


def test_a_strict_refusal_leaves_no_partial_files(trained, tmp_path):
    bundle, _, _ = trained
    rows = make_rows(30, seed=2)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"text": 5}\n')
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _refine(corpus, bundle, out_dir / "o.jsonl", "--strict", "--chunk-size", "8")
    assert result.exit_code == 2, result.output
    assert list(out_dir.iterdir()) == []


# 6. Empty or unusable files say what is wrong and leave nothing that looks finished.


def test_an_empty_corpus_is_refused_and_leaves_no_output(trained, tmp_path):
    bundle, _, _ = trained
    (tmp_path / "empty.jsonl").write_text("")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _refine(tmp_path / "empty.jsonl", bundle, out_dir / "o.jsonl")
    assert result.exit_code == 2, result.output
    assert "empty" in result.output and "journal" not in result.output
    assert list(out_dir.iterdir()) == []
    result = runner.invoke(app, ["train", str(tmp_path / "empty.jsonl"), "--out",
                                 str(out_dir / "m"), "--quiet"])
    assert result.exit_code == 2 and "the file is empty" in result.output


def test_train_says_why_a_corpus_has_nothing_to_learn(tmp_path):
    nulls = write_jsonl(tmp_path / "nulls.jsonl", [{"text": "a b", "label": None}] * 5)
    result = runner.invoke(app, ["train", str(nulls), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2 and "null in all 5 usable rows" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{\"text\": 3}\n")
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "m"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "all 2 lines were rejected" in result.output
    assert str(tmp_path / "m.rejects.jsonl") in result.output
    assert (tmp_path / "m.rejects.jsonl").is_file()


# 7. Triton edges: a down server is announced, and --resume with nothing to resume starts over.


def test_a_down_triton_server_is_announced_and_advises_no_resume(trained, tmp_path):
    bundle, _, _ = trained
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(5))
    result = _refine(corpus, bundle, tmp_path / "o.jsonl", "--triton-url",
                     f"grpc://127.0.0.1:{free_ports().grpc}", "--triton-retry-seconds", "1")
    assert result.exit_code == 1, result.output
    assert "retrying for up to 1 s" in result.output
    assert "nothing was written" in result.output and "--resume to continue" not in result.output
    assert _leftovers(tmp_path) == []


def test_resume_with_nothing_to_resume_starts_from_the_beginning(trained, tmp_path):
    bundle, _, _ = trained
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(12))
    # What a kill before the first chunk leaves: a partial file, no journal.
    (tmp_path / "o.jsonl.partial").write_text('{"half": ')
    result = _refine(corpus, bundle, tmp_path / "o.jsonl", "--resume")
    assert result.exit_code == 0, result.output
    assert "nothing to resume" in result.output and "started from the beginning" in result.output
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 12
    assert _leftovers(tmp_path) == []


def test_serve_on_a_port_in_use_names_it_first_and_never_says_serving(tmp_path):
    ports = free_ports()
    (tmp_path / "repo").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.http))
        taken.listen()
        result = runner.invoke(app, [
            "serve", str(tmp_path / "repo"), "--http-port", str(ports.http),
            "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
        ])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors and f"HTTP port {ports.http}" in errors[0] and "in use" in errors[0]
    assert "ready:" not in result.output and "Ctrl-C" not in result.output


# 8. Help shows what options take; integer labels keep their type; one "changed".


def test_help_shows_flags_without_a_value_and_the_choices():
    result = runner.invoke(app, ["refine", "-h"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    assert "<onnx|torch>" in result.output and "<auto|fp32|int8|fp16>" in result.output
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    for panel in ("Input", "Model", "Stage I", "Prior", "Stage II", "Prediction", "Output",
                  "Performance"):
        assert f"─ {panel} ─" in result.output, panel
    assert "<bool>" not in result.output and "<spaced|authors>" in result.output
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert "sidyp-prod[train]" in result.output  # not eaten as markup
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("sidyp-prod ")


def test_integer_labels_keep_their_type(tiny_encoder, tmp_path):
    rows = make_rows(120, seed=8)
    for row in rows:
        if row["label"] is not None:
            row["label"] = CLASSES.index(row["label"]) * 5  # 0, 5, 10, 15: string order differs
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    result = runner.invoke(app, [
        "train", str(corpus), "--out", str(tmp_path / "m"), "--encoder", str(tiny_encoder),
        "--refined-out", str(tmp_path / "r.jsonl"), "--no-export", *FAST,
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["labels"] == [0, 5, 10, 15]
    refined = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert all(isinstance(r["predicted_label"], int) for r in refined)
    assert all(isinstance(r["given_label"], int) for r in refined if r["given_label"] is not None)
    result = runner.invoke(app, ["refine", str(corpus), "--model", str(tmp_path / "m"),
                                 "--backend", "torch", "--out", str(tmp_path / "o.jsonl"),
                                 "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rejected"] == 0
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert all(isinstance(r["predicted_label"], int) for r in out)


def test_refine_and_evaluate_count_changed_labels_the_same_way(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    result = _refine(fresh_corpus, bundle, tmp_path / "o.jsonl", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "o.jsonl"), "--json"])
    report = json.loads(result.output)
    assert report["changed"] == summary["changed"]
    assert report["filled"] == summary["filled"] > 0
    text = runner.invoke(app, ["evaluate", str(tmp_path / "o.jsonl")]).output
    assert "LLM label replaced" in text


# 9. refine's help leads to train --refined-out for the training corpus.


def test_refine_help_points_to_train_refined_out():
    result = runner.invoke(app, ["refine", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert "train --refined-out" in result.output


# 10. serve binds to this machine only unless told otherwise.


def test_serve_binds_to_localhost_by_default(tmp_path):
    from sidyp_prod.triton_server import TritonServer

    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert "--host" in result.output and "127.0.0.1" in result.output
    server = TritonServer(tmp_path, free_ports())
    command = server.command(tmp_path)
    for endpoint in ("http", "grpc", "metrics"):
        assert f"--{endpoint}-address=127.0.0.1" in command
    assert server.http_url.startswith("http://127.0.0.1:")
    assert "--http-address=0.0.0.0" in TritonServer(tmp_path, free_ports(),
                                                    host="0.0.0.0").command(tmp_path)


# 11. Options that cannot apply are refused with exit 2, not run as something else.


def test_options_a_back_end_or_export_cannot_honour_exit_2(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    corpus = fresh_corpus
    result = _refine(corpus, bundle, tmp_path / "o.jsonl", "--backend", "torch",
                     "--precision", "fp16")
    assert result.exit_code == 2 and "torch runs fp32" in result.output
    assert not (tmp_path / "o.jsonl").exists()
    result = runner.invoke(app, ["export", str(bundle), "--out", str(tmp_path / "g"),
                                 "--calibration", str(corpus), "--input-format", "bogus"])
    assert result.exit_code == 2
    assert "--calibration" in result.output and "unknown input format 'bogus'" in result.output
    # Options of another engine, back end or export step are refused, not ignored.
    result = _refine(corpus, bundle, tmp_path / "o.parquet", "--format", "parquet",
                     "--workers", "2")
    assert result.exit_code == 2 and "--workers, --format apply only with --engine ray" in (
        result.output)
    result = _refine(corpus, bundle, tmp_path / "o.jsonl", "--triton-retry-seconds", "5")
    assert result.exit_code == 2 and "only with --triton-url" in result.output
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.parquet").exists()
    result = runner.invoke(app, ["export", str(bundle), "--no-onnx", "--triton-repo",
                                 str(tmp_path / "repo"), "--fp16", "--calibration", str(corpus)])
    assert result.exit_code == 2 and "--fp16/--no-fp16, --calibration apply only when export" in (
        result.output)
    assert not (tmp_path / "repo").exists()


# 12. Outputs never overwrite the corpus or each other, and the rejects file is this run's.


def test_outputs_that_are_the_corpus_or_each_other_are_refused(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(fresh_corpus.read_bytes())
    spelled = tmp_path / "sub" / ".." / "c.jsonl"
    (tmp_path / "sub").mkdir()
    for out, extra, says in [
        (spelled, (), "--out"),
        (tmp_path / "o.jsonl", ("--rejects", str(corpus)), "--rejects"),
        (tmp_path / "o.jsonl", ("--rejects", str(tmp_path / "o.jsonl")), "--rejects"),
    ]:
        result = _refine(corpus, bundle, out, *extra)
        assert result.exit_code == 2, result.output
        assert f"{says} " in result.output and "is the same file as" in result.output
        assert corpus.read_bytes() == fresh_corpus.read_bytes()
    assert not (tmp_path / "o.jsonl").exists() and _leftovers(tmp_path) == []
    result = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "b"),
                                 "--refined-out", str(corpus), *FAST])
    assert result.exit_code == 2 and "is the same file as the corpus" in result.output
    assert not (tmp_path / "b").exists()


def test_a_run_without_rejects_removes_an_earlier_runs_rejects(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    rows = fresh_corpus.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "not a class"}\n' + "".join(rows[:5]))
    assert _refine(bad, bundle, tmp_path / "o.jsonl").exit_code == 0
    assert len((tmp_path / "o.rejects.jsonl").read_text().splitlines()) == 1
    good = tmp_path / "good.jsonl"
    good.write_text("".join(rows[:5]))
    assert _refine(good, bundle, tmp_path / "o.jsonl").exit_code == 0
    # Every input row is in the output or the rejects: an old rejects file would add one.
    assert not (tmp_path / "o.rejects.jsonl").exists()
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 5
