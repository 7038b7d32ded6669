"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests that must not reach the network.

It serves the HTTP endpoints that ``huggingface_hub`` 2.4 and ``diffusers`` 0.42 call to download a repository
(``model_info``/``repo_info``, the tree listing of ``snapshot_download``, ``HEAD``/``GET`` on ``resolve``), to upload
one (``create_repo``, ``create_branch``, README metadata validation, ``preupload``, ``commit``), and the agent-harness
registry ``huggingface_hub`` fetches for its user agent. Files are kept
in memory, one dict per commit; branches point at commits. Anything else is answered ``404`` with an explanation and
recorded in ``unknown`` so the test that caused it can fail and say which request it was.

Only regular (inline, base64) uploads are stored: the ``preupload`` answer asks for ``"regular"`` mode for files up to
10 MB, as the Hub does for small files; larger files would be asked for LFS, which this stand-in does not implement
(the client's LFS calls then show up in ``unknown``).

Usage: ``with HubStandIn() as hub: ...`` (``hub.endpoint`` is ``http://127.0.0.1:<free port>``), or the ``hub``
fixture of the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REGULAR_UPLOAD_LIMIT = 10 * 1024 * 1024
REQUEST_TIMEOUT_S = 30  # a client that stops talking mid-request does not hold a handler thread forever

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub sends as ``ETag`` for non-LFS files and as ``oid`` in listings."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


class HubStandIn:
    """A threading HTTP server playing the Hub. Start with ``start()`` or a ``with`` block; ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1"):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path with query, status)
        self.unknown: list[str] = []  # requests no route answered: the test should fail on them
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content ------------------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self._lock:
            if repo_id not in self.repos:
                repo = Repo(repo_id, private)
                self._commit(repo, "main", {}, "initial commit", deleted=())
                self.repos[repo_id] = repo
            return self.repos[repo_id]

    def add_folder(self, repo_id: str, folder, revision: str = "main", message: str = "add folder") -> str:
        """Seeds a repository with every file under ``folder`` (as one commit on ``revision``); returns the commit."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        repo = self.create_repo(repo_id)
        with self._lock:
            return self._commit(repo, revision, files, message, deleted=())

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        return dict(commit.files) if commit else {}

    def head(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id].resolve(revision).oid

    def requested(self, method: str | None = None, pattern: str = "") -> list[str]:
        """Paths of the requests seen so far (``method`` and a regular expression on the path filter them)."""
        return [p for m, p, _ in self.requests if (method is None or m == method) and re.search(pattern, p)]

    def report(self) -> str:
        return "\n".join(f"{m} {p} -> {s}" for m, p, s in self.requests)

    @staticmethod
    def _commit(repo: Repo, branch: str, added: dict[str, bytes], message: str, deleted) -> str:
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        files.update(added)
        for path in deleted:
            files = {p: v for p, v in files.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
        digest = hashlib.sha1(f"{repo.repo_id}\0{branch}\0{parent}\0{message}\0{time.time_ns()}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path])
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, files, message, parent)
        repo.branches[branch] = oid
        return oid


def _make_handler(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries a Content-Length
        timeout = REQUEST_TIMEOUT_S

        def log_message(self, *args):  # quiet: the requests are recorded in ``hub.requests`` instead
            pass

        # -- plumbing -------------------------------------------------------------------------------------------

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
            with hub._lock:
                hub.requests.append((self.command, self.path, status))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict | None = None):
            self._send(status, json.dumps(payload).encode(), headers)

        def _error(self, status: int, code: str | None, message: str, headers: dict | None = None):
            extra = dict(headers or {})
            if code:
                extra["X-Error-Code"] = code
            extra["X-Error-Message"] = message
            self._json(status, {"error": message}, extra)

        def _unknown(self):
            with hub._lock:
                hub.unknown.append(f"{self.command} {self.path}")
            self._error(404, None, f"hub stand-in: no route for {self.command} {self.path}")

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return repo

        def _commit_of(self, repo: Repo, revision: str) -> Commit | None:
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
            return commit

        def _route(self, routes):
            path = urlsplit(self.path).path
            for pattern, handler in routes:
                match = re.fullmatch(pattern, path)
                if match:
                    with hub._lock:
                        hub.authorizations.append(self.headers.get("Authorization"))
                    return handler(**{k: v for k, v in match.groupdict().items()})
            self._body()  # drain it so the connection stays usable
            return self._unknown()

        def _query(self) -> dict[str, str]:
            return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

        # -- downloads ------------------------------------------------------------------------------------------

        def model_info(self, repo, revision="main"):
            repo_ = self._repo(repo)
            commit = repo_ and self._commit_of(repo_, revision)
            if commit is None:
                return
            self._json(200, {
                "_id": hashlib.md5(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                "author": repo.split("/")[0], "sha": commit.oid, "private": repo_.private, "disabled": False,
                "gated": False, "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0, "likes": 0,
                "library_name": "diffusers", "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            })  # fmt: skip

        def tree(self, repo, revision, path=""):
            repo_ = self._repo(repo)
            commit = repo_ and self._commit_of(repo_, revision)
            if commit is None:
                return
            prefix = unquote(path or "").strip("/")
            recursive = self._query().get("recursive", "false").lower() in ("1", "true")
            entries, folders = [], set()
            for name in sorted(commit.files):
                if prefix and not name.startswith(prefix + "/"):
                    continue
                rest = name[len(prefix) + 1 :] if prefix else name
                parts = rest.split("/")
                for depth in range(1, len(parts)):
                    folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                    if (recursive or depth == 1) and folder not in folders:
                        folders.add(folder)
                        tree_oid = hashlib.sha1(folder.encode()).hexdigest()
                        entries.append({"type": "directory", "path": folder, "oid": tree_oid, "size": 0})
                if recursive or len(parts) == 1:
                    data = commit.files[name]
                    entries.append({"type": "file", "path": name, "oid": git_blob_sha1(data), "size": len(data)})
            self._json(200, entries)

        def resolve(self, repo, revision, filename):
            repo_ = self._repo(repo)
            commit = repo_ and self._commit_of(repo_, revision)
            if commit is None:
                return
            filename = unquote(filename)
            headers = {"X-Repo-Commit": commit.oid}
            if filename not in commit.files:
                return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}", headers)
            data = commit.files[filename]
            etag = f'"{git_blob_sha1(data)}"'
            headers.update({"ETag": etag, "X-Linked-Etag": etag, "Accept-Ranges": "bytes"})
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if ranged and self.command == "GET":
                start = int(ranged.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], headers, "application/octet-stream")
            self._send(200, data, headers, "application/octet-stream")

        # -- uploads --------------------------------------------------------------------------------------------

        def create_repo(self):
            payload = json.loads(self._body() or b"{}")
            repo_type = payload.get("type") or "model"
            if repo_type != "model":
                return self._error(400, None, f"hub stand-in: only model repos, got type={repo_type!r}")
            name, organization = payload["name"], payload.get("organization") or "user"
            repo_id = f"{organization}/{name}"
            url = f"{hub.endpoint}/{repo_id}"
            if repo_id in hub.repos:
                # the Hub's 409 carries the url too: create_repo(exist_ok=True) reads it
                message = "You already created this model repo"
                return self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
            hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            self._json(200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

        def validate_yaml(self):
            payload = json.loads(self._body() or b"{}")
            content = payload.get("content", "")
            if content.startswith("---") and content.count("---") < 2:
                return self._json(400, {"errors": [{"message": "unterminated YAML front matter"}], "warnings": []})
            self._json(200, {"errors": [], "warnings": []})

        def branch(self, repo, branch):
            payload = json.loads(self._body() or b"{}")
            repo_ = self._repo(repo)
            if repo_ is None:
                return
            branch = unquote(branch)
            if branch in repo_.branches:
                return self._error(409, None, f"Reference refs/heads/{branch} already exists")
            start = repo_.resolve(payload.get("startingPoint") or "main")
            if start is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {payload.get('startingPoint')}")
            with hub._lock:
                repo_.branches[branch] = start.oid
            self._json(200, {})

        def preupload(self, repo, revision):
            payload = json.loads(self._body() or b"{}")
            repo_ = self._repo(repo)
            commit = repo_ and self._commit_of(repo_, revision)
            if commit is None:
                return
            answers = []
            for item in payload.get("files", []):
                existing = commit.files.get(item["path"])
                regular = item["size"] <= REGULAR_UPLOAD_LIMIT
                answers.append({
                    "path": item["path"], "uploadMode": "regular" if regular else "lfs", "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None and regular else None,
                })  # fmt: skip
            self._json(200, {"files": answers, "commitOid": commit.oid})

        def commit(self, repo, revision):
            body = self._body()
            repo_ = self._repo(repo)
            commit = repo_ and self._commit_of(repo_, revision)
            if commit is None:
                return
            branch = unquote(revision)
            if branch not in repo_.branches:
                return self._error(400, None, f"hub stand-in: commits go to a branch, got {branch!r}")
            header, added, deleted = {}, {}, []
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    if value.get("encoding") != "base64":
                        return self._error(400, None, f"hub stand-in: unsupported encoding {value.get('encoding')!r}")
                    added[value["path"]] = base64.b64decode(value["content"])
                elif key in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                else:  # lfsFile: this stand-in stores no LFS objects
                    return self._error(400, None, f"hub stand-in: unsupported commit operation {key!r}")
            parent = header.get("parentCommit")
            if parent and parent != commit.oid:
                return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            with hub._lock:
                oid = hub._commit(repo_, branch, added, header.get("summary", ""), deleted)
            self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{hub.endpoint}/{repo}/commit/{oid}",
                             "pullRequestUrl": None})  # fmt: skip

        # -- verbs ----------------------------------------------------------------------------------------------

        def do_HEAD(self):
            self._route([(rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", self.resolve)])

        def agent_harnesses(self):
            # huggingface_hub 2.4 fetches this registry (at most daily) to tag its user agent; an empty one is valid
            self._json(200, {"standardEnvVars": [], "harnesses": {}})

        def do_GET(self):
            self._route([
                (r"/api/agent-harnesses", self.agent_harnesses),
                (rf"/api/models/{_REPO}", self.model_info),
                (rf"/api/models/{_REPO}/revision/(?P<revision>.+)", self.model_info),
                (rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", self.tree),
                (rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", self.resolve),
            ])  # fmt: skip

        def do_POST(self):
            self._route([
                (r"/api/repos/create", self.create_repo),
                (r"/api/validate-yaml", self.validate_yaml),
                (rf"/api/models/{_REPO}/branch/(?P<branch>.+)", self.branch),
                (rf"/api/models/{_REPO}/preupload/(?P<revision>.+)", self.preupload),
                (rf"/api/models/{_REPO}/commit/(?P<revision>.+)", self.commit),
            ])  # fmt: skip

        def do_PUT(self):
            self._route([])

        def do_DELETE(self):
            self._route([])

    return Handler
