"""The typed overlay manifest (qwenprep.model.manifest.Manifest): what an older qwenprep wrote
and what another tool left in .qwenprep/manifest.json read without a KeyError, their absent
fields as None or empty, and the JSON object itself kept as raw."""

from __future__ import annotations

import json
from pathlib import Path

from qwenprep.model.lifecycle import made_here, pin_missing
from qwenprep.model.manifest import Manifest, ManifestFile, Source, manifest_path, read_manifest
from qwenprep.util.schemas import validator

SHA = "a" * 64


def _old_manifest(src: Path) -> dict[str, object]:
    """A manifest from before overlay ids: no id, path or dir_id; a source without refs or pin."""
    return {
        "schema_version": 1,
        "tool": "qwenprep",
        "tool_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        "source": {"path": str(src), "repo_id": None, "revision": None, "config_sha256": SHA},
        "config_sha256": SHA,
        "native_context": 262144,
        "target_context": 1048576,
        "factor": 4.0,
        "rope_style": "rope_scaling",
        "files": [{"name": "model.safetensors", "size": 12}],
        "digest": SHA,
    }


def test_an_old_manifest_reads_with_its_optional_fields_empty(tmp_path: Path) -> None:
    ov = tmp_path / "ov"
    obj = _old_manifest(tmp_path / "src")
    assert not list(validator("manifest").iter_errors(obj))  # what read_manifest accepts
    manifest_path(ov).parent.mkdir(parents=True)
    manifest_path(ov).write_text(json.dumps(obj))
    m = read_manifest(ov)
    assert m is not None
    assert (m.id, m.path, m.dir_id) == (None, None, None)
    assert m.source == Source(path=str(tmp_path / "src"), config_sha256=SHA)
    assert (m.source.refs, m.source.pin) == ((), None)
    assert (m.native_context, m.target_context, m.factor) == (262144, 1048576, 4.0)
    assert m.files == (ManifestFile("model.safetensors", 12),)
    assert m.raw == obj  # JSON output prints the manifest as it is on disk
    # its pin is named by the overlay's path (none here): built here, and no cache pin to miss
    assert made_here(ov, m)
    assert pin_missing(m) is None


def test_a_foreign_manifest_object_reads_as_an_empty_source() -> None:
    m = Manifest.from_dict({"tool": "other", "source": "elsewhere", "files": [3, {"name": "a"}]})
    assert m.source == Source()
    assert m.files == (ManifestFile("a", None),)
    assert (m.target_context, m.digest, m.config_sha256) == (None, None, None)
