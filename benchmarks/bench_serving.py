"""Load run of `minitron serve` on CPU: dynamic batching vs one request at a time.

Starts `minitron serve` (PyTorch backend, embedded SmolLM2-135M-Instruct) on free ports, then sends greedy
chat completions through the OpenAI facade: (1) requests one at a time, (2) 64 concurrent clients x 8
requests each. Prints errors, throughput (completion tokens/s), p50/p99 latency, the throughput ratio and
the batch sizes; writes the numbers to runs/bench-serving/summary.json.

    make bench-serving            (or: .venv/bin/python benchmarks/bench_serving.py [--clients 64 ...])
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minitron.deploy.serving.client import ServerProcess, post  # noqa: E402
from minitron.io import write_json_atomic  # noqa: E402

TOPICS = ["the ocean", "a library", "mountains", "coffee", "trains", "the moon", "gardens", "music"]


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write one sentence about {TOPICS[i % len(TOPICS)]}. (request {i})"}]


def one_request(url: str, model: str, i: int, max_tokens: int) -> tuple[float, int, str | None]:
    body = {"model": model, "messages": messages(i), "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    try:
        status, answer = post(f"{url}/v1/chat/completions", body, timeout=900)
    except Exception as e:  # noqa: BLE001 - counted as an error, the run goes on
        return time.perf_counter() - start, 0, f"{type(e).__name__}: {e}"
    if status != 200:
        return time.perf_counter() - start, 0, f"HTTP {status}: {answer}"
    return time.perf_counter() - start, answer["usage"]["completion_tokens"], None


def run_clients(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    results: list[tuple[float, int, str | None]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(per_client):
            r = one_request(url, model, c * per_client + k, max_tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = np.array([r[0] for r in results])
    tokens = sum(r[1] for r in results)
    errors = [r[2] for r in results if r[2]]
    return {"clients": clients, "requests": len(results), "errors": len(errors), "first_errors": errors[:3],
            "completion_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_s": float(np.percentile(latencies, 50)), "p99_s": float(np.percentile(latencies, 99))}


def triton_batching(server) -> str:
    """Requests vs model executions from Triton's Prometheus metrics: the dynamic batcher's batch size."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {}
    for name in ("nv_inference_request_success", "nv_inference_exec_count"):
        values[name] = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                           if ln.startswith(name + "{") and f'model="{server.model}"' in ln)
    requests, executions = values["nv_inference_request_success"], values["nv_inference_exec_count"]
    return f"{requests:.0f} requests in {executions:.0f} executions (mean {requests / max(executions, 1):.1f})"


def line(label: str, r: dict) -> str:
    return (f"{label:<24} {r['requests']:4d} requests, {r['errors']} errors, {r['completion_tokens']} tokens in "
            f"{r['wall_s']:.1f} s = {r['tokens_per_s']:.1f} tokens/s, latency p50 {r['p50_s']:.2f} s, "
            f"p99 {r['p99_s']:.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests-per-client", type=int, default=8)
    p.add_argument("--sequential-requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", default="runs/bench-serving")
    args = p.parse_args()

    log = Path(args.out) / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with ServerProcess(args.model, "--max-batch-size", str(args.clients), log_path=log) as server:
        one_request(server.url, server.model, 0, args.max_tokens)  # warm-up (first-call allocations)
        sequential = run_clients(server.url, server.model, 1, args.sequential_requests, args.max_tokens)
        concurrent = run_clients(server.url, server.model, args.clients, args.requests_per_client, args.max_tokens)
        triton = triton_batching(server)
    engine = next((ln.strip() for ln in log.read_text().splitlines() if ln.startswith("pytorch backend:")), "")
    ratio = concurrent["tokens_per_s"] / sequential["tokens_per_s"]
    print(f"bench-serving: {server.model} ({args.model}), pytorch backend on CPU, greedy, "
          f"max_tokens={args.max_tokens}, /v1/chat/completions -> Triton (gRPC, decoupled)")
    print(line("one at a time:", sequential))
    print(line(f"{args.clients} concurrent clients:", concurrent))
    print(f"throughput ratio (concurrent / one at a time): {ratio:.2f}x")
    print(f"batching: Triton dynamic batcher {triton}; {engine or 'engine batch sizes not logged'}")
    for r in (sequential, concurrent):
        for e in r["first_errors"]:
            print(f"  error: {e}")
    write_json_atomic(Path(args.out) / "summary.json", {"model": args.model, "max_tokens": args.max_tokens,
                                                        "one_at_a_time": sequential, "concurrent": concurrent,
                                                        "throughput_ratio": ratio})
    return 1 if sequential["errors"] or concurrent["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
