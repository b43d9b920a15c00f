"""Model bundles: a directory with ``manifest.json``, safetensors weights and plain files.

Nothing is pickled. Every file is listed in the manifest with its size and sha256, the bundle
is written atomically, and loading refuses a bundle that is incomplete, truncated or altered.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import safetensors.numpy

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "Bundle",
    "BundleError",
    "file_digest",
    "load_bundle",
    "save_bundle",
    "sha256_file",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle cannot be written or read; the message names the directory and the file."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_name(directory: Path, name: object) -> str:
    """Return `name` if it is a safe relative POSIX path inside the bundle, else raise."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"bundle {directory}: invalid file name {name!r}")
    if "\\" in name or "\x00" in name:
        raise BundleError(f"bundle {directory}: file name {name!r} contains '\\' or NUL")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise BundleError(f"bundle {directory}: file name {name!r} is absolute")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BundleError(
            f"bundle {directory}: file name {name!r} must be relative, without '..', '.' "
            "or empty components"
        )
    if name == MANIFEST:
        raise BundleError(f"bundle {directory}: file name {name!r} is reserved for the manifest")
    return name


def _fsync(path: Path) -> None:
    """Flush a written file to disk (best effort)."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    """Delete a file or directory tree if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


def _write_contents(
    directory: Path,
    tmp: Path,
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    files: Mapping[str, str | Path | bytes],
) -> None:
    """Write weight files and plain files into the temp dir `tmp`."""
    for name, tensors in arrays.items():
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        prepared: dict[str, np.ndarray] = {}
        for key, value in tensors.items():
            if not isinstance(key, str):
                raise BundleError(f"bundle {directory}: file {name}: array name {key!r} not a str")
            if not isinstance(value, np.ndarray):
                raise BundleError(
                    f"bundle {directory}: file {name}: array {key!r} is "
                    f"{type(value).__name__}, not a numpy array"
                )
            prepared[key] = np.ascontiguousarray(value)
        try:
            safetensors.numpy.save_file(prepared, str(target))
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"bundle {directory}: cannot write {name}: {exc}") from exc
        _fsync(target)
    for name, source in files.items():
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, (bytes, bytearray, memoryview)):
            target.write_bytes(bytes(source))
        elif isinstance(source, (str, Path)):
            src = Path(source)
            if not src.is_file():
                raise BundleError(f"bundle {directory}: file {name}: source {src} is not a file")
            shutil.copyfile(src, target)
        else:
            raise BundleError(
                f"bundle {directory}: file {name}: source must be a path or bytes, "
                f"got {type(source).__name__}"
            )
        _fsync(target)


def save_bundle(
    directory: str | Path,
    manifest: dict[str, Any],
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    files: Mapping[str, str | Path | bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically (temp sibling dir, then rename) and return its path.

    The manifest written is a copy of `manifest` plus ``format_version`` and ``files``
    (name -> sha256 and byte size for every file). An existing directory is an error unless
    `overwrite`; then it is replaced, but only if it is a bundle or empty.
    """
    directory = Path(directory).absolute()
    files = files or {}
    if not isinstance(manifest, Mapping):
        raise BundleError(f"bundle {directory}: manifest must be a dict")
    names = [_check_name(directory, name) for name in (*arrays, *files)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BundleError(f"bundle {directory}: file names given more than once: {dup}")
    lowered: dict[str, str] = {}
    for name in names:
        # Two names that differ only by case would collide on case-insensitive file systems,
        # and a name must not be both a file and a directory.
        if name.lower() in lowered:
            raise BundleError(
                f"bundle {directory}: file names {lowered[name.lower()]!r} and {name!r} collide"
            )
        lowered[name.lower()] = name
    name_set = set(names)
    for name in names:
        for parent in PurePosixPath(name).parents:
            if str(parent) in name_set:
                raise BundleError(
                    f"bundle {directory}: {parent} is both a file and a directory of {name}"
                )

    if directory.exists() or directory.is_symlink():
        if not overwrite:
            raise BundleError(
                f"bundle {directory}: directory already exists (pass overwrite=True to replace it)"
            )
        if not directory.is_dir() or directory.is_symlink():
            raise BundleError(f"bundle {directory}: exists and is not a directory; not replacing")
        if not (directory / MANIFEST).is_file() and any(directory.iterdir()):
            raise BundleError(
                f"bundle {directory}: exists, is not empty and has no {MANIFEST}; "
                "refusing to replace a directory that is not a bundle"
            )

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
    _remove(tmp)
    try:
        tmp.mkdir()
        _write_contents(directory, tmp, arrays, files)
        entries = {
            name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in sorted(names)
        }
        written = copy.deepcopy(dict(manifest))
        written["format_version"] = FORMAT_VERSION
        written["files"] = entries
        try:
            text = json.dumps(written, indent=2, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BundleError(
                f"bundle {directory}: manifest is not JSON-serialisable: {exc}"
            ) from exc
        # The manifest is written last: a temp dir without it never looks like a bundle.
        (tmp / MANIFEST).write_text(text + "\n", encoding="utf-8")
        _fsync(tmp / MANIFEST)

        if directory.exists():
            _remove(old)
            os.replace(directory, old)
            try:
                os.replace(tmp, directory)
            except OSError:
                os.replace(old, directory)
                raise
            _remove(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        _remove(tmp)
        raise
    return directory


@dataclass
class Bundle:
    """A loaded bundle: its directory and manifest; weights are read on demand."""

    directory: Path
    manifest: dict[str, Any]
    _arrays_cache: dict[str, dict[str, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """The manifest's file table (name -> sha256 and bytes)."""
        return self.manifest.get("files", {})

    def path(self, name: str) -> Path:
        """Path of a file listed in the manifest."""
        if name not in self.files:
            raise BundleError(
                f"bundle {self.directory}: file {name!r} is not listed in {MANIFEST} "
                f"(listed: {sorted(self.files)})"
            )
        return self.directory / name

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """Named numpy arrays of a safetensors file (cached per name)."""
        if name not in self._arrays_cache:
            path = self.path(name)
            try:
                self._arrays_cache[name] = safetensors.numpy.load_file(str(path))
            except Exception as exc:  # safetensors raises its own error types
                raise BundleError(
                    f"bundle {self.directory}: file {name}: not a readable safetensors file: {exc}"
                ) from exc
        return self._arrays_cache[name]

    def json(self, name: str) -> Any:
        """Parsed content of a JSON file."""
        path = self.path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"bundle {self.directory}: file {name}: invalid JSON: {exc}") from exc


def load_bundle(directory: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle, checking version, presence and size of every file and (if `verify`) hashes."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise BundleError(f"bundle {directory}: directory does not exist")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle {directory}: no {MANIFEST}; not a sidyp-prod bundle")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {directory}: file {MANIFEST}: corrupt manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {directory}: file {MANIFEST}: corrupt manifest (not an object)")

    version = manifest.get("format_version")
    if version is None:
        raise BundleError(
            f"bundle {directory}: file {MANIFEST}: no format_version; not a sidyp-prod bundle"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(
            f"bundle {directory}: file {MANIFEST}: corrupt manifest (format_version {version!r})"
        )
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle {directory}: format_version {version} is newer than this sidyp-prod "
            f"supports ({FORMAT_VERSION}); upgrade sidyp-prod to load it"
        )

    entries = manifest.get("files")
    if not isinstance(entries, dict):
        raise BundleError(f"bundle {directory}: file {MANIFEST}: corrupt manifest (no 'files')")
    for name, entry in entries.items():
        _check_name(directory, name)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
            or isinstance(entry.get("bytes"), bool)
        ):
            raise BundleError(
                f"bundle {directory}: file {MANIFEST}: corrupt manifest (bad entry for {name})"
            )
        path = directory / name
        if not path.is_file():
            raise BundleError(f"bundle {directory}: file {name} is missing")
        size = path.stat().st_size
        expected = entry["bytes"]
        if size < expected:
            raise BundleError(
                f"bundle {directory}: file {name} is truncated ({size} of {expected} bytes)"
            )
        if size > expected:
            raise BundleError(
                f"bundle {directory}: file {name} has {size} bytes, expected {expected} "
                "(tampered / size mismatch)"
            )
        if verify and sha256_file(path) != entry["sha256"].lower():
            raise BundleError(
                f"bundle {directory}: file {name} is tampered / hash mismatch "
                f"(sha256 differs from {MANIFEST})"
            )
    return Bundle(directory=directory, manifest=manifest)


def file_digest(bundle: Bundle) -> str:
    """A stable identity: sha256 over the sorted (name, sha256) pairs of the manifest."""
    digest = hashlib.sha256()
    for name in sorted(bundle.files):
        digest.update(name.encode("utf-8") + b"\0" + bundle.files[name]["sha256"].encode() + b"\n")
    return digest.hexdigest()


def add_to_bundle(
    bundle: Bundle,
    files: Mapping[str, str | Path | bytes],
    manifest_updates: Mapping[str, Any] | None = None,
) -> Bundle:
    """Add (or replace) files in an existing bundle and record them in its manifest.

    The files are written first and the manifest is replaced atomically last, so a crash leaves
    the old, still valid bundle (plus unlisted files that the next call overwrites).
    """
    directory = bundle.directory
    names = [_check_name(directory, name) for name in files]
    _write_contents(directory, directory, {}, files)
    manifest = copy.deepcopy(bundle.manifest)
    manifest.update(manifest_updates or {})
    entries = dict(manifest.get("files", {}))
    for name in names:
        entries[name] = {
            "sha256": sha256_file(directory / name),
            "bytes": (directory / name).stat().st_size,
        }
    manifest["files"] = dict(sorted(entries.items()))
    tmp = directory / f"{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, directory / MANIFEST)
    return load_bundle(directory, verify=False)
