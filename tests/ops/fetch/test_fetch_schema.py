"""schemas/fetch-result.schema.json against real `qwenprep fetch --json` outputs: the installed
console script in a fresh process, downloading through the real huggingface_hub client from
the hub-compatible server in tests/hubserver.py (as tests/ops/fetch/test_fetch.py does)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubserver import TINY_REPO, Commit, HubServer, hub_env, serving_tiny_hub

QWENPREP = Path(sys.executable).parent / "qwenprep"


def errors(obj: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    from qwenprep.util.schemas import load_schema

    v = Draft202012Validator(load_schema("fetch-result"))
    return [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(obj)]


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[HubServer, Commit, Commit]]:
    with serving_tiny_hub() as served:
        yield served


def fetch_json(hub: HubServer, hf_home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = subprocess.run(
        [str(QWENPREP), "fetch", *args, "--json"],
        env=hub_env(hub, hf_home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return r.returncode, json.loads(r.stdout)


@pytest.fixture(scope="module")
def fetched(
    hub: tuple[HubServer, Commit, Commit], tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict[str, Any]]:
    return fetch_json(hub[0], tmp_path_factory.mktemp("hf"), TINY_REPO)


def test_schema_is_valid_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    from qwenprep.util.schemas import load_schema, schema_path

    assert schema_path("fetch-result").name == "fetch-result.schema.json"
    Draft202012Validator.check_schema(load_schema("fetch-result"))


def test_successful_fetch_validates(
    fetched: tuple[int, dict[str, Any]], hub: tuple[HubServer, Commit, Commit]
) -> None:
    code, out = fetched
    assert code == 0 and out["ok"] is True
    assert errors(out) == []
    assert out["revision"] == hub[1].sha and out["requested_revision"] == "main"
    assert out["verify"]["kind"] == "verify" and out["verify"]["deep"] is True


def test_unknown_revision_error_validates(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    code, out = fetch_json(hub[0], tmp_path / "hf", f"{TINY_REPO}@v9")
    assert code == 3
    assert errors(out) == []
    assert out["ok"] is False and out["error"]["exit_code"] == 3
    assert out["error"]["message"].endswith(f"revision 'v9' does not exist on {hub[0].url}.")


def test_bad_repo_id_error_validates(hub: tuple[HubServer, Commit, Commit], tmp_path: Path) -> None:
    code, out = fetch_json(hub[0], tmp_path / "hf", "not a repo")
    assert code == 2 and errors(out) == []


def test_corrupt_download_validates_as_a_failed_result(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    """Exit 1: the result shape with ok false (the same command fetches the file anew)."""
    server = hub[0]
    server.faults.corrupt.add("model-00001-of-00002.safetensors")
    try:
        code, out = fetch_json(server, tmp_path / "hf", TINY_REPO)
    finally:
        server.faults.corrupt.clear()
    assert code == 1 and out["ok"] is False
    assert errors(out) == []
    assert out["checks"][-1]["id"] == "fetch.corrupt"


@pytest.mark.parametrize(
    ("doctor", "expected"),
    [
        (lambda o: o.pop("revision"), "is not valid under any of the given schemas"),
        (lambda o: o.update(revision="main"), "does not match '^[0-9a-f]{40}$'"),
        (
            lambda o: o["checks"].append({"id": "fetch.x", "status": "fail", "message": "m"}),
            "should not be valid under",
        ),
        (lambda o: o["verify"].update(ok=False), "['verify', 'ok']: True was expected"),
        (
            lambda o: o["files"].append({"name": "original/x.pth", "size": 1}),
            "does not match '^[^/]+$'",
        ),
        (
            lambda o: o.update(error={"message": "m", "exit_code": 3}),
            "is not valid under any of the given schemas",
        ),
    ],
)
def test_schema_rejects_doctored_results(
    fetched: tuple[int, dict[str, Any]], doctor: Any, expected: str
) -> None:
    out = copy.deepcopy(fetched[1])
    doctor(out)
    found = errors(out)
    assert any(expected in e for e in found), found
