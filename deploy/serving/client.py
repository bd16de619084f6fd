"""A small stdlib client for the OpenAI-compatible facade (`minitron query`, `make query`, tests, benchmark)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Iterator

from minitron.errors import MinitronError


def post(url: str, body: dict | bytes, timeout: float = 600.0) -> tuple[int, dict]:
    """POST JSON; return (status, parsed JSON body), also for 4xx/5xx answers."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def stream(url: str, body: dict, timeout: float = 600.0) -> Iterator[dict | str]:
    """POST with stream=true; yield each SSE event's JSON, then the literal "[DONE]"."""
    request = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            yield "[DONE]" if payload == "[DONE]" else json.loads(payload)


def chunk_text(event: dict) -> str:
    choice = (event.get("choices") or [{}])[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default="What is the capital of France?")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's OpenAI API address")
    p.add_argument("--completion", action="store_true", help="plain completion instead of chat")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--stream", action="store_true", help="print tokens as they arrive")


def query(args: argparse.Namespace) -> dict:
    """One request to a running server; the answer goes to stdout, its token counts to stderr."""
    base = args.url.rstrip("/")
    try:
        _, models = get(f"{base}/v1/models")
    except (urllib.error.URLError, OSError) as e:
        raise MinitronError(f"no server at {base} ({getattr(e, 'reason', e)}); start one with `make serve`") from None
    body = {"model": models["data"][0]["id"], "max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.completion:
        url, body = f"{base}/v1/completions", {**body, "prompt": args.prompt}
    else:
        url, body = f"{base}/v1/chat/completions", {**body, "messages": [{"role": "user", "content": args.prompt}]}
    if args.stream:
        for event in stream(url, {**body, "stream_options": {"include_usage": True}}):
            if event != "[DONE]":
                print(chunk_text(event), end="", flush=True)
        print()
        return {}
    status, answer = post(url, body)
    if status != 200:
        raise MinitronError(f"{url}: HTTP {status}: {answer.get('error', {}).get('message', answer)}")
    choice, usage = answer["choices"][0], answer["usage"]
    print(choice.get("text") if args.completion else choice["message"]["content"])
    print(f"[{answer['model']}: finish_reason={choice['finish_reason']}, prompt_tokens={usage['prompt_tokens']}, "
          f"completion_tokens={usage['completion_tokens']}]", file=sys.stderr)
    return {}


# ---- starting a server from Python (tests, benchmark) --------------------------------------------------
def free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServerProcess:
    """`minitron serve` in a child process on free ports; `stop()` ends it and everything it started."""

    def __init__(self, model: str, *extra: str, log_path=None, startup_timeout: float = 300.0):
        import subprocess
        import time

        self.port, self.triton_http_port, self.triton_grpc_port, self.metrics_port = free_ports(4)
        self.url = f"http://127.0.0.1:{self.port}"
        self.triton_grpc = f"grpc://127.0.0.1:{self.triton_grpc_port}"
        self.triton_http = f"http://127.0.0.1:{self.triton_http_port}"
        self.log = open(log_path or os.devnull, "w")
        # Its own session: stop() can then signal the server and its tritonserver child by group id.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "minitron.cli", "serve", "--model", str(model), "--port", str(self.port),
             "--triton-http-port", str(self.triton_http_port), "--triton-grpc-port", str(self.triton_grpc_port),
             "--triton-metrics-port", str(self.metrics_port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MinitronError(f"minitron serve exited with {self.process.returncode} (log: {log_path})")
            try:
                if get(f"{self.url}/health", timeout=2)[0] == 200:
                    self.model = get(f"{self.url}/v1/models")[1]["data"][0]["id"]
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise MinitronError(f"minitron serve did not become ready in {startup_timeout:.0f}s (log: {log_path})")

    def stop(self, timeout: float = 90.0) -> int:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()
