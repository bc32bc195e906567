"""A stand-in for the Hugging Face hub's HTTP API on loopback: the network boundary of a push.

It answers the calls ``HfApi.create_repo`` and ``HfApi.upload_folder`` make (repo creation,
README metadata validation, preupload, commit), asks for every file as a regular upload (content
inside the commit), and keeps what it received. Anything else is answered 404 and recorded, so a
test sees unexpected calls.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USER = "tester"


class FakeHub:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.commits: list[dict[str, Any]] = []  # {"repo", "message", "files": {path: bytes}}
        self.unexpected: list[str] = []
        self.validated: list[str] = []
        self.tokens: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.tokens.add(self.headers.get("Authorization", ""))
                self._answer(*hub.post(self.path.split("?")[0], body))

            def do_GET(self) -> None:
                hub.unexpected.append(f"GET {self.path}")
                self._answer(404, {"error": "not in the fake hub"})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        if path == "/api/repos/create":
            req = json.loads(body)
            self.created.append(req)
            repo = f"{req.get('organization') or USER}/{req['name']}"
            return 200, {"url": f"{self.endpoint}/{repo}", "name": repo}
        if path == "/api/validate-yaml":  # the README's metadata, checked before the commit
            return self._validate(json.loads(body)["content"])
        parts = path.split("/")  # /api/models/<ns>/<name>/<verb>/<revision>
        if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if len(parts) == 7 and parts[:3] == ["", "api", "models"] and parts[5] == "commit":
            return 200, self._commit(f"{parts[3]}/{parts[4]}", body)
        self.unexpected.append(f"POST {path}")
        return 404, {"error": "not in the fake hub"}

    def _validate(self, content: str) -> tuple[int, dict]:
        import yaml

        self.validated.append(content)
        head = content.split("---\n")
        meta = yaml.safe_load(head[1]) if content.startswith("---\n") and len(head) > 2 else None
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "no YAML metadata block"}]}
        return 200, {"warnings": []}

    def _commit(self, repo: str, body: bytes) -> dict:
        commit: dict[str, Any] = {"repo": repo, "files": {}}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                commit["message"] = item["value"]["summary"]
            elif item["key"] == "file":
                value = item["value"]
                commit["files"][value["path"]] = base64.b64decode(value["content"])
        self.commits.append(commit)
        return {"commitUrl": f"{self.endpoint}/{repo}/commit/abc", "commitOid": "abc"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
