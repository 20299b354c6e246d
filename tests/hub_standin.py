"""A stand-in for the Hugging Face Hub's write endpoints, served on 127.0.0.1 for upload tests.

It implements what huggingface_hub (checked with 2.4) calls for ``create_repo``, ``create_branch``,
``upload_folder`` (metadata validation, preupload, NDJSON commit) and pull requests, keeps the
files of every branch and pull request in memory, and records every request. The preupload response
sends every file inline ("regular"), so no LFS or Xet storage is needed. Requests without the
expected ``Authorization`` header get HTTP 401; unknown routes get 404 and are recorded in
``unexpected``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

USER = "stand-in-user"
TEST_TOKEN = "hf_StandInWriteToken0123456789abcdef"
_YAML_BLOCK = re.compile(r"^---\n(.*?)\n---\n", re.DOTALL)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Commit:
    oid: str
    ref: str
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[Commit] = field(default_factory=list)
    pull_requests: dict[int, dict[str, Any]] = field(default_factory=dict)


class StandInHub:
    """The hub's state and an HTTP server for it; use as a context manager."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[RecordedRequest] = []
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "StandInHub":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # --- routes; each returns (status, JSON body, extra headers) -----------------------------

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self.validate_yaml(json.loads(body))
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
        if method == "POST" and match:
            repo_id, action, ref = match.group(1), match.group(2), unquote(match.group(3))
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": f"Repository not found: {repo_id}"}, {"X-Error-Code": "RepoNotFound"}
            if action == "branch":
                return self.create_branch(repo, ref, json.loads(body or b"{}"))
            if ref not in repo.refs:
                return 404, {"error": f"Invalid rev id: {ref}"}, {"X-Error-Code": "RevisionNotFound"}
            if action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for file in files]}, {}
            return self.commit(repo, ref, body, create_pr="create_pr" in query)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/discussions(?:/(\d+))?", path)
        if match and match.group(1) in self.repos:
            repo = self.repos[match.group(1)]
            if method == "POST" and match.group(2) is None:
                return self.open_pull_request(repo, json.loads(body))
            if method == "GET" and match.group(2) is not None and int(match.group(2)) in repo.pull_requests:
                return 200, repo.pull_requests[int(match.group(2))], {}
        self.unexpected.append(f"{method} {path}")
        return 404, {"error": f"stand-in hub has no route {method} {path}"}, {}

    def create_repo(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.repos[repo_id] = Repo(repo_id=repo_id, private=private)
        return 200, {"url": url, "name": repo_id}, {}

    def validate_yaml(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """Check what the real endpoint rejects for model cards: YAML that is not a mapping, and model-index results without task, dataset or metric values."""
        match = _YAML_BLOCK.match(payload["content"])
        errors = []
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            metadata, errors = None, [{"message": f"invalid YAML: {error}"}]
        if metadata is not None and not isinstance(metadata, dict):
            errors.append({"message": "metadata is not a mapping"})
        for model in (metadata or {}).get("model-index", []) if isinstance(metadata, dict) else []:
            for result in model.get("results", []):
                if not result.get("task", {}).get("type") or not result.get("dataset", {}).get("type") or not result.get("dataset", {}).get("name"):
                    errors.append({"message": f"model-index result lacks task type or dataset type/name: {result}"})
                if any("type" not in metric or "value" not in metric for metric in result.get("metrics", [])):
                    errors.append({"message": f"model-index metric lacks type or value: {result}"})
        return (400, {"errors": errors}, {}) if errors else (200, {"warnings": []}, {})

    def create_branch(self, repo: Repo, branch: str, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if branch in repo.refs:
            return 409, {"error": f"Reference already exists: {branch}"}, {}
        start = payload.get("startingPoint") or "main"
        repo.refs[branch] = dict(repo.refs[start])
        return 200, {}, {}

    def open_pull_request(self, repo: Repo, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        num = len(repo.pull_requests) + 1
        repo.refs[f"refs/pr/{num}"] = dict(repo.refs["main"])
        repo.pull_requests[num] = {
            "num": num,
            "title": payload["title"],
            "isPullRequest": bool(payload.get("pullRequest")),
            "status": "draft",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "author": {"name": USER},
            "repo": {"name": repo.repo_id, "type": "model"},
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "events": [],
            "diff": "",
        }
        return 200, {"num": num, "url": f"{self.url}/{repo.repo_id}/discussions/{num}"}, {}

    def commit(self, repo: Repo, ref: str, body: bytes, *, create_pr: bool) -> tuple[int, Any, dict[str, str]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {}
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unsupported encoding {value.get('encoding')}"}, {}
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] not in ("header",):
                return 400, {"error": f"stand-in hub does not handle commit operation {line['key']}"}, {}
        pull_request_url = None
        if create_pr:
            status, response_body, _ = self.open_pull_request(repo, {"title": header["summary"], "pullRequest": True})
            ref = f"refs/pr/{response_body['num']}"
            pull_request_url = response_body["url"]
        repo.refs[ref].update(files)
        oid = hashlib.sha1(json.dumps([ref, header["summary"], sorted(files), len(repo.commits)]).encode()).hexdigest()
        repo.commits.append(Commit(oid=oid, ref=ref, summary=header["summary"], files=files))
        return 200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pull_request_url}, {}


def _make_handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            with hub.lock:
                hub.requests.append(RecordedRequest(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body))
                if parts.path == "/api/agent-harnesses":  # huggingface_hub's optional registry fetch, sent without a token
                    status, response_body, headers = 404, {"error": "not served by the stand-in hub"}, {}
                elif self.headers.get("Authorization") != f"Bearer {hub.token}":
                    status, response_body, headers = 401, {"error": "Invalid credentials in Authorization header"}, {}
                else:
                    status, response_body, headers = hub.route(self.command, parts.path, parse_qs(parts.query), body)
            data = json.dumps(response_body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = _handle
        do_POST = _handle
        do_PUT = _handle
        do_DELETE = _handle

    return Handler


def _is_loopback(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    return str(host) in ("127.0.0.1", "localhost", "::1") or str(host).startswith("127.")


@pytest.fixture
def no_outside_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any name lookup or connection to a host other than 127.0.0.1 fail in this process."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host):
            raise OSError(f"test blocked a lookup of {host!r}: only 127.0.0.1 may be contacted")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"test blocked a connection to {address!r}: only 127.0.0.1 may be contacted")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def stand_in_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_outside_network: None) -> Iterator[StandInHub]:
    """A running stand-in hub that huggingface_hub and mgm2fp talk to, online mode, with ``HF_TOKEN`` set."""
    import huggingface_hub.constants as constants

    with StandInHub(token=TEST_TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # read once at import by huggingface_hub
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
        yield hub
