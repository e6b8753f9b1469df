"""``metadata.json``: the one manifest of every model version, whatever its format.

Fields every version has: ``version``, ``format_version``, ``created_at``, ``kind``
(``trained`` | ``variant``), ``format`` (``torch`` | ``onnx``), ``runtime`` (``plain`` |
``dynamic_int8`` | ``onnxruntime``), ``n_items``, ``sha256`` (every other file of the
folder) and ``manifest_sha256`` (the manifest's own content), so a flipped byte anywhere
in the folder refuses the load. A variant adds ``lineage`` (parent_version, method,
parameters); a trained version carries its training metadata (``data_end``, ``metrics``, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

FORMAT_VERSION = 2
METADATA = "metadata.json"
CONFIG = "config.json"
ITEMS = "items.json"
WEIGHTS = "model.safetensors"
ONNX_GRAPH = "model.onnx"

TRAINED, VARIANT = "trained", "variant"
TORCH, ONNX = "torch", "onnx"
RUNTIMES = {TORCH: ("plain", "dynamic_int8"), ONNX: ("onnxruntime",)}
# format 1 held trained PyTorch versions only, and no digest of the manifest itself
FORMAT_1_DEFAULTS = {"kind": TRAINED, "format": TORCH, "runtime": "plain"}
# variants before format 2 kept their spec in this file, and a manifest without format_version
LEGACY_VARIANT_SPEC = "variant.json"
# what the writer sets: a caller's metadata never overrides these
RESERVED = ("version", "format_version", "created_at", "kind", "format", "runtime", "lineage", "n_items",
            "sha256", "manifest_sha256")

# fullmatch, not match with "$": "$" also matches before a trailing newline
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ArtifactError(Exception):
    """A model version is missing, corrupt, altered or inconsistent."""


class LegacyVariantError(ArtifactError):
    """A compressed variant written before manifest format 2: it no longer loads, but its
    parent is still known (the registry follows it to the trained root)."""

    def __init__(self, root: Path, parent_version: str | None):
        self.parent_version = parent_version
        super().__init__(f"{root}: variant written by ShopRec before manifest format {FORMAT_VERSION}; re-create it: "
                         f"shoprec compress --version {parent_version or '<parent>'} --promote")


def check_version_name(version: str) -> str:
    """``version`` if it names a folder of models_dir (never a path); ArtifactError otherwise."""
    if not isinstance(version, str) or not VERSION_NAME.fullmatch(version):
        raise ArtifactError(f"{version!r} is not a model version name (letters, digits, '.', '_', '-')")
    return version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's content without its own digest (key order and whitespace do not count)."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def payload_files(root: Path) -> list[str]:
    """Every file of a version folder but the manifest, as paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != METADATA)


def sealed(manifest: dict, root: Path) -> str:
    """The manifest's JSON text with the checksums of ``root``'s files and of itself."""
    manifest = {**manifest, "sha256": {name: sha256_file(root / name) for name in payload_files(root)}}
    manifest = json.loads(json.dumps(manifest, default=str))  # the digest is over what a reader parses
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return json.dumps(manifest, indent=2)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"artifact file is not valid JSON: {path} ({error})") from None


def read_manifest(root: Path) -> dict:
    """The parsed manifest of the version at ``root``, its own digest checked (not yet the files')."""
    manifest = read_json(root / METADATA)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{root / METADATA} is not a manifest")
    if manifest.get("format_version") == 1:
        return {**FORMAT_1_DEFAULTS, **manifest}
    if "format_version" not in manifest and (root / LEGACY_VARIANT_SPEC).is_file():
        lineage = manifest.get("lineage")
        raise LegacyVariantError(root, lineage.get("parent_version") if isinstance(lineage, dict) else None)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{root}: artifact format {manifest.get('format_version')!r}, this code reads "
                            f"{FORMAT_VERSION} (and 1)")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise ArtifactError(f"{root / METADATA} does not match its own checksum (corrupt or altered)")
    fmt, runtime = manifest.get("format"), manifest.get("runtime")
    if manifest.get("kind") not in (TRAINED, VARIANT) or runtime not in RUNTIMES.get(fmt, ()):
        raise ArtifactError(f"{root}: unknown kind/format/runtime {manifest.get('kind')!r}/{fmt!r}/{runtime!r}")
    if manifest["kind"] == VARIANT and not isinstance(manifest.get("lineage"), dict):
        raise ArtifactError(f"{root}: a variant without its lineage")
    return manifest


def verify_files(root: Path, manifest: dict) -> None:
    """Every file listed is there with its checksum, and no file is there that is not listed."""
    listed = manifest.get("sha256")
    if not isinstance(listed, dict) or not listed:
        raise ArtifactError(f"{root / METADATA} lists no file checksums")
    for name, digest in listed.items():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"artifact file missing: {path}")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{path} does not match its checksum in {METADATA} (corrupt or altered)")
    unlisted = sorted(set(payload_files(root)) - set(listed))
    if unlisted:
        raise ArtifactError(f"{root}: files not in its manifest: {', '.join(unlisted)}")


def verified_manifest(root: Path) -> dict:
    """The manifest of the version at ``root`` after checking it and every file it lists."""
    if not (root / METADATA).is_file():
        raise ArtifactError(f"no model version at {root} ({METADATA} missing)")
    manifest = read_manifest(root)
    verify_files(root, manifest)
    return manifest
