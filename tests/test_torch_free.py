"""The inference side runs without torch and transformers: refine with a trained bundle, the
Triton repository writing, serve (its python-backend models), the Ray actors, evaluate and
report, with an import guard (tests/torch_blocked/sitecustomize.py) in every process they start.
What needs the training extra says so and exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidyp_prod import api

BLOCKER = Path(__file__).parent / "torch_blocked"
CLI = str(Path(sys.executable).parent / "sidyp-prod")


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BLOCKER), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_the_guard_blocks_torch():
    result = subprocess.run([sys.executable, "-c", "import transformers"], env=_env(),
                            capture_output=True, text=True)
    assert result.returncode != 0 and "blocked" in result.stderr
    imports = subprocess.run(
        [sys.executable, "-c", "import sys, sidyp_prod.api, sidyp_prod.cli.main, "
         "sidyp_prod.export.triton, sidyp_prod.report; print(sorted(m for m in sys.modules "
         "if m.split('.')[0] in ('torch', 'transformers')))"],
        env=_env(), capture_output=True, text=True)
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.strip() == "[]"


def test_refine_evaluate_report_without_torch(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    reference = tmp_path / "in-process.jsonl"
    api.refine(fresh_corpus, bundle, reference)  # this process has torch
    out = tmp_path / "refined.jsonl"
    refined = _run("refine", str(fresh_corpus), "--model", str(bundle), "--out", str(out),
                   "--quiet")
    assert refined.returncode == 0, refined.stderr
    assert out.read_bytes() == reference.read_bytes()
    evaluated = _run("evaluate", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n_rows"] > 0
    page = tmp_path / "review.html"
    reported = _run("report", str(out), "--model", str(bundle), "--out", str(page))
    assert reported.returncode == 0, reported.stderr
    assert page.stat().st_size > 0


def test_what_needs_the_training_extra_says_so(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    for args in (["refine", str(fresh_corpus), "--out", str(tmp_path / "a.jsonl")],
                 ["refine", str(fresh_corpus), "--model", str(bundle), "--backend", "torch",
                  "--out", str(tmp_path / "b.jsonl")],
                 ["train", str(fresh_corpus), "--out", str(tmp_path / "model")],
                 ["export", str(bundle), "--out", str(tmp_path / "graphs")]):
        result = _run(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "pip install 'sidyp-prod[train]'" in result.stdout + result.stderr, args


def test_triton_repository_and_server_without_torch(trained, fresh_corpus, tmp_path):
    pytest.importorskip("pytriton")
    pytest.importorskip("tritonclient.grpc")
    from servers import free_ports

    bundle, _, _ = trained
    repository = tmp_path / "triton_models"
    written = _run("export", str(bundle), "--no-onnx", "--triton-repo", str(repository))
    assert written.returncode == 0, written.stderr
    reference = tmp_path / "in-process.jsonl"
    api.refine(fresh_corpus, bundle, reference, chunk_size=128)
    ports = free_ports()
    server = subprocess.Popen(
        [CLI, "serve", str(repository), "--http-port", str(ports.http), "--grpc-port",
         str(ports.grpc), "--metrics-port", str(ports.metrics)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:  # type: ignore[union-attr]
            if "grpc://" in line or "error" in line.lower():
                break
        assert server.poll() is None, "serve exited: the python-backend models need torch?"
        out = tmp_path / "remote.jsonl"
        refined = _run("refine", str(fresh_corpus), "--model", str(bundle), "--out", str(out),
                       "--chunk-size", "128", "--triton-url", f"grpc://127.0.0.1:{ports.grpc}")
        assert refined.returncode == 0, refined.stderr
        assert out.read_bytes() == reference.read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_ray_actors_without_torch(trained, fresh_corpus, tmp_path):
    pytest.importorskip("ray")
    bundle, _, _ = trained
    out = tmp_path / "ray-out"
    result = _run("refine", str(fresh_corpus), "--model", str(bundle), "--out", str(out),
                  "--engine", "ray", "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    reference = tmp_path / "in-process.jsonl"
    api.refine(fresh_corpus, bundle, reference)
    rows = [line for shard in sorted(out.glob("part-*.jsonl"))
            for line in shard.read_text().splitlines(keepends=True)]
    assert "".join(rows) == reference.read_text()
