"""A small in-memory Hugging Face Hub for tests, on 127.0.0.1 (port 0), speaking the HTTP API huggingface_hub 2.x uses:
whoami, repo creation, branches, preupload (regular or LFS), NDJSON commits, the LFS batch API, tree, model info,
resolve (HEAD/GET) and YAML validation. Standard library only."""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

TOKEN = "hf_test_token_not_real"


class Hub:
    def __init__(self, upload_mode: str = "regular"):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo → branch → path → content
        self.shas: dict[str, dict[str, str]] = {}
        self.lfs: dict[str, bytes] = {}
        self.snapshots: dict[str, dict[str, bytes]] = {}  # commit sha → files
        self.upload_mode = upload_mode
        self.fail_commits = 0  # answer the next N commits with HTTP 500
        self.commits = 0

    def sha(self, repo: str, rev: str) -> str:
        return self.shas[repo].get(rev, rev)

    def files(self, repo: str, rev: str) -> dict[str, bytes] | None:
        """A branch's files, or a commit's (huggingface_hub resolves branches to commit shas)."""
        return self.repos[repo].get(rev, self.snapshots.get(rev))

    def commit(self, repo: str, branch: str, files: dict[str, bytes]) -> str:
        self.repos[repo][branch].update(files)
        self.commits += 1
        digest = hashlib.sha1(f"{repo}{branch}{self.commits}".encode()).hexdigest()
        self.shas[repo][branch] = digest
        self.snapshots[digest] = dict(self.repos[repo][branch])
        return digest


class Handler(BaseHTTPRequestHandler):
    hub: Hub

    def log_message(self, *args):  # quiet
        pass

    # ---------------------------------------------------------------- helpers
    def send(self, status: int, body=None, headers: dict | None = None, head_only: bool = False):
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def repo_or_404(self, repo: str):
        if repo not in self.hub.repos:
            self.send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        return self.hub.repos[repo]

    # ---------------------------------------------------------------- routes
    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("HEAD")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method: str):
        path = unquote(urlparse(self.path).path)
        if path == "/api/whoami-v2":
            if not self.authorized():
                return self.send(401, {"error": "Invalid credentials in Authorization header"})
            return self.send(200, {"name": "tester", "type": "user", "orgs": [],
                                   "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if path == "/api/validate-yaml":
            return self.send(200, {"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            if not self.authorized():
                return self.send(401, {"error": "Unauthorized"})
            payload = json.loads(self.body())
            repo = f"{payload.get('organization') or 'tester'}/{payload['name']}"
            if repo in self.hub.repos:
                return self.send(409, {"error": "You already created this model repo", "url": repo})
            self.hub.repos[repo] = {"main": {}}
            self.hub.shas[repo] = {"main": hashlib.sha1(repo.encode()).hexdigest()}
            return self.send(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path):
            repo, branch = m.groups()
            if (branches := self.repo_or_404(repo)) is None:
                return None
            if branch in branches:
                return self.send(409, {"error": "Branch already exists"})
            branches[branch] = dict(branches["main"])
            self.hub.shas[repo][branch] = self.hub.shas[repo]["main"]
            return self.send(200, {})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
            files = json.loads(self.body())["files"]
            mode = self.hub.upload_mode
            return self.send(200, {"files": [{"path": f["path"], "uploadMode": mode, "shouldIgnore": False}
                                             for f in files]})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
            return self.commit(*m.groups())
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            objects = json.loads(self.body())["objects"]
            host = self.headers["Host"]
            return self.send(200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"http://{host}/lfs-upload/{o['oid']}"}}} for o in objects]})
        if m := re.fullmatch(r"/lfs-upload/([0-9a-f]+)", path):
            data = self.body()
            if hashlib.sha256(data).hexdigest() != m.group(1):
                return self.send(400, {"error": "oid mismatch"})
            self.hub.lfs[m.group(1)] = data
            return self.send(200, {})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            repo, rev = m.group(1), m.group(2)
            if (branches := self.repo_or_404(repo)) is None:
                return None
            return self.send(200, [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                                   for p, d in sorted((self.hub.files(repo, rev) or {}).items())])
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            repo, rev = m.group(1), m.group(2) or "main"
            if (branches := self.repo_or_404(repo)) is None:
                return None
            if (files := self.hub.files(repo, rev)) is None:
                return self.send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            return self.send(200, {"id": repo, "modelId": repo, "sha": self.hub.sha(repo, rev), "private": False,
                                   "siblings": [{"rfilename": p} for p in sorted(files)]})
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo, rev, file = m.groups()
            if (branches := self.repo_or_404(repo)) is None:
                return None
            data = (self.hub.files(repo, rev) or {}).get(file)
            if data is None:
                return self.send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            headers = {"X-Repo-Commit": self.hub.sha(repo, rev), "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return self.send(200, data, headers, head_only=method == "HEAD")
        return self.send(404, {"error": f"no route for {method} {path}"})

    def commit(self, repo: str, rev: str):
        if not self.authorized():
            return self.send(401, {"error": "Unauthorized"})
        if (branches := self.repo_or_404(repo)) is None:
            return None
        if self.hub.fail_commits:
            self.hub.fail_commits -= 1
            self.body()
            return self.send(500, {"error": "Internal Server Error"})
        files = {}
        for line in self.body().decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "lfsFile":
                files[item["value"]["path"]] = self.hub.lfs[item["value"]["oid"]]
        branch = rev if rev in branches else "main"
        sha = self.hub.commit(repo, branch, files)
        return self.send(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}", "commitOid": sha,
                               "success": True})


def start(upload_mode: str = "regular") -> tuple[ThreadingHTTPServer, Hub, str]:
    hub = Hub(upload_mode)
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hub, f"http://127.0.0.1:{server.server_address[1]}"


def hub_env(url: str, tmp_path: Path, token: str | None = TOKEN) -> dict:
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "home"),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def push_cli(folder: Path, repo: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_gpt.cli", "push", str(folder), repo, *extra], env=env,
                          capture_output=True, text=True, timeout=300)
