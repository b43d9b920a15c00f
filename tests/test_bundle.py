"""Tests for sidyp_prod.bundle: round trip, atomic writes and refusal of damaged bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidyp_prod.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    Bundle,
    BundleError,
    file_digest,
    load_bundle,
    save_bundle,
    sha256_file,
)


def _arrays() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "encoder.safetensors": {
            "w": rng.standard_normal((4, 3)).astype(np.float32),
            # A non-contiguous view: must be made contiguous on save.
            "wt": rng.standard_normal((3, 5)).astype(np.float32).T,
            "ids": np.arange(7, dtype=np.int64),
        },
        "heads/head.safetensors": {"mask": np.array([True, False, True])},
    }


def _save(directory: Path, tmp_path: Path, **kwargs: object) -> Path:
    src = tmp_path / "src_vocab.txt"
    src.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    return save_bundle(
        directory,
        {"name": "demo", "labels": ["a", "b"], "config": {"k": 10}},
        _arrays(),
        files={
            "tokenizer/vocab.txt": src,
            "tokenizer/config.json": json.dumps({"lower": True}).encode(),
            "meta.json": b'{"x": 1}',
        },
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return _save(tmp_path / "model", tmp_path)


def test_round_trip(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle, Bundle)
    assert bundle.directory == bundle_dir
    expected = _arrays()
    for fname, tensors in expected.items():
        loaded = bundle.arrays(fname)
        assert set(loaded) == set(tensors)
        for key, value in tensors.items():
            assert loaded[key].dtype == value.dtype
            assert loaded[key].shape == value.shape
            np.testing.assert_array_equal(loaded[key], value)
    assert bundle.arrays("encoder.safetensors") is bundle.arrays("encoder.safetensors")
    assert bundle.path("tokenizer/vocab.txt").read_text(encoding="utf-8") == (
        tmp_path / "src_vocab.txt"
    ).read_text(encoding="utf-8")
    assert bundle.json("tokenizer/config.json") == {"lower": True}
    assert bundle.json("meta.json") == {"x": 1}


def test_manifest_fields(bundle_dir: Path) -> None:
    manifest = load_bundle(bundle_dir).manifest
    assert manifest["name"] == "demo"
    assert manifest["labels"] == ["a", "b"]
    assert manifest["config"] == {"k": 10}
    assert manifest["format_version"] == FORMAT_VERSION
    names = list(manifest["files"])
    assert names == sorted(names)
    assert set(names) == {
        "encoder.safetensors",
        "heads/head.safetensors",
        "tokenizer/vocab.txt",
        "tokenizer/config.json",
        "meta.json",
    }
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle_dir / name)
        assert entry["bytes"] == (bundle_dir / name).stat().st_size


def test_input_manifest_not_mutated(tmp_path: Path) -> None:
    manifest = {"name": "demo"}
    save_bundle(tmp_path / "m", manifest, {"a.safetensors": {"x": np.zeros(2)}})
    assert manifest == {"name": "demo"}


def test_no_temp_dirs_remain(bundle_dir: Path, tmp_path: Path) -> None:
    _save(bundle_dir, tmp_path, overwrite=True)
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "bad"
    with pytest.raises(BundleError, match="JSON"):
        save_bundle(target, {"x": object()}, {"a.safetensors": {"x": np.zeros(2)}})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match=r"a\.safetensors"):
        save_bundle(target, {}, {"a.safetensors": {"x": np.array([object()])}})
    assert list(tmp_path.iterdir()) == []


def test_unknown_name(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match=r"nope\.json"):
        bundle.path("nope.json")
    with pytest.raises(BundleError, match=r"nope\.safetensors"):
        bundle.arrays("nope.safetensors")


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_weight(bundle_dir: Path) -> None:
    _flip_byte(bundle_dir / "encoder.safetensors")
    with pytest.raises(BundleError, match=r"encoder\.safetensors.*hash mismatch") as info:
        load_bundle(bundle_dir)
    assert str(bundle_dir) in str(info.value)
    # Without verification, sizes still match, so it loads.
    load_bundle(bundle_dir, verify=False)


def test_truncated_file(bundle_dir: Path) -> None:
    path = bundle_dir / "heads" / "head.safetensors"
    path.write_bytes(path.read_bytes()[:-3])
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"head\.safetensors.*truncated"):
            load_bundle(bundle_dir, verify=verify)


def test_grown_file(bundle_dir: Path) -> None:
    with open(bundle_dir / "meta.json", "ab") as handle:
        handle.write(b" ")
    with pytest.raises(BundleError, match=r"meta\.json.*size mismatch"):
        load_bundle(bundle_dir, verify=False)


def test_deleted_file(bundle_dir: Path) -> None:
    (bundle_dir / "tokenizer" / "vocab.txt").unlink()
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"tokenizer/vocab\.txt is missing"):
            load_bundle(bundle_dir, verify=verify)


def _edit_manifest(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(changes)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def test_newer_format_version(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match="upgrade sidyp-prod"):
        load_bundle(bundle_dir)


def test_missing_format_version(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["format_version"]
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("bad", ["1", 1.0, True, 0])
def test_bad_format_version(bundle_dir: Path, bad: object) -> None:
    _edit_manifest(bundle_dir, format_version=bad)
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(bundle_dir)


def test_corrupt_manifest(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST).write_text('{"format_version": 1, "files": {', encoding="utf-8")
    with pytest.raises(BundleError, match=r"manifest\.json.*corrupt manifest"):
        load_bundle(bundle_dir)
    (bundle_dir / MANIFEST).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BundleError, match="corrupt manifest"):
        load_bundle(bundle_dir)


def test_manifest_traversal_refused(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, files={"../outside.txt": {"sha256": "0" * 64, "bytes": 0}})
    with pytest.raises(BundleError, match=r"\.\."):
        load_bundle(bundle_dir)


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a sidyp-prod bundle"):
        load_bundle(tmp_path / "empty")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist") as info:
        load_bundle(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_overwrite_false_refused(bundle_dir: Path, tmp_path: Path) -> None:
    before = (bundle_dir / MANIFEST).read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle_dir, {}, {"a.safetensors": {"x": np.zeros(1)}})
    assert (bundle_dir / MANIFEST).read_bytes() == before
    load_bundle(bundle_dir)


def test_overwrite_true_replaces(bundle_dir: Path, tmp_path: Path) -> None:
    save_bundle(bundle_dir, {"name": "v2"}, {"a.safetensors": {"x": np.ones(3)}}, overwrite=True)
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["name"] == "v2"
    assert list(bundle.manifest["files"]) == ["a.safetensors"]
    assert not (bundle_dir / "encoder.safetensors").exists()
    assert not (bundle_dir / "tokenizer").exists()
    np.testing.assert_array_equal(bundle.arrays("a.safetensors")["x"], np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "src_vocab.txt"]


def test_overwrite_refuses_non_bundle_dir(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(BundleError, match="not a bundle"):
        save_bundle(target, {}, {"a.safetensors": {"x": np.zeros(1)}}, overwrite=True)
    assert (target / "data.txt").read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../escape.txt", "a/../../b.txt", "tok/../x.txt", "", "a//b", "a\\b", MANIFEST],
)
def test_traversal_names_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BundleError):
        save_bundle(tmp_path / "m", {}, {}, files={name: b"x"})
    with pytest.raises(BundleError):
        save_bundle(tmp_path / "m", {}, {name: {"x": np.zeros(1)}})
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="more than once"):
        save_bundle(tmp_path / "m", {}, {"a": {"x": np.zeros(1)}}, files={"a": b"x"})


def test_missing_source_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"missing\.txt"):
        save_bundle(tmp_path / "m", {}, {}, files={"v.txt": tmp_path / "missing.txt"})
    assert not (tmp_path / "m").exists()


def test_file_digest(bundle_dir: Path, tmp_path: Path) -> None:
    first = file_digest(load_bundle(bundle_dir))
    second = file_digest(load_bundle(bundle_dir))
    assert first == second
    assert len(first) == 64
    # Same content written again elsewhere: same identity.
    assert file_digest(load_bundle(_save(tmp_path / "copy", tmp_path))) == first
    # Different weights: different identity.
    arrays = _arrays()
    arrays["encoder.safetensors"]["w"] = arrays["encoder.safetensors"]["w"] + 1
    save_bundle(tmp_path / "changed", {"name": "demo"}, arrays)
    changed = load_bundle(tmp_path / "changed")
    assert file_digest(changed) != first
    save_bundle(tmp_path / "changed", {"name": "demo"}, _arrays(), overwrite=True)
    assert file_digest(load_bundle(tmp_path / "changed")) != file_digest(changed)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(path) == expected


def test_windows_drive_name_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="absolute"):
        save_bundle(tmp_path / "m", {}, {}, files={"C:evil.txt": b"x"})


def test_file_and_directory_collision_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="both a file and a directory"):
        save_bundle(tmp_path / "m", {}, {}, files={"tok": b"x", "tok/vocab.txt": b"y"})


def test_an_older_bundle_keeps_its_decision_rule():
    from sidyp_prod.config import SiDyPConfig

    recorded = SiDyPConfig().to_dict()
    added = ("change_rule", "change_odds", "class_calibration", "label_share_correction",
             "held_out_folds", "new_row_agreement", "temper_vote")
    for name in added:
        del recorded[name]
    old = SiDyPConfig.from_bundle(recorded)
    assert (old.change_rule, old.change_odds, old.class_calibration) == ("argmax", 1.0, False)
    assert not old.label_share_correction and old.held_out_folds == 0
    assert not old.new_row_agreement and SiDyPConfig().new_row_agreement
    new = SiDyPConfig.from_bundle(SiDyPConfig().to_dict())
    assert new == SiDyPConfig()


def test_the_calibration_is_its_own_hashed_record(trained, fresh_corpus, tmp_path):
    """calibration.json holds the fitted calibration and decision state, hashed like every
    file; a bundle written before it (the values in its training summary) gives the same
    labels."""
    from sidyp_prod import api
    from sidyp_prod.model_io import CALIBRATION_FILE

    bundle_path, _, summary = trained
    loaded = load_bundle(bundle_path)
    assert CALIBRATION_FILE in loaded.files
    record = json.loads(loaded.path(CALIBRATION_FILE).read_text())
    assert record["temperature"] == pytest.approx(summary.temperature)
    np.testing.assert_allclose(record["label_bias"], summary.label_bias)
    assert "label_bias" not in loaded.manifest["training"]

    manifest = {k: v for k, v in loaded.manifest.items() if k not in ("files", "format_version")}
    labels = manifest["labels"]
    manifest["training"] = {**manifest["training"], "temperature": record["temperature"],
                            "label_bias": record["label_bias"],
                            "label_shares": record["label_shares"],
                            "small_classes": [labels[c] for c in record["blocked"]]}
    arrays = {n: loaded.arrays(n) for n in loaded.files if n.endswith(".safetensors")}
    files = {n: loaded.path(n) for n in loaded.files
             if not n.endswith(".safetensors") and n != CALIBRATION_FILE}
    older = save_bundle(tmp_path / "older", manifest, arrays, files)
    api.refine(fresh_corpus, bundle_path, tmp_path / "new.jsonl")
    api.refine(fresh_corpus, older, tmp_path / "old.jsonl")
    assert (tmp_path / "new.jsonl").read_bytes() == (tmp_path / "old.jsonl").read_bytes()

    tampered = tmp_path / "tampered"
    save_bundle(tampered, manifest, arrays, {**files, CALIBRATION_FILE: loaded.path(
        CALIBRATION_FILE)})
    path = tampered / CALIBRATION_FILE
    path.write_text(path.read_text().replace('"temperature": ', '"temperature": 1'))
    with pytest.raises(BundleError):
        load_bundle(tampered)
