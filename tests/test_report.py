"""The review page: its numbers against the refined file, the bounded issue heap, the exports'
formats, bad input and crashes, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sidyp_prod.cli.main import app
from sidyp_prod.report import build_report, default_report_path

from browser import Browser, chromium_path

runner = CliRunner()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _page_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    start = text.index('id="report-data">') + len('id="report-data">')
    return json.loads(text[start : text.index("</script>", start)])


@pytest.fixture(scope="module")
def page(trained, tmp_path_factory) -> tuple[Path, Path]:
    """(refined file, its page with the bundle and the gold view)."""
    _, refined, _ = trained
    bundle = trained[0]
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(refined, out, model=bundle, gold_field="gold_label")
    return refined, out


def test_summary_equals_the_refined_file(page):
    refined, out = page
    rows = _rows(refined)
    data = _page_data(out)
    s = data["summary"]
    assert s["rows"] == len(rows)
    assert s["unlabeled"] == sum(r["given_label"] is None for r in rows)
    assert s["changed"] == s["issues"] == sum(r["is_label_issue"] for r in rows)
    assert s["classes"] == len(data["labels"]) == 4
    flows = Counter((r["given_label"], r["predicted_label"]) for r in rows)
    labels = data["labels"]
    assert data["flows"] == [[flows[g, p] for p in labels] for g in [*labels, None]]
    for c in data["classes"]:
        given = [r for r in rows if r["given_label"] == c["label"]]
        assert c["given"] == len(given)
        assert c["flagged"] == sum(r["is_label_issue"] for r in given)
        expected = 1 - sum(r["label_score"] for r in given) / len(given)
        assert c["expected_noise"] == pytest.approx(expected)
    assert sum(data["score_hist"]) == len(rows) - s["unlabeled"]
    assert sum(data["confidence_hist"]) == len(rows)
    # The gold view agrees with `evaluate`.
    from sidyp_prod import api

    report = api.evaluate(refined)
    gold = data["gold"]
    assert gold["given_accuracy"] == pytest.approx(report.given_accuracy)
    assert gold["refined_accuracy"] == pytest.approx(report.refined_accuracy)
    assert gold["ece"] == pytest.approx(report.ece)
    assert gold["confusion"] == report.confusion
    assert (gold["fixed"], gold["broken"]) == (report.fixed, report.broken)
    # The model that produced it.
    assert s["model"]["bundle_id"] and s["model"]["settings"]["branches"] == 2


def test_issues_are_ranked_and_explained(page):
    refined, out = page
    issues = _page_data(out)["issues"]
    flagged = [r for r in _rows(refined) if r["is_label_issue"]]
    assert len(issues) == len(flagged)
    scores = [x["label_score"] for x in issues]
    assert scores == sorted(scores)
    for item in issues[:20]:
        assert item["given"] != item["suggested"] and item["candidates"]
        # Neighbours from the training set, with texts (the file is the bundle's own
        # --refined-out), never the row itself.
        assert len(item["neighbours"]) == 5
        assert all(n["text"] and n["row"] != item["row"] for n in item["neighbours"])
        distances = [n["distance"] for n in item["neighbours"]]
        assert distances == sorted(distances)


def test_the_heap_keeps_the_most_likely_wrong(trained, tmp_path):
    refined = trained[1]
    out = tmp_path / "small.html"
    summary = build_report(refined, out, max_rows=7)
    flagged = [(r["label_score"], i) for i, r in enumerate(_rows(refined), 1)
               if r["is_label_issue"]]
    data = _page_data(out)
    assert [x["row"] for x in data["issues"]] == [i for _, i in sorted(flagged)[:7]]
    assert summary.shown == 7 and summary.issues == len(flagged)
    assert data["summary"]["model"] is None
    assert "neighbours" not in data["issues"][0]
    # A page's size does not grow with the file: the heap bounds what is embedded.
    assert summary.bytes < 60_000


def test_exports_follow_the_documented_formats(trained, tmp_path):
    refined = trained[1]
    flagged = [r for r in _rows(refined) if r["is_label_issue"]]
    ls, ag = tmp_path / "tasks.json", tmp_path / "records.jsonl"
    build_report(refined, tmp_path / "r.html", label_studio=ls, argilla=ag)
    tasks = json.loads(ls.read_text())
    assert isinstance(tasks, list) and len(tasks) == len(flagged)
    for task, row in zip(tasks, flagged, strict=True):
        assert set(task) == {"data", "predictions"}
        assert task["data"]["text"] == row["text"] and task["data"]["id"] == row["id"]
        (prediction,) = task["predictions"]
        assert set(prediction) == {"model_version", "score", "result"}
        assert prediction["score"] == row["confidence"]
        (result,) = prediction["result"]
        assert result == {"from_name": "label", "to_name": "text", "type": "choices",
                          "value": {"choices": [row["predicted_label"]]}}
    records = _rows(ag)
    assert len(records) == len(flagged)
    for record, row in zip(records, flagged, strict=True):
        assert set(record) == {"id", "text", "suggested_label", "suggestion_score",
                               "given_label", "label_score", "candidates", "reason"}
        assert record["id"] == str(row["id"]) and record["text"] == row["text"]
        assert record["suggested_label"] == row["predicted_label"]
        assert json.loads(record["candidates"]) == row["candidates"]
    config = _page_data(tmp_path / "r.html")["label_studio_config"]
    assert '<Choices name="label" toName="text"' in config and '<Choice value="music"/>' in config


def test_parquet_and_jsonl_give_the_same_page_data(trained, tmp_path):
    from sidyp_prod.formats import jsonl_to_parquet

    refined = trained[1]
    parquet = tmp_path / "refined.parquet"
    jsonl_to_parquet(refined, parquet)
    build_report(refined, tmp_path / "a.html", gold_field="gold_label")
    build_report(parquet, tmp_path / "b.html", gold_field="gold_label")
    a, b = _page_data(tmp_path / "a.html"), _page_data(tmp_path / "b.html")
    for key in ("flows", "classes", "score_hist", "confidence_hist", "gold", "issues"):
        assert a[key] == b[key], key
    # A gold field no row has (a misspelt name) is an error, not a page without gold views.
    with pytest.raises(ValueError, match="--gold-field gold_lable: no row of"):
        build_report(refined, tmp_path / "c.html", gold_field="gold_lable")
    assert not (tmp_path / "c.html").exists()


def test_a_bad_row_names_file_line_and_field_and_leaves_nothing(trained, tmp_path):
    rows = _rows(trained[1])[:30]
    rows[11]["confidence"] = 1.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, ls = tmp_path / "bad.html", tmp_path / "bad.tasks.json"
    with pytest.raises(ValueError, match=r"bad\.jsonl:12: field 'confidence'"):
        build_report(bad, out, label_studio=ls)
    assert not out.exists() and not ls.exists()
    assert not list(tmp_path.glob("*.partial*"))
    result = runner.invoke(app, ["report", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:12" in result.output


def test_texts_cannot_close_the_script(tmp_path):
    row = {"id": "x", "text": "</script><script>alert(1)</script> <!--", "given_label": "a",
           "predicted_label": "b", "label_score": 0.1, "is_label_issue": True,
           "confidence": 0.9, "candidates": {"b": 1.0}}
    refined = tmp_path / "x.jsonl"
    refined.write_text(json.dumps(row) + "\n")
    out = build_report(refined, tmp_path / "x.html").path
    text = Path(out).read_text()
    assert text.count("</script>") == 2 and "alert(1)" in text
    assert _page_data(Path(out))["issues"][0]["text"] == row["text"]


def test_cli_report_and_refine_report(trained, tmp_path):
    bundle, refined, _ = trained
    result = runner.invoke(app, ["report", str(refined), "--max-rows", "5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["path"] == str(default_report_path(refined)) and summary["shown"] == 5
    default_report_path(refined).unlink()

    corpus = tmp_path / "in.jsonl"
    corpus.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "label": r["label"]})
                              + "\n" for r in _rows(refined)[:60]))
    page = tmp_path / "in.html"
    result = runner.invoke(app, ["refine", str(corpus), "--model", str(bundle), "--out",
                                 str(tmp_path / "out.jsonl"), "--report", str(page), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"review the label issues: {page}" in result.output
    data = _page_data(page)
    assert data["summary"]["rows"] == 60 and data["summary"]["run"]["backend"] == "onnx"


def test_neighbours_of_a_bundle_trained_on_a_sample(tiny_encoder, tmp_path):
    """Past --max-train-rows the reference rows are a sample: a neighbour is found at its own
    place, in the whole corpus's refined file or in the training corpus."""
    from sidyp_prod import api

    from conftest import tiny_config
    from synthetic import make_rows, write_jsonl

    corpus = write_jsonl(tmp_path / "big.jsonl", make_rows(300, seed=7))
    corpus.write_text("not json\n" + corpus.read_text())  # usable rows != file lines
    config = tiny_config(max_train_rows=120, held_out_folds=0, classifier_epochs=3,
                         diffusion_epochs=4)
    refined = tmp_path / "refined.jsonl"
    api.train(corpus, tmp_path / "bundle", config, encoder=str(tiny_encoder),
              refined_out=refined, export=False)
    rows = _rows(refined)
    for train_corpus in (None, corpus):
        page = tmp_path / "page.html"
        build_report(refined, page, model=tmp_path / "bundle", train_corpus=train_corpus)
        data = _page_data(page)
        assert data["summary"]["neighbours"] == "texts"
        shown = [(item, n) for item in data["issues"] for n in item["neighbours"]]
        assert shown and {n["row"] for _, n in shown} - set(range(1, 121))  # past the sample
        for item, n in shown:
            assert n["text"] == rows[n["row"] - 1]["text"]
            assert n["label"] == rows[n["row"] - 1]["given_label"]
            # The refined file is taken for the training corpus: a row is not its own neighbour.
            assert n["row"] != item["row"] or train_corpus is not None
    other = write_jsonl(tmp_path / "other.jsonl", make_rows(300, seed=8))
    with pytest.raises(ValueError, match="must be the corpus the bundle was trained on"):
        build_report(refined, tmp_path / "x.html", model=tmp_path / "bundle",
                     train_corpus=other)


def _chromium() -> str:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render the page: install Debian's chromium (.ci/run does)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return path


def _set(browser: Browser, element: str, value: str) -> None:
    """Set a control's value as a person would, with the event the page listens to."""
    browser.js(f"(() => {{ const e = document.getElementById({element!r}); "
               f"e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input')); }})()")


def test_the_page_in_a_browser(page, tmp_path):
    refined, out = page
    rows = _rows(refined)
    data = _page_data(out)
    artifacts = Path(os.environ.get("SIDYP_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with Browser(_chromium()) as browser:
        browser.open(out)
        assert browser.js("document.body.dataset.ready") == "1"
        number = lambda sel: int(browser.js(  # noqa: E731
            f"document.querySelector({sel!r}).textContent").replace(",", ""))
        assert number("#sum-rows") == len(rows)
        assert number("#sum-classes") == 4
        assert number("#sum-unlabeled") == sum(r["given_label"] is None for r in rows)
        assert number("#sum-changed") == sum(r["is_label_issue"] for r in rows)
        shown = "[...document.querySelectorAll('#issues-table tr.issue')]"
        assert browser.js(f"{shown}.length") == 50  # paged
        assert browser.js("document.getElementById('page-info').textContent").endswith(
            f"of {-(-len(data['issues']) // 50)}")

        # Sorting: by confidence, ascending over all shown issues, then descending.
        browser.js("document.querySelector('th[data-sort=confidence]').click()")
        values = browser.js(f"{shown}.map(r => Number(r.dataset.confidence))")
        assert values == sorted(values) and values[0] == min(x["confidence"]
                                                             for x in data["issues"])
        browser.js("document.querySelector('th[data-sort=confidence]').click()")
        values = browser.js(f"{shown}.map(r => Number(r.dataset.confidence))")
        assert values == sorted(values, reverse=True)

        # Filtering by the given and the suggested class.
        label = data["issues"][0]["given"]
        _set(browser, "filter-given", label)
        want = [x for x in data["issues"] if x["given"] == label]
        assert browser.js(f"{shown}.length") == min(50, len(want))
        assert set(browser.js(f"{shown}.map(r => r.querySelector('.given').textContent)")) == {
            label}
        suggested = want[0]["suggested"]
        _set(browser, "filter-suggested", suggested)
        both = [x for x in want if x["suggested"] == suggested]
        assert browser.js(f"{shown}.length") == min(50, len(both))
        for name in ("filter-given", "filter-suggested"):
            _set(browser, name, "")

        # Search finds a known row (the last-ranked issue: not on the first page).
        known = data["issues"][-1]
        _set(browser, "search", known["text"])
        found = browser.js(f"{shown}.map(r => Number(r.dataset.row))")
        assert known["row"] in found
        assert all(known["text"] in x["text"] for x in data["issues"] if x["row"] in found)
        _set(browser, "search", "")

        # Why: the first issue's candidates and neighbours.
        browser.js("document.querySelector('th[data-sort=rank]').click()")
        browser.js("document.querySelector('#issues-table tr.issue').click()")
        assert browser.js("document.querySelectorAll('tr.why .neighbours li').length") == 5
        assert browser.js("!document.getElementById('gold').hidden")
        browser.screenshot(artifacts / "report.png")

        assert browser.exceptions == []
        assert browser.console == []
        assert browser.requests == [out.absolute().as_uri()]
    assert (artifacts / "report.png").stat().st_size > 10_000
