"""Streaming refine: large corpora in small chunks, Parquet, and resuming a killed run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sidyp_prod import api
from sidyp_prod.stream import ResumeError

from synthetic import kill_when_journal_passes, make_rows, write_jsonl


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.dumps(r) for r in make_rows(3000, seed=11)]
    rows[1500] = "{broken"  # a bad row in the middle
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def reference_output(trained, big_corpus, tmp_path_factory) -> Path:
    bundle, _, _ = trained
    out = tmp_path_factory.mktemp("ref") / "out.jsonl"
    summary = api.refine(big_corpus, bundle, out, chunk_size=100)
    assert summary.read == 3000 and summary.refined == 2999 and summary.rejected == 1
    return out


def test_streaming_over_many_chunks_matches_one_chunk(trained, big_corpus, reference_output,
                                                      tmp_path):
    bundle, _, _ = trained
    api.refine(big_corpus, bundle, tmp_path / "one.jsonl", chunk_size=5000)
    assert (tmp_path / "one.jsonl").read_bytes() == reference_output.read_bytes()
    rejects = (tmp_path / "one.rejects.jsonl").read_text().splitlines()
    assert [json.loads(r)["line"] for r in rejects] == [1501]
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.journal.json"))


def test_killed_run_resumes_to_identical_output(trained, big_corpus, reference_output, tmp_path):
    bundle, _, _ = trained
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.journal.json"
    command = [sys.executable, "-m", "sidyp_prod.cli.main", "refine", str(big_corpus),
               "--model", str(bundle), "--out", str(out), "--chunk-size", "100", "--quiet"]
    done = kill_when_journal_passes(command, journal, 600)
    assert not out.exists(), "an unfinished output must not sit at the final path"
    assert 0 < done < 3000

    summary = api.refine(big_corpus, bundle, out, chunk_size=100, resume=True)
    assert summary.read == 3000 and summary.refined == 2999 and summary.rejected == 1
    assert out.read_bytes() == reference_output.read_bytes()
    assert not journal.exists()


def test_resume_refuses_other_settings_and_starts_over_without_a_journal(
    trained, big_corpus, tmp_path
):
    bundle, _, _ = trained
    summary = api.refine(big_corpus, bundle, tmp_path / "fresh.jsonl", resume=True)
    assert any("nothing to resume" in note for note in summary.notes)
    assert summary.refined + summary.rejected == summary.read > 0
    small = write_jsonl(tmp_path / "small.jsonl", make_rows(30))
    with pytest.raises(KeyboardInterrupt):
        _interrupt_after_first_chunk(bundle, small, tmp_path / "o.jsonl")
    assert (tmp_path / "o.jsonl.journal.json").exists()
    with pytest.raises(ResumeError, match=r"other inputs or settings \(chunk_size differ\)"):
        api.refine(small, bundle, tmp_path / "o.jsonl", chunk_size=7, resume=True)
    # The same corpus spelled another way is the same input.
    (tmp_path / "sub").mkdir()
    spelled = tmp_path / "sub" / ".." / "small.jsonl"
    summary = api.refine(spelled, bundle, tmp_path / "o.jsonl", chunk_size=10, resume=True)
    assert summary.refined == 30 and not summary.notes


def test_a_resumed_run_reports_the_problems_of_the_whole_corpus(trained, tmp_path):
    # The first chunk holds the only labels of the bundle's set: a resumed run that tallied only
    # the rows after it would report "no label of the corpus is in the bundle's label set".
    bundle, _, _ = trained
    rows = make_rows(30, seed=4)
    for i, row in enumerate(rows[10:]):
        row["label"] = None if i % 2 else "not a class"
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    whole = api.refine(corpus, bundle, tmp_path / "whole.jsonl", chunk_size=10)
    with pytest.raises(KeyboardInterrupt):
        _interrupt_after_first_chunk(bundle, corpus, tmp_path / "o.jsonl")
    resumed = api.refine(corpus, bundle, tmp_path / "o.jsonl", chunk_size=10, resume=True)
    assert whole.problems == resumed.problems == []
    assert resumed.reject_reasons == whole.reject_reasons and resumed.rejected == 10
    assert (tmp_path / "o.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def _interrupt_after_first_chunk(bundle: Path, corpus: Path, out: Path) -> None:
    """Stop a run in-process right after its first chunk is durable."""
    from sidyp_prod import stream

    original = stream.ResumableOutput.write_chunk

    def write_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    stream.ResumableOutput.write_chunk = write_then_stop
    try:
        api.refine(corpus, bundle, out, chunk_size=10)
    finally:
        stream.ResumableOutput.write_chunk = original


def test_parquet_output(trained, fresh_corpus, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    bundle, _, _ = trained
    api.refine(fresh_corpus, bundle, tmp_path / "out.jsonl")
    api.refine(fresh_corpus, bundle, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in table] == [r["id"] for r in jsonl]
    assert [r["predicted_label"] for r in table] == [r["predicted_label"] for r in jsonl]
