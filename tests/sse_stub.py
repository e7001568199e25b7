"""A local HTTP server that answers as vLLM's streamed /v1/completions does, as far as the
past-native proof (qwenprep.engines.proof.run_proof) reads it: no engine, a real socket."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


def answering(status: int, events: list[dict[str, Any]]) -> tuple[Any, str]:
    """A local HTTP server whose /v1/completions answers STATUS with EVENTS as SSE; returns
    (the server: shutdown() stops it, its base URL)."""

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.end_headers()
            if status != 200:
                self.wfile.write(b'{"error": {"message": "prompt too long"}}')
                return
            for e in events:
                self.wfile.write(b"data: " + json.dumps(e).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
