"""A small, real OpenAI-compatible chat-completions server for tests (http.server in a thread, 127.0.0.1).

It answers deterministically: for a classification prompt (labels in the ``response_format`` JSON
schema enum, else the ``- name`` lines of the system prompt) the label sharing the most words with
the last user message (ties: the first listed); for anything else a short reply that echoes the
message. Every answer carries ``usage``; with ``logprobs`` requested it carries token log-probabilities.

Failures are scheduled by directives in the last user message, counted per message text:

- ``#429x2``: the first 2 attempts get 429 with ``Retry-After: <retry_after>`` (seconds);
  ``#429datex1``: the same with Retry-After as an HTTP date ``retry_after`` seconds ahead;
- ``#500x1``, ``#503x1``: the first attempt gets that status; ``#500always``, ``#400always``: every one;
  ``#401always``: a 401 whose body repeats the request's Authorization header;
- ``#slowx1``: the first attempt is answered after ``slow_s`` seconds (past the client's timeout);
  ``#delayalways``: every attempt is answered after ``delay_s`` seconds (to see requests overlap);
- ``#badjsonx1``: the first attempt gets a 200 whose body is not valid JSON;
- ``#echoauth``: every attempt gets a 500 whose body repeats the request's Authorization header;
- ``#garbage``: the answer is not any label; ``#nousage``: the answer has no ``usage``.

``structured=False`` makes the server refuse ``response_format`` with a 400, as servers without
structured output do; ``logprobs=False`` ignores the logprobs request. ``requests`` lists every
request received (path, status, body, headers, time), so tests count them at the server;
``max_in_flight`` is the most requests it was answering at once.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIRECTIVE = re.compile(r"#(429date|429|500|503|slow|delay|badjson|400|401)(?:x(\d+)|(always))")


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower().replace("_", " ")) if len(w) >= 3}


def _tokens(text: str) -> list[str]:
    """Word, space and punctuation pieces that join back to ``text`` exactly."""
    return re.findall(r"\w+|\s+|[^\w\s]", text)


class OpenAIStub:
    def __init__(
        self,
        *,
        structured: bool = True,
        logprobs: bool = True,
        retry_after: float = 1.0,
        slow_s: float = 2.0,
        delay_s: float = 0.2,
    ) -> None:
        self.structured = structured
        self.logprobs = logprobs
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                stub._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}/v1"

    # -- lifecycle

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until no request is being answered.

        A slow answer is recorded when the stub finally sends it, which under load can be after the
        client gave up and the test moved on; counting before it lands would be a race.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.in_flight == 0:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"the stub still answers {self.in_flight} request(s) after {timeout_s:g} s")

    def count(self) -> int:
        self.settle()
        with self.lock:
            return len(self.requests)

    def reset(self) -> None:
        self.settle()
        with self.lock:
            self.requests.clear()
            self.attempts.clear()
            self.max_in_flight = 0

    # -- answers

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(handler)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send(handler, 400, {"error": {"message": "body is not JSON"}}, record=None)
        messages = body.get("messages") or []
        last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        last = last if isinstance(last, str) else json.dumps(last)
        with self.lock:
            self.attempts[last] += 1
            attempt = self.attempts[last]
        record = {
            "path": handler.path,
            "body": body,
            "time": time.monotonic(),
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "attempt": attempt,
            "text": last,
        }

        if handler.path.rstrip("/") != "/v1/chat/completions":
            return self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}}, record)
        if "#echoauth" in last:
            return self._send(
                handler,
                500,
                {
                    "error": {
                        "message": "upstream failed for request with "
                        f"Authorization: {handler.headers.get('Authorization')}"
                    }
                },
                record,
            )
        for kind, times, always in DIRECTIVE.findall(last):
            if not (always or attempt <= int(times)):
                continue
            if kind == "429":
                return self._send(
                    handler,
                    429,
                    {"error": {"message": "rate limited"}},
                    record,
                    {"Retry-After": f"{self.retry_after:g}"},
                )
            if kind == "429date":
                when = email.utils.formatdate(time.time() + self.retry_after, usegmt=True)
                return self._send(handler, 429, {"error": {"message": "rate limited"}}, record, {"Retry-After": when})
            if kind in ("500", "503", "400"):
                return self._send(handler, int(kind), {"error": {"message": f"scheduled {kind}"}}, record)
            if kind == "401":  # as a careless server might: the refused key repeated in the error
                return self._send(
                    handler, 401, {"error": {"message": f"invalid key {handler.headers.get('Authorization')}"}}, record
                )
            if kind == "slow":
                time.sleep(self.slow_s)
            if kind == "delay":
                time.sleep(self.delay_s)
            if kind == "badjson":
                return self._send_raw(handler, 200, b'{"id": "chatcmpl-bad", "choices": [{"index": 0, "mess', record)
        if body.get("response_format") is not None and not self.structured:
            return self._send(
                handler,
                400,
                {
                    "error": {
                        "message": "response_format is not supported by this server",
                        "type": "invalid_request_error",
                    }
                },
                record,
            )

        labels, structured = self._labels(body, messages)
        if labels is None:
            content = "Thanks for your message about " + " ".join(last.split()[:6])
            ranked: list[str] = []
        else:
            ranked = sorted(labels, key=lambda name: -len(_words(name) & _words(last)))  # stable: ties keep order
            chosen = "no idea, maybe pizza" if "#garbage" in last else ranked[0]
            content = json.dumps({"label": chosen}) if structured else chosen
        prompt_chars = sum(len(m.get("content") or "") for m in messages)
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{attempt}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
        if "#nousage" not in last:
            prompt_tokens = prompt_chars // 4 + 3 * len(messages)
            completion_tokens = max(1, len(content) // 4)
            answer["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        if body.get("logprobs") and self.logprobs:
            answer["choices"][0]["logprobs"] = {
                "content": self._logprobs(content, ranked, body.get("top_logprobs") or 0)
            }
        self._send(handler, 200, answer, record)

    @staticmethod
    def _labels(body: dict, messages: list[dict]) -> tuple[list[str] | None, bool]:
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
        enum = ((schema.get("properties") or {}).get("label") or {}).get("enum")
        if enum:
            return list(enum), True
        system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
        listed = [line[2:].strip() for line in system.splitlines() if line.startswith("- ")]
        return (listed or None), False

    @staticmethod
    def _logprobs(content: str, ranked: list[str], top: int) -> list[dict]:
        """Token log-probabilities: 0.7 on the first token of the answer's value, 0.99 on the others;
        the first token's alternatives are the runner-up label's first word (0.2) and "maybe" (0.05)."""
        pieces = _tokens(content)
        value_start = content.find(ranked[0]) if ranked else -1
        out, at, first_done = [], 0, False
        for piece in pieces:
            is_first = not first_done and value_start >= 0 and at >= value_start and piece.strip()
            logprob = math.log(0.7) if is_first else math.log(0.99)
            alternatives = [{"token": piece, "logprob": logprob, "bytes": None}]
            if is_first:
                first_done = True
                if len(ranked) > 1:
                    alternatives.append({"token": _tokens(ranked[1])[0], "logprob": math.log(0.2), "bytes": None})
                alternatives.append({"token": "maybe", "logprob": math.log(0.05), "bytes": None})
            out.append({"token": piece, "logprob": logprob, "bytes": None, "top_logprobs": alternatives[: max(top, 1)]})
            at += len(piece)
        return out

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: dict,
        record: dict | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send_raw(handler, status, json.dumps(payload).encode(), record, headers)

    def _send_raw(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        record: dict | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if record is not None:
            record["status"] = status
            with self.lock:
                self.requests.append(record)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass
