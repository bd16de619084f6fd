"""`minitron serve`: a real PyTriton server (tritonserver child process) plus the OpenAI facade.

The servers run as child processes on free ports, exactly as `minitron serve` runs; every test talks
to them over HTTP or gRPC. Greedy output is checked token for token against transformers' generate().
"""

from __future__ import annotations

import functools
import http.client
import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_minitron
from minitron.deploy.serving.client import ServerProcess, get, post, stream

# PyTriton's gRPC clients warn on every call that only the inference timeout applies.
pytestmark = pytest.mark.filterwarnings("ignore::pytriton.client.warnings.NotSupportedTimeoutWarning")

PROMPTS = ["The quick brown fox", "Llamas graze on the high plateau", "x"]


def _processes_left(pgid: int, wait_s: float = 15.0) -> list[str]:
    """Processes of the server's group still there after `wait_s` (tritonserver, stub, its helpers)."""
    deadline = time.monotonic() + wait_s
    while True:
        out = subprocess.run(["ps", "-eo", "pgid=,pid=,stat=,args="], capture_output=True, text=True).stdout
        left = [line for line in out.splitlines() if line.split()[0] == str(pgid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tiny_hf, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    srv = ServerProcess(tiny_hf, "--max-batch-size", "8", "--dtype", "fp32", log_path=log)  # vs an fp32 reference
    yield srv
    # Clean shutdown: SIGTERM ends the facade, Triton (its tritonserver child) and the engine; nothing is left.
    assert srv.stop() == 0, log.read_text()[-3000:]
    assert _processes_left(srv.process.pid) == []


@functools.lru_cache(maxsize=2)
def _offline_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _offline_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = _offline_model(model_dir)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=model.generation_config.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def _triton_stream(srv, **inputs) -> list[dict]:
    from pytriton.client import DecoupledModelClient

    with DecoupledModelClient(srv.triton_grpc, srv.model, inference_timeout_s=120) as client:
        return [{k: v.tolist() for k, v in r.items()} for r in client.infer_sample(**inputs)]


def _completion(srv, **body) -> tuple[int, dict]:
    return post(f"{srv.url}/v1/completions", {"model": srv.model, **body})


def test_triton_endpoint_and_facade_serve_the_same_model(server):
    with __import__("urllib.request").request.urlopen(f"{server.triton_http}/v2/health/ready") as r:
        assert r.status == 200
    assert get(f"{server.triton_http}/v2/models/{server.model}")[1]["name"] == server.model
    assert get(f"{server.url}/health") == (200, {"status": "ok", "model": server.model})
    assert [m["id"] for m in get(f"{server.url}/v1/models")[1]["data"]] == [server.model]
    responses = _triton_stream(server, prompt=np.array([b"hello"], dtype=object),
                               max_tokens=np.array([4], dtype=np.int32), temperature=np.array([0.0], np.float32))
    assert responses[-1]["finish_reason"] == [b"length"] and responses[-1]["completion_tokens"] == [4]
    status, body = _completion(server, prompt="hello", max_tokens=4, temperature=0)
    assert status == 200 and body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["text"] == b"".join(r["text"][0] for r in responses).decode()


def test_greedy_through_server_equals_generate(server, tiny_hf):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf)
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt)["input_ids"]
        expected = _offline_greedy(tiny_hf, prompt_ids, 12)
        responses = _triton_stream(server, prompt=np.array([prompt.encode()], dtype=object),
                                   max_tokens=np.array([12], dtype=np.int32),
                                   temperature=np.array([0.0], dtype=np.float32))
        tokens = [t for r in responses for t in r["token_ids"] if t >= 0]
        assert tokens == expected, prompt
        assert responses[-1]["prompt_tokens"] == [len(prompt_ids)]
        status, body = _completion(server, prompt=prompt, max_tokens=12, temperature=0)
        assert status == 200
        assert body["choices"][0]["text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(expected),
                                 "total_tokens": len(prompt_ids) + len(expected)}


def test_concurrent_requests_batched_in_flight_equal_generate(server, tiny_hf):
    """Requests arriving while others decode join the running batch; greedy results stay generate()'s."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf)
    jobs = [(PROMPTS[0], 120, 0.0), (PROMPTS[1], 12, 0.05), (PROMPTS[2], 12, 0.1), (PROMPTS[1] + "!", 12, 0.15)]
    answers = {}

    def run(i, prompt, max_tokens, delay):
        time.sleep(delay)
        answers[i] = _completion(server, prompt=prompt, max_tokens=max_tokens, temperature=0)

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (prompt, max_tokens, _) in enumerate(jobs):
        expected = _offline_greedy(tiny_hf, tokenizer(prompt)["input_ids"], max_tokens)
        status, body = answers[i]
        assert status == 200 and body["choices"][0]["text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert body["usage"]["completion_tokens"] == len(expected)


def test_sse_stream_ends_with_done_and_matches_non_streamed(server):
    body = {"model": server.model, "prompt": PROMPTS[1], "max_tokens": 20, "temperature": 0}
    events = list(stream(f"{server.url}/v1/completions", {**body, "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]["usage"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    status, whole = post(f"{server.url}/v1/completions", body)
    assert status == 200 and streamed == whole["choices"][0]["text"] and usage == whole["usage"]


def test_sampling_parameters(server):
    sampled = dict(prompt=PROMPTS[0], max_tokens=10, temperature=0.9, top_p=0.9, top_k=40)
    first = _completion(server, **sampled, seed=7)[1]["choices"][0]["text"]
    assert _completion(server, **sampled, seed=7)[1]["choices"][0]["text"] == first  # seeded: reproducible
    greedy = _completion(server, prompt=PROMPTS[0], max_tokens=10, temperature=0)[1]["choices"][0]["text"]
    stop = greedy[3:5]
    status, body = _completion(server, prompt=PROMPTS[0], max_tokens=10, temperature=0, stop=[stop])
    choice = body["choices"][0]
    assert status == 200 and choice["finish_reason"] == "stop" and choice["text"] == greedy[:greedy.index(stop)]


def _reference_logprobs(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """transformers' fp32 log-softmax at every position of `ids` (row j predicts token j + 1)."""
    with torch.no_grad():
        return _offline_model(model_dir)(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_completion_logprobs_and_echo_match_transformers(server, tiny_hf):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf)
    for prompt in (PROMPTS[0], tokenizer(PROMPTS[1])["input_ids"]):  # text, and token ids used as they are
        prompt_ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
        generated = _offline_greedy(tiny_hf, prompt_ids, 6)
        ids = prompt_ids + generated
        reference = _reference_logprobs(tiny_hf, ids)
        status, body = _completion(server, prompt=prompt, max_tokens=6, temperature=0, logprobs=3, echo=True)
        assert status == 200, body
        choice, logprobs = body["choices"][0], body["choices"][0]["logprobs"]
        assert choice["text"] == tokenizer.decode(prompt_ids) + tokenizer.decode(generated, skip_special_tokens=True)
        assert logprobs["tokens"] == [tokenizer.decode([i]) for i in ids]
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        expected = reference[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        torch.testing.assert_close(torch.tensor(logprobs["token_logprobs"][1:]), expected, atol=1e-4, rtol=0)
        for row, top in zip(reference, logprobs["top_logprobs"][1:]):
            assert max(top.values()) == pytest.approx(row.max().item(), abs=1e-4)
            assert 1 <= len(top) <= 4  # the 3 best and the chosen token (texts may coincide)
        # greedy tokens: their logprob is exactly the best one (lm-eval's is_greedy compares these floats)
        assert all(lp == max(top.values()) for lp, top in zip(logprobs["token_logprobs"][len(prompt_ids):],
                                                              logprobs["top_logprobs"][len(prompt_ids):]))
        offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(ids))]
        assert logprobs["text_offset"] == offsets
        # max_tokens 0 scores the prompt only: the same prompt numbers, nothing generated
        status, scored = _completion(server, prompt=prompt, max_tokens=0, logprobs=0, echo=True)
        assert status == 200 and scored["usage"]["completion_tokens"] == 0
        assert scored["choices"][0]["finish_reason"] == "length"
        assert scored["choices"][0]["logprobs"]["token_logprobs"] == logprobs["token_logprobs"][:len(prompt_ids)]


def test_several_prompts_in_one_request_give_one_choice_each(server):
    prompts = [PROMPTS[0], PROMPTS[2], [5, 6, 7]]
    alone = [_completion(server, prompt=p, max_tokens=5, temperature=0, logprobs=1)[1] for p in prompts]
    status, body = _completion(server, prompt=prompts, max_tokens=5, temperature=0, logprobs=1)
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2]
    for choice, single in zip(body["choices"], alone):
        assert choice["text"] == single["choices"][0]["text"]
        torch.testing.assert_close(choice["logprobs"]["token_logprobs"],
                                   single["choices"][0]["logprobs"]["token_logprobs"], atol=1e-4, rtol=0)
    assert body["usage"]["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in alone)


def test_streamed_logprobs_equal_non_streamed(server):
    body = {"model": server.model, "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "logprobs": 2}
    events = list(stream(f"{server.url}/v1/completions", body))[:-1]
    parts = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["logprobs"]]
    whole = post(f"{server.url}/v1/completions", body)[1]["choices"][0]["logprobs"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for part in parts for x in part[key]] == whole[key], key


def test_lm_eval_local_completions_against_the_server_equals_direct_lm_eval(server, tiny_hf):
    """lm-eval's own `local-completions` model scoring a loglikelihood task through the server (token-id prompts,
    echo, logprobs, several prompts per request) = lm-eval on the checkpoint itself: same items, same answers."""
    pytest.importorskip("lm_eval")
    from minitron.evaluation.lm_eval_tasks import run_lm_eval

    settings = dict(limit=12, batch_size=4, samples=True, bootstrap_iters=100)
    direct = run_lm_eval(tiny_hf, ["pydocs_choice"], **settings)["pydocs_choice"]
    served = run_lm_eval(tiny_hf, ["pydocs_choice"], endpoint=f"{server.url}/v1", **settings)["pydocs_choice"]
    assert served["n_samples"] == direct["n_samples"] == 12
    for metric in ("acc", "acc_norm"):
        assert served["metrics"][metric]["value"] == direct["metrics"][metric]["value"], metric
    for a, b in zip(direct["samples"], served["samples"]):
        assert a["doc_id"] == b["doc_id"]
        torch.testing.assert_close([r[0] for r in b["filtered_resps"]], [r[0] for r in a["filtered_resps"]],
                                   atol=1e-3, rtol=0)


def _raw_post(srv, path: str, raw: bytes, method: str = "POST") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request(method, path, body=raw, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


BAD_REQUESTS = [
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 4', 400, "not valid JSON"),
    ("/v1/completions", b'[1, 2]', 400, "JSON object"),
    ("/v1/completions", b"[" * 100_000, 400, "nested too deeply"),  # RecursionError in the parser, not a 500
    ("/v1/completions", b'{"max_tokens": 4}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": -3}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 10000000}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 16384}', 400, "context"),
    ("/v1/completions", json.dumps({"prompt": "x" * 16400, "max_tokens": 1}).encode(), 400, "context"),
    ("/v1/completions", b'{"prompt": "hi", "model": "gpt-4"}', 404, "does not exist"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": 7}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "hi", "stop": [1]}', 400, "stop"),
    ("/v1/completions", b'{"prompt": "hi", "n": 3}', 400, "n=1"),
    ("/v1/completions", b'{"prompt": "hi", "logprobs": 6}', 400, "`logprobs` must be an integer in [0, 5]"),
    ("/v1/completions", b'{"prompt": "hi", "logprobs": -1}', 400, "`logprobs`"),
    ("/v1/completions", b'{"prompt": "hi", "echo": true, "stream": true}', 400, "`echo` is not supported"),
    ("/v1/completions", b'{"prompt": "hi", "echo": "yes"}', 400, "`echo` must be true or false"),
    ("/v1/completions", b'{"prompt": ["a", "b"], "stream": true}', 400, "`stream` takes one prompt"),
    ("/v1/completions", b'{"prompt": [1, "a"]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": [[]]}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": [3, 999999]}', 400, "vocabulary"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', 400,
     "`top_logprobs` needs `logprobs: true`"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, '
                             b'"top_logprobs": 21}', 400, "`top_logprobs` must be an integer in [0, 20]"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": 1}', 400,
     "`logprobs` must be true or false"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0]"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "chat template"),
    ("/v1/nothing", b'{}', 404, "Not Found"),
]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    for path, raw, status, words in BAD_REQUESTS:
        got, body = _raw_post(server, path, raw)
        assert got == status and words in body["error"]["message"], (path, raw[:60], got, body)
    assert _raw_post(server, "/v1/completions", b"", method="GET")[0] == 405
    status, body = _completion(server, prompt="still alive?", max_tokens=3, temperature=0)
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_client_disconnect_mid_stream_leaves_others_served(server):
    results = []

    def normal_request():
        results.append(_completion(server, prompt=PROMPTS[0], max_tokens=30, temperature=0))

    others = [threading.Thread(target=normal_request) for _ in range(4)]
    for t in others:
        t.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"}, body=json.dumps(
        {"prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0, "stream": True}))
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    conn.sock.close()  # hang up mid-stream
    conn.close()
    for t in others:
        t.join()
    assert [r[0] for r in results] == [200] * 4
    assert all(r[1]["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
    assert _completion(server, prompt="after", max_tokens=2, temperature=0)[0] == 200


def test_cancel_model_stops_a_running_request(server):
    from pytriton.client import ModelClient

    streamed = []
    worker = threading.Thread(target=lambda: streamed.extend(_triton_stream(
        server, prompt=np.array([b"count"], dtype=object), max_tokens=np.array([2000], dtype=np.int32),
        temperature=np.array([0.0], dtype=np.float32), request_id=np.array([b"req-1"], dtype=object))))
    worker.start()
    with ModelClient(server.triton_grpc, f"{server.model}-cancel") as cancel:
        deadline = time.monotonic() + 60
        while not cancel.infer_sample(request_id=np.array([b"req-1"], dtype=object))["cancelled"][0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    worker.join(timeout=60)
    assert streamed[-1]["finish_reason"] == [b"abort"] and streamed[-1]["completion_tokens"][0] < 2000


def test_serve_errors_are_one_line(tiny_hf):
    import socket

    from minitron.deploy.serving.server import resolve_model
    from minitron.errors import MinitronError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_minitron("serve", "--model", str(tiny_hf), "--port", str(port))
    assert result.returncode == 2 and result.stderr.startswith(f"error: --port {port}: cannot bind")
    assert result.stderr.strip().count("\n") == 0, result.stderr
    with pytest.raises(MinitronError, match="no config.json"):
        resolve_model("/nonexistent/model")


def test_text_stream_holds_back_a_possible_stop_string():
    from conftest import byte_tokenizer
    from minitron.deploy.serving.backend import TextStream

    tokenizer = byte_tokenizer()
    ids = tokenizer("hello world, hello moon")["input_ids"]
    stream, pieces = TextStream(tokenizer, ("o m", "xyz")), []
    for i, token in enumerate(ids):
        text, stopped = stream.push(token, last=i == len(ids) - 1)
        pieces.append(text)
        if stopped:
            break
    assert stopped and "".join(pieces) == "hello world, hell"
    assert all("o " not in p for p in pieces[-2:])  # "o" waited: it could have started "o m"
    full = TextStream(tokenizer, ())
    assert "".join(full.push(t, last=i == len(ids) - 1)[0] for i, t in enumerate(ids)) == "hello world, hello moon"


def test_tensorrt_llm_backend_needs_a_gpu(tiny_hf):
    from minitron.deploy.serving.server import load_backend
    from minitron.errors import MinitronError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the TensorRT-LLM backend could start")
    with pytest.raises(MinitronError, match="needs an NVIDIA GPU"):
        load_backend("tensorrt_llm", tiny_hf, "tiny")


def write_demo_run_folder(root: Path, legacy: bool = False) -> Path:
    """The distill stages of a finished CPU demo, as the demo writes them: width and depth trained together (depth
    finished last, `trained_with` width), then the width student from the uncorrected teacher, newest of all."""
    run = root / "smollm2-135m_minitron_cpu"
    stages = [("distill-width", {}), ("distill-depth", {"trained_with": "distill-width"}),
              ("distill-width@teacher" if legacy else "distill-width@uncorrected", {})]
    for i, (stage, extra) in enumerate(stages):
        (run / stage / "hf").mkdir(parents=True)
        (run / stage / "hf" / "config.json").write_text("{}")
        summary = {"hf": "./" + stage + "/hf", "finished": f"2026-12-03T10:00:0{i}Z", **extra}
        (run / stage / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.mark.parametrize("legacy", [False, True])
def test_default_model_is_the_product_of_the_newest_distillation(tmp_path, monkeypatch, legacy):
    import os

    from minitron.deploy.serving.server import default_model, fix_stub_libpython, served_name

    run = write_demo_run_folder(tmp_path / "runs", legacy)
    monkeypatch.chdir(tmp_path)
    assert default_model() == Path("runs/smollm2-135m_minitron_cpu/distill-width/hf")  # not the depth student
    (run / "distill-depth" / "summary.json").write_text(json.dumps({"hf": "./distill-depth/hf",
                                                                     "finished": "2026-12-03T11:00:00Z"}))
    assert default_model() == Path("runs/smollm2-135m_minitron_cpu/distill-depth/hf")  # distilled later, alone
    assert served_name(run / "distill-depth" / "hf") == "smollm2-135m_minitron_cpu-distill-depth"
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    fix_stub_libpython()
    import sysconfig

    assert os.environ["LD_LIBRARY_PATH"].split(":") == [sysconfig.get_config_var("LIBDIR"), "/somewhere"]


def test_make_export_takes_the_corrected_teachers_width_student(tmp_path):
    """`make -n export` in a demo run folder names the width student distilled from the corrected teacher."""
    write_demo_run_folder(tmp_path / "runs")
    proc = subprocess.run(["make", "-n", "export", f"OUT={tmp_path / 'runs'}"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--model {tmp_path}/runs/smollm2-135m_minitron_cpu/distill-width/hf " in proc.stdout
    assert "runs/export/distill-width-trtllm-fp8" in proc.stdout


@pytest.mark.smollm2
def test_smollm2_chat_through_server_equals_generate(smollm2_hf, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = tokenizer.decode(_offline_greedy(smollm2_hf, prompt_ids, 24), skip_special_tokens=True)
    with ServerProcess("embedded:smollm2-135m-instruct", "--dtype", "fp32", log_path=tmp_path / "serve.log") as srv:
        body = {"model": srv.model, "messages": messages, "max_tokens": 24, "temperature": 0}
        status, answer = post(f"{srv.url}/v1/chat/completions", body)
        assert status == 200 and answer["choices"][0]["message"]["content"] == expected
        assert answer["usage"]["prompt_tokens"] == len(prompt_ids)
        events = list(stream(f"{srv.url}/v1/chat/completions", body))
        assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == expected
        _openai_sdk_against(srv, messages, expected, smollm2_hf, tokenizer)
    assert srv.process.returncode == 0 and _processes_left(srv.process.pid) == []


def _openai_sdk_against(srv, messages, expected: str, model_dir: Path, tokenizer) -> None:
    """The official `openai` SDK: chat with logprobs, streaming with usage, completions with logprobs and echo,
    and a refused request raised as openai.BadRequestError."""
    import openai

    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model=srv.model, messages=messages, max_tokens=24, temperature=0,
                                          logprobs=True, top_logprobs=3)
    choice = chat.choices[0]
    assert choice.message.content == expected and chat.usage.completion_tokens == len(choice.logprobs.content)
    generated = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c.token)) for c in choice.logprobs.content]
    assert all(len(t) == 1 for t in generated)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    reference = _reference_logprobs(model_dir, prompt_ids + [t[0] for t in generated])[len(prompt_ids) - 1:-1]
    for position, row in zip(choice.logprobs.content, reference):
        assert position.logprob == pytest.approx(row.max().item(), abs=1e-3)  # greedy: the best token
        assert [t.logprob for t in position.top_logprobs] == sorted(t.logprob for t in position.top_logprobs)[::-1]
        assert position.top_logprobs[0].logprob == position.logprob and len(position.top_logprobs) == 3
    chunks = list(client.chat.completions.create(model=srv.model, messages=messages, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    completion = client.completions.create(model=srv.model, prompt="The capital of France is", max_tokens=4,
                                           temperature=0, logprobs=2, echo=True)
    logprobs = completion.choices[0].logprobs
    assert completion.choices[0].text.startswith("The capital of France is")
    assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == completion.usage.total_tokens
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=srv.model, messages=messages, logprobs=True, top_logprobs=50)
