"""A stand-in for ``python -m llama_cpp.server --model M --host H --port P --api_key K`` that loads
nothing: it answers ``GET /v1/models`` and ``POST /v1/completions`` with one token, as the real
server does, so that tests/llamacpp.py's venv check can be tested without llama.cpp."""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer({"object": "list", "data": [{"id": self.server.model, "object": "model"}]})

    def do_POST(self):
        asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tokens = min(asked.get("max_tokens") or 16, 1)
        self._answer({"object": "text_completion", "model": self.server.model,
                      "choices": [{"index": 0, "text": " Paris", "finish_reason": "length"}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--model", "--host", "--port", "--api_key"):
        parser.add_argument(flag)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, int(args.port)), Handler)
    server.model = args.model
    server.serve_forever()
