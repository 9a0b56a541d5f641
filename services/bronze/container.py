"""The Bronze inference container: SageMaker's container contract on port 8080.

`GET /ping` answers 200 once the model is loaded; `POST /invocations` takes a JSON
job payload and returns the generated text. The same contract is what would be
deployed to SageMaker (with a GPU model inside); locally it runs llama.cpp on CPU,
in the Gold venv:

    .venv-gold/bin/python -m services.bronze.container --port 8080

Payload: {"messages": [{"role": ..., "content": ...}], "max_tokens": n,
          "temperature": t?, "seed": s?}
Answer:  {"text": "...", "usage": {"prompt_tokens": p, "completion_tokens": c}}
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tiermesh.chat import Message, chatml
from tiermesh.model import gguf_path

MAX_TOKENS = 512


class Model:
    """One llama.cpp instance; requests take turns (a Llama is not thread-safe)."""

    def __init__(self, threads: int) -> None:
        from llama_cpp import Llama

        self._llm = Llama(model_path=str(gguf_path()), n_ctx=2048, n_threads=threads, verbose=False)
        self._lock = threading.Lock()

    def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        messages = [Message(m["role"], m["content"]) for m in payload["messages"]]
        max_tokens = int(payload["max_tokens"])
        if not 0 < max_tokens <= MAX_TOKENS:
            raise ValueError(f"max_tokens {max_tokens} is outside 1..{MAX_TOKENS}")
        with self._lock:
            out = self._llm.create_completion(
                chatml(messages),
                max_tokens=max_tokens,
                temperature=float(payload.get("temperature", 0.7)),
                seed=int(payload.get("seed", -1)),
            )
        return {"text": out["choices"][0]["text"], "usage": {
            "prompt_tokens": out["usage"]["prompt_tokens"],
            "completion_tokens": out["usage"]["completion_tokens"],
        }}  # fmt: skip


def handler(model: Model) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._send(200 if self.path == "/ping" else 404, {"status": "healthy"})

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._send(404, {"error": "not found"})
                return
            try:
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(200, model.generate(payload))
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": f"{type(e).__name__}: {e}"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request is noise at this rate

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler(Model(args.threads)))
    server.serve_forever()


if __name__ == "__main__":
    main()
