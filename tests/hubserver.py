"""A small Hugging Face Hub compatible HTTP server for tests (standard library only).

It speaks the endpoints the real ``huggingface_hub`` client (0.34 .. 2.x) uses to download a
model repository, so ``snapshot_download`` / ``hf_hub_download`` run unmodified against it
through ``HF_ENDPOINT``:

- ``GET  /api/models/{repo}[/revision/{rev}][?blobs=true]``  repo info: ``sha`` + ``siblings``
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]``       listing (``oid``, ``size``, ``lfs``)
- ``POST /api/models/{repo}/paths-info/{rev}``              metadata for given paths
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``                 file bytes with ``X-Repo-Commit``,
  ``ETag`` (git blob sha1 for small files, sha256 for LFS files), ``X-Linked-Etag``,
  ``X-Linked-Size``, ``Content-Length``; ``Range: bytes=N-[M]`` answered with 206.

Errors carry the ``X-Error-Code`` header the client maps to its exception types
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Fault knobs (``HubServer.faults``, changeable while the server runs):
- ``drop_after[name] = n``: a GET of ``name`` sends the headers and ``n`` body bytes, then closes
  the connection; ``drop_times[name]`` limits how many times (default: every time).
- ``stall_after[name] = n``: send ``n`` bytes, then hold the connection open (until
  ``release_stalls()`` or the server stops); ``stalled`` is set when that happens.
- ``corrupt``: names served with wrong bytes of the right length (headers still advertise the
  true ETag) - what a bad mirror or a flipped bit on the wire looks like.
- ``missing``: names still listed by the API but answered 404 ``EntryNotFound`` on download.
- ``size_override[name] = n``: the size the API metadata reports for ``name``.
- ``deny = 401`` (or 403): every request is refused with that status, and the refusal echoes
  the request's Authorization header and the bare token in it, in the JSON body, in
  ``X-Error-Message`` and in ``WWW-Authenticate`` - what a careless proxy or mirror does. Only
  with this knob set does the server ever echo a header back. ``deny_only``: when not empty,
  only requests whose path ends with one of these names are refused.

The server records every request (method, path, whether an Authorization header came).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    ).encode()


def is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".pt", ".gguf"))


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


def make_commit(files: dict[str, bytes], parent: str = "") -> Commit:
    h = hashlib.sha1(parent.encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return Commit(h.hexdigest(), dict(files))


def files_from_dir(path: Path) -> dict[str, bytes]:
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and ".cache" not in p.parts and ".qwenprep" not in p.parts
    }


@dataclass
class Faults:
    drop_after: dict[str, int] = field(default_factory=dict)
    drop_times: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    size_override: dict[str, int] = field(default_factory=dict)
    deny: int | None = None
    deny_only: set[str] = field(default_factory=set)


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorized: bool


class HubServer:
    """Serve repos at ``url``; ``repos[repo_id] = (commits by sha, refs name -> sha)``."""

    def __init__(self) -> None:
        self.repos: dict[str, tuple[dict[str, Commit], dict[str, str]]] = {}
        self.faults = Faults()
        self.requests: list[Seen] = []
        self.auth_headers: list[str] = []  # kept only so a test can check the token was sent
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repos -------------------------------------------------------------------------
    def add_repo(self, repo_id: str, commits: list[Commit], refs: dict[str, str]) -> None:
        self.repos[repo_id] = ({c.sha: c for c in commits}, dict(refs))

    def resolve(self, repo_id: str, rev: str) -> Commit | None:
        commits, refs = self.repos[repo_id]
        sha = refs.get(rev, rev)
        if sha in commits:
            return commits[sha]
        matches = [c for s, c in commits.items() if len(rev) >= 7 and s.startswith(rev)]
        return matches[0] if len(matches) == 1 else None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> HubServer:
        handler = type("BoundHubHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def release_stalls(self) -> None:
        self._release.set()

    def downloads(self, name: str) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + name)]


def _entry(name: str, data: bytes, size_override: dict[str, int]) -> dict[str, Any]:
    size = size_override.get(name, len(data))
    if is_lfs(name):
        pointer = lfs_pointer(data)
        return {
            "oid": git_blob_sha1(pointer),
            "size": size,
            "lfs": {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": size,
                "pointerSize": len(pointer),
            },
        }
    return {"oid": git_blob_sha1(data), "size": size}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- plumbing --------------------------------------------------------------------
    def _record(self) -> None:
        auth = self.headers.get("Authorization")
        with self.hub._lock:
            self.hub.requests.append(
                Seen(self.command, urlsplit(self.path).path, self.headers.get("Range"), bool(auth))
            )
            if auth:
                self.hub.auth_headers.append(auth)

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        self._send(status, json.dumps(obj).encode(), hdrs)

    def _error(
        self, status: int, code: str, message: str, extra: dict[str, str] | None = None
    ) -> None:
        hdrs = {"X-Error-Code": code, "X-Error-Message": message}
        hdrs.update(extra or {})
        self._json(status, {"error": message}, hdrs)

    def _repo_and_rest(self, parts: list[str]) -> tuple[str, list[str]] | None:
        if len(parts) < 2:
            return None
        repo_id = f"{parts[0]}/{parts[1]}"
        if repo_id not in self.hub.repos:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            return None
        return repo_id, parts[2:]

    def _commit(self, repo_id: str, rev: str) -> Commit | None:
        commit = self.hub.resolve(repo_id, rev)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    # -- verbs -----------------------------------------------------------------------
    def _denied(self) -> bool:
        """Answer with faults.deny (401/403), echoing the credentials that came."""
        status, only = self.hub.faults.deny, self.hub.faults.deny_only
        if status is None:
            return False
        if only and not any(urlsplit(self.path).path.endswith("/" + n) for n in only):
            return False
        length = int(self.headers.get("Content-Length") or 0)
        if length and self.command == "POST":
            self.rfile.read(length)
        auth = self.headers.get("Authorization") or "(none)"
        bare = auth.split()[-1]
        message = f"Invalid credentials in Authorization header: {auth} (token {bare} rejected)"
        body = {"error": message, "token": bare, "url": self.path}
        self._send(
            status,
            json.dumps(body).encode(),
            {
                "Content-Type": "application/json",
                "X-Error-Message": message,
                "WWW-Authenticate": f'Bearer realm="{bare}"',
            },
        )
        return True

    def do_HEAD(self) -> None:
        self._record()
        if not self._denied():
            self._route()

    def do_GET(self) -> None:
        self._record()
        if not self._denied():
            self._route()

    def do_POST(self) -> None:
        self._record()
        if self._denied():
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "paths-info":
            found = self._repo_and_rest(parts[2:])
            if found is None:
                return
            repo_id, rest = found
            commit = self._commit(repo_id, "/".join(rest[1:]))
            if commit is None:
                return
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                paths = json.loads(body or b"{}").get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            out = [
                {
                    "type": "file",
                    "path": p,
                    **_entry(p, commit.files[p], self.hub.faults.size_override),
                }
                for p in paths
                if p in commit.files
            ]
            self._json(200, out)
            return
        self._send(405)

    def _route(self) -> None:
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/") if p]
        query = parse_qs(split.query)
        if parts[:2] == ["api", "models"]:
            self._api(parts[2:], query)
        elif len(parts) >= 4 and parts[2] == "resolve":
            self._resolve(parts)
        else:
            self._send(404, b"not found")

    def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
        found = self._repo_and_rest(parts)
        if found is None:
            return
        repo_id, rest = found
        faults = self.hub.faults
        if not rest or rest[0] == "revision":
            rev = "/".join(rest[1:]) if rest else "main"
            commit = self._commit(repo_id, rev)
            if commit is None:
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for name, data in sorted(commit.files.items()):
                sib: dict[str, Any] = {"rfilename": name}
                if blobs:
                    e = _entry(name, data, faults.size_override)
                    sib.update(size=e["size"], blobId=e["oid"])
                    if "lfs" in e:
                        lfs = e["lfs"]
                        sib["lfs"] = {
                            "size": lfs["size"],
                            "sha256": lfs["oid"],
                            "pointerSize": lfs["pointerSize"],
                        }
                siblings.append(sib)
            self._json(
                200,
                {
                    "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit.sha,
                    "private": False,
                    "gated": False,
                    "disabled": False,
                    "tags": [],
                    "siblings": siblings,
                },
            )
        elif rest[0] == "tree" and len(rest) >= 2:
            commit = self._commit(repo_id, rest[1])
            if commit is None:
                return
            prefix = "/".join(rest[2:])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            out: list[dict[str, Any]] = []
            folders: set[str] = set()
            for name, data in sorted(commit.files.items()):
                if prefix and not name.startswith(prefix + "/"):
                    continue
                tail = name[len(prefix) + 1 :] if prefix else name
                if "/" in tail and not recursive:
                    folders.add((prefix + "/" if prefix else "") + tail.split("/")[0])
                    continue
                if recursive:
                    head = name.split("/")[:-1]
                    for i in range(len(prefix.split("/")) if prefix else 0, len(head)):
                        folders.add("/".join(head[: i + 1]))
                out.append(
                    {"type": "file", "path": name, **_entry(name, data, faults.size_override)}
                )
            out += [
                {"type": "directory", "path": f, "oid": git_blob_sha1(f.encode()), "size": 0}
                for f in sorted(folders)
            ]
            self._json(200, out)
        else:
            self._send(404, b"unknown api path")

    def _resolve(self, parts: list[str]) -> None:
        found = self._repo_and_rest(parts)
        if found is None:
            return
        repo_id, rest = found  # rest = ["resolve", rev, *path]
        commit = self._commit(repo_id, rest[1])
        if commit is None:
            return
        name = "/".join(rest[2:])
        faults = self.hub.faults
        if name not in commit.files or name in faults.missing:
            self._error(
                404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": commit.sha}
            )
            return
        data = commit.files[name]
        etag = hashlib.sha256(data).hexdigest() if is_lfs(name) else git_blob_sha1(data)
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if is_lfs(name):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        if name in faults.corrupt:
            data = data[:-64] + bytes(b ^ 0xFF for b in data[-64:])  # headers stay sane
        start, end = 0, len(data)
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.command == "GET":
            lo, _, hi = rng[len("bytes=") :].partition("-")
            start = int(lo or 0)
            end = min(int(hi) + 1, len(data)) if hi else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        if self.command == "HEAD":
            self._send(status, body, headers)
            return
        cut = self._fault_cut(name)
        if cut is None:
            self._send(status, body, headers)
            return
        kind, n = cut
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:n])
        self.wfile.flush()
        if kind == "stall":
            self.hub.stalled.set()
            self.hub._release.wait(60)
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass

    def _fault_cut(self, name: str) -> tuple[str, int] | None:
        faults = self.hub.faults
        with self.hub._lock:
            if name in faults.stall_after:
                return "stall", faults.stall_after[name]
            if name in faults.drop_after:
                left = faults.drop_times.get(name)
                if left is not None:
                    if left <= 0:
                        return None
                    faults.drop_times[name] = left - 1
                return "drop", faults.drop_after[name]
        return None


# -- the repo the qwenprep tests serve ------------------------------------------------------

TINY_REPO = "Qwen/Tiny-Qwen3-Coder"
V1_TRANSFORMERS = "4.43.1"  # what tells the v1 config from main's
_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Files a real model repo has that serving does not need (fetch must leave them on the Hub).
EXTRAS = {
    "README.md": b"---\nlicense: apache-2.0\n---\n# Tiny Qwen3-Coder (test fixture)\n",
    "LICENSE": b"Apache License 2.0 (test fixture)\n",
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "original/notes.txt": b"consolidated weights would live here\n",
}


def tiny_repo_files() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(main, v1): the embedded FP8 tiny checkpoint with a README etc.; v1 is an older commit
    with a different config.json and no generation_config.json."""
    src = _EXAMPLES / "tiny-qwen3-coder-fp8"
    main = {**files_from_dir(src), **EXTRAS}
    cfg = json.loads(main["config.json"])
    cfg["transformers_version"] = V1_TRANSFORMERS
    v1 = {k: v for k, v in main.items() if k != "generation_config.json"}
    v1["config.json"] = (json.dumps(cfg, indent=2) + "\n").encode()
    return main, v1


def tiny_hub() -> tuple[HubServer, Commit, Commit]:
    """A started server with TINY_REPO: refs main -> (new commit), tag v1 -> (old commit);
    plus "Qwen/Docs-Only", a repo without weights."""
    main_files, v1_files = tiny_repo_files()
    v1 = make_commit(v1_files)
    main = make_commit(main_files, parent=v1.sha)
    hub = HubServer()
    hub.add_repo(TINY_REPO, [v1, main], {"main": main.sha, "v1": v1.sha})
    docs = make_commit({"README.md": b"# docs\n"})
    hub.add_repo("Qwen/Docs-Only", [docs], {"main": docs.sha})
    return hub.start(), main, v1


@contextlib.contextmanager
def serving_tiny_hub() -> Iterator[tuple[HubServer, Commit, Commit]]:
    """tiny_hub(), stopped on the way out (for fixtures of any scope)."""
    server, main, v1 = tiny_hub()
    try:
        yield server, main, v1
    finally:
        server.stop()


def hub_env(hub: HubServer, hf_home: Path, **extra: str) -> dict[str, str]:
    """A process environment that points huggingface_hub at `hub` and nowhere else."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env
