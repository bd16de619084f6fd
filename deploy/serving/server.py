"""`minitron serve`: one model on PyTriton (Triton HTTP + gRPC) plus the OpenAI-compatible facade.

    minitron serve [--model DIR] [--backend pytorch|tensorrt_llm] [--host 127.0.0.1] [--port 8000]

Without --model: what `minitron model newest` names (the product of the default recipe's newest
distillation, else the embedded SmolLM2-135M-Instruct). Everything binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import re
import signal
import socket
import sys
import sysconfig
from pathlib import Path

from minitron.errors import MinitronError


#: --backend -> "module:class" of a `backend.Backend`. Imported only when chosen: TensorRT-LLM exists only
#: in its GPU container, and nothing of torch may load before `passive_omp_threads`.
BACKENDS = {"pytorch": "minitron.deploy.serving.torch_backend:TorchBackend",
            "tensorrt_llm": "minitron.deploy.serving.trtllm_backend:TensorRTLLMBackend"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="HF checkpoint folder, TensorRT-LLM engine folder or embedded:<name> "
                                   "(default: newest distilled student of the default recipe, else the embedded model)")
    p.add_argument("--backend", default="pytorch", choices=list(BACKENDS))
    p.add_argument("--host", default="127.0.0.1", help="address to bind every endpoint to (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="OpenAI-compatible API port")
    p.add_argument("--triton-http-port", type=int, default=8100)
    p.add_argument("--triton-grpc-port", type=int, default=8101)
    p.add_argument("--triton-metrics-port", type=int, default=8102)
    p.add_argument("--served-model-name", help="model name in Triton and /v1/models (default: from the folder)")
    p.add_argument("--tokenizer", help="tensorrt_llm with an engine folder: the HF folder with the tokenizer")
    p.add_argument("--device", help="pytorch backend: cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "bfloat16", "float32"], default="auto",
                   help="pytorch backend: weights dtype; auto = bf16 on GPUs and CPUs with native bf16, else fp32")
    p.add_argument("--max-batch-size", type=int, default=64, help="requests generated together at most")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="pytorch backend: how long a new batch waits for more requests")


# ---- which model ---------------------------------------------------------------------------------------
# The training side (recipe, run folder, models) imports torch, which must wait for passive_omp_threads,
# so these functions import it when called.
def default_model() -> Path:
    """The product of the default recipe's newest distillation, else the embedded default model
    (`minitron model newest`)."""
    from minitron.recipe import load_recipe
    from minitron.run_folder import RunFolder

    return RunFolder(load_recipe(None)).newest_or_default()  # the run's output_root is relative to cwd


def load_backend(kind: str, model_dir: Path, name: str, **options):
    """Build a backend; GPU-only backends fail with a one-line MinitronError where they cannot run."""
    if kind not in BACKENDS:
        raise MinitronError(f"--backend {kind!r}: unknown backend; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)(model_dir, name, **options)


def resolve_model(model: str | None) -> Path:
    from minitron.models import resolve_hf_source

    if model is None:
        return default_model()
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise MinitronError(f"--model {model}: no config.json; give an HF checkpoint or TensorRT-LLM engine folder")
    return resolve_hf_source(model)


def served_name(model_dir: Path) -> str:
    """A Triton-legal name: the folder, or `<run>-<stage>` for runs/<run>/<stage>/hf."""
    parts = model_dir.resolve().parts
    name = "-".join(parts[-3:-1]) if parts[-1] == "hf" and len(parts) >= 3 else parts[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


# ---- process set-up ------------------------------------------------------------------------------------
def fix_stub_libpython() -> None:
    """Point Triton's Python-backend stub at this interpreter's libpython (pytriton issue #51).

    The stub links libpython3.X.so.1.0 and otherwise loads the system one, whose patch release may differ
    from this interpreter's stdlib (then model load fails: `'_thread.RLock' object has no attribute
    '_recursion_count'`). PyTriton starts tritonserver with a copy of os.environ, so setting it here, before
    Triton starts, is enough; this process itself does not need it.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    if len(set(ports.values())) != len(ports):
        raise MinitronError(f"ports must differ: {ports}")
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise MinitronError(f"{flag} {port}: cannot bind {host}:{port} ({e.strerror}); pick another port")


# ---- serving -------------------------------------------------------------------------------------------
def passive_omp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spin (must happen before torch is imported).

    A server shares its cores between torch's intra-op threads and the facade, PyTriton and tritonserver;
    spinning OpenMP workers steal them, which on a small machine slows generation by an order of magnitude
    (docs/cpu.md). An OMP_WAIT_POLICY already set by the user wins.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def serve(args: argparse.Namespace) -> None:
    passive_omp_threads()
    if args.max_batch_size < 1 or args.batch_wait_ms < 0:
        raise MinitronError("--max-batch-size must be at least 1 and --batch-wait-ms not negative")
    model_dir = resolve_model(args.model)
    name = args.served_model_name or served_name(model_dir)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise MinitronError(f"--served-model-name {name!r}: use letters, digits, '.', '_' and '-' only")
    ports = {"--port": args.port, "--triton-http-port": args.triton_http_port,
             "--triton-grpc-port": args.triton_grpc_port, "--triton-metrics-port": args.triton_metrics_port}
    check_ports_free(args.host, ports)
    fix_stub_libpython()
    options = {"max_batch_size": args.max_batch_size}
    if args.backend == "pytorch":
        options.update(device=args.device, dtype=args.dtype, batch_wait_ms=args.batch_wait_ms)
    else:
        options.update(tokenizer_dir=args.tokenizer)
    backend = load_backend(args.backend, model_dir, name, **options)
    try:
        with _triton_errors(), _triton(args, name, backend) as triton:
            asyncio.run(_run_facade(args, name, backend, triton, model_dir))
            # Shutting down: a second Ctrl-C must not interrupt Triton's own clean stop half-way.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    finally:
        backend.close()
        if getattr(backend, "batches", 0):
            print(backend.summary(), flush=True)


@contextlib.contextmanager
def _triton_errors():
    """Triton failing to start or to load the model is one line for the user; the details are in its log."""
    from pytriton.exceptions import PyTritonError
    from tritonclient.utils import InferenceServerException

    try:
        yield
    except (PyTritonError, InferenceServerException, TimeoutError) as e:
        text = e.message() if callable(getattr(e, "message", None)) else str(e)
        first = text.strip().splitlines()[0].split("Traceback")[0].rstrip(" :") if text.strip() else type(e).__name__
        raise MinitronError(f"Triton could not serve the model: {first} (the full error is in the log above)") \
            from None


@contextlib.contextmanager
def _triton(args, name: str, backend):
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    from minitron.deploy.serving.triton_model import CancelModel, GenerateModel, cancel_inputs_outputs, triton_inputs_outputs

    config = TritonConfig(http_address=args.host, http_port=args.triton_http_port, grpc_address=args.host,
                          grpc_port=args.triton_grpc_port, metrics_address=args.host,
                          metrics_port=args.triton_metrics_port, exit_on_error=True, log_verbose=0)
    inputs, outputs = triton_inputs_outputs()
    # Decoupled: responses stream token by token. Dynamic batching: requests arriving within the queue delay
    # reach the model together; the backend then merges all waiting requests into one generation batch.
    model_config = ModelConfig(batching=True, max_batch_size=args.max_batch_size, decoupled=True,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=2000))
    generate = GenerateModel(backend)
    with Triton(config=config) as triton:
        triton.bind(model_name=name, infer_func=generate, inputs=inputs, outputs=outputs,
                    config=model_config, strict=False)
        inputs, outputs = cancel_inputs_outputs()
        triton.bind(model_name=f"{name}-cancel", infer_func=CancelModel(generate), inputs=inputs, outputs=outputs,
                    config=ModelConfig(batching=True, max_batch_size=args.max_batch_size), strict=False)
        yield triton


async def _run_facade(args, name: str, backend, triton, model_dir: Path) -> None:
    from aiohttp import web

    from minitron.deploy.serving.openai_api import OpenAIFacade

    facade = OpenAIFacade(name, f"grpc://{_url_host(args.host)}:{args.triton_grpc_port}", backend.context_length)
    runner = web.AppRunner(facade.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    _print_urls(args, name, model_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():  # also stop when tritonserver dies
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
            if not triton.is_alive():
                print("minitron serve: Triton stopped; shutting down", file=sys.stderr, flush=True)
                break
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"[{host}]" if ":" in host else host


def _print_urls(args, name: str, model_dir: Path) -> None:
    h = _url_host(args.host)
    print(f"minitron serve: model {name!r} from {model_dir} on the {args.backend} backend\n"
          f"  OpenAI API      http://{h}:{args.port}/v1  (/v1/models, /v1/completions, /v1/chat/completions, "
          f"/health)\n"
          f"  Triton HTTP     http://{h}:{args.triton_http_port}/v2/models/{name}\n"
          f"  Triton gRPC     grpc://{h}:{args.triton_grpc_port}  (decoupled/streaming model {name!r})\n"
          f"  Triton metrics  http://{h}:{args.triton_metrics_port}/metrics\n"
          f"ready (Ctrl-C stops)", flush=True)
