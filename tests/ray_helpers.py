"""What the ``--engine ray`` tests share: a multi-file corpus with bad lines, the single-process
reference output of it, and the reading of a ray output directory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from sidyp_prod import api
from sidyp_prod.engines.ray_engine import MANIFEST

from synthetic import make_rows


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_multi_corpus(root: Path) -> list[Path]:
    """Three files (one gzipped) in ROOT, with bad lines of several kinds: 1,000 lines, 4 bad."""
    first = jsonl(make_rows(500, seed=21)).splitlines(keepends=True)
    first[10] = "{broken\n"
    first[20] = "\n"
    first[30] = '{"text": 5, "label": "music"}\n'
    (root / "a.jsonl").write_text("".join(first))
    second = jsonl(make_rows(300, seed=22)).splitlines(keepends=True)
    second[0] = "\ufeff" + second[0]  # a BOM on the first line is not a reject
    second[5] = '{"text": "song", "label": "not-a-class"}\r\n'
    (root / "b.jsonl").write_text("".join(second).rstrip("\n"))  # no final newline
    with gzip.open(root / "c.jsonl.gz", "wt") as handle:
        handle.write(jsonl(make_rows(200, seed=23)))
    return [root / "a.jsonl", root / "b.jsonl", root / "c.jsonl.gz"]


def single_process(bundle: Path, files: list[Path], out: Path) -> tuple[list[tuple], list]:
    """The reference: the single-process refine of each file, keyed by (file, line)."""
    rows, rejects = [], []
    for i, path in enumerate(files):
        target = out / f"{i}.jsonl"
        api.refine(path, bundle, target, rejects=out / f"{i}.rejects.jsonl")
        lines = target.read_text().splitlines(keepends=True)
        rejected = out / f"{i}.rejects.jsonl"
        bad = [json.loads(r) for r in rejected.read_text().splitlines()] if rejected.exists() \
            else []
        bad_lines = {r["line"] for r in bad}
        good_lines = [n for n in range(1, len(lines) + len(bad) + 1) if n not in bad_lines]
        rows += [(str(path), n, line) for n, line in zip(good_lines, lines, strict=True)]
        rejects += [{"file": str(path), **r} for r in bad]
    return sorted(rows), sorted(rejects, key=lambda r: (r["file"], r["line"]))


def ray_output(directory: Path) -> tuple[dict, list[str], list[dict]]:
    """(manifest, output lines, rejects) of a ray output directory, which must hold exactly the
    files its manifest lists."""
    manifest = json.loads((directory / MANIFEST).read_text())
    rows = [line for shard in manifest["shards"]
            for line in (directory / shard["file"]).read_text().splitlines(keepends=True)]
    rejects = [json.loads(line) for shard in manifest["rejects_shards"]
               for line in (directory / shard["file"]).read_text().splitlines()]
    listed = {s["file"] for s in manifest["shards"] + manifest["rejects_shards"]} | {MANIFEST}
    assert {p.name for p in directory.iterdir()} == listed, "files the manifest does not list"
    return manifest, rows, sorted(rejects, key=lambda r: (r["file"], r["line"]))
