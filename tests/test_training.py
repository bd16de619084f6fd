"""The Megatron training loop on tiny models: KD and LM, exact under TP/PP/DP, resumable after kill -9."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, stage_summary, write_corpus, write_tiny_llama, write_tiny_recipe, write_train_yaml
from minitron.conversion.convert import hf_to_nemo
from minitron import config
from minitron.data import DataConfig
from minitron.errors import MinitronError
from minitron.run_folder import RunFolder
from minitron.runtime.precision import fp32_on_cpu
from minitron.training.config import KDConfig, TrainConfig
from minitron.training.loop import TrainJob, train


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    teacher = write_tiny_llama(root / "teacher_hf")
    student = write_tiny_llama(root / "student_hf", seed=5, intermediate_size=64, num_hidden_layers=2)
    hf_to_nemo(teacher, root / "teacher")
    hf_to_nemo(student, root / "student")
    write_corpus(root / "corpus.txt")
    return root


def make_job(models, out, teacher=True, **train_kw):
    base = dict(steps=6, micro_batch_size=2, global_batch_size=8, warmup_steps=1, lr=1e-3, eval_interval=3,
                save_interval=3, eval_samples=4, precision="fp32")
    base.update(train_kw)
    data = DataConfig(source=str(models / "corpus.txt"), seq_length=32, cache_dir=str(models / "data"))
    return TrainJob(student=str(models / "student"), teacher=str(models / "teacher") if teacher else None,
                    output=str(out), data=data, train=TrainConfig(**base))


def losses(out):
    last = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        last[m["step"]] = m
    return [last[s]["loss"] for s in sorted(last)]


def test_distillation_reduces_kd_loss_and_exports(models, tmp_path):
    result = train(make_job(models, tmp_path / "kd", steps=8))
    curve = losses(tmp_path / "kd")
    assert curve[-1] < 0.8 * curve[0]
    assert result["validation"]["kd_loss"] > 0 and result["teacher_validation_loss"] > 0
    assert (tmp_path / "kd/nemo/weights/.metadata").is_file()
    kept = sorted(p.name for p in (tmp_path / "kd/checkpoints").iterdir())
    assert kept == ["step_00000006", "step_00000008"]  # keep_last=2


def test_chunked_kd_loss_trains_like_model_optimizers(models, tmp_path):
    """The chunked logit KL (default) and Model Optimizer's unchunked loss: the same steps, fp32 rounding apart."""
    chunked = train(make_job(models, tmp_path / "chunked", steps=4, eval_interval=4, save_interval=4,
                             kd=KDConfig(chunk_tokens=7)))
    unchunked = train(make_job(models, tmp_path / "unchunked", steps=4, eval_interval=4, save_interval=4,
                               kd=KDConfig(chunk_tokens=None)))
    assert losses(tmp_path / "chunked") == pytest.approx(losses(tmp_path / "unchunked"), rel=1e-5)
    assert chunked["validation"]["kd_loss"] == pytest.approx(unchunked["validation"]["kd_loss"], rel=1e-5)
    assert chunked["precision"]["precision"] == "fp32" and chunked["precision"]["requested"] == "fp32"


def test_lm_training_bf16_reduces_loss(models, tmp_path):
    result = train(make_job(models, tmp_path / "lm", teacher=False, precision="bf16", steps=8))
    curve = losses(tmp_path / "lm")
    assert curve[-1] < curve[0] and result["validation"]["lm_loss"] < 5.6  # log(256) = 5.55 at random init


def test_resume_reproduces_the_uninterrupted_run(models, tmp_path):
    train(make_job(models, tmp_path / "full", steps=6))
    train(dataclasses.replace(make_job(models, tmp_path / "cut", steps=6, save_interval=2), max_steps_this_run=3))
    assert [p.name for p in (tmp_path / "cut/checkpoints").iterdir()] == ["step_00000002"]
    train(make_job(models, tmp_path / "cut", steps=6, save_interval=2))
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), rel=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_cpu_adam_steps_like_the_per_tensor_loop(models, tmp_path, monkeypatch, precision):
    """On CPU the loop switches Megatron's torch AdamW to its fused kernel: the same
    updates as the per-tensor loop Megatron would run, to fp32 rounding."""
    from minitron.training import loop

    seen = []
    real = loop._fused_adam_on_cpu
    monkeypatch.setattr(loop, "_fused_adam_on_cpu", lambda opt: (real(opt), seen.append(opt))[0])
    fused = train(make_job(models, tmp_path / "fused", steps=4, eval_interval=4, save_interval=2, precision=precision))
    groups = [g for o in getattr(seen[0], "chained_optimizers", [seen[0]]) for g in o.optimizer.param_groups]
    assert groups and all(g["fused"] and not g["foreach"] for g in groups)
    monkeypatch.setattr(loop, "_fused_adam_on_cpu", lambda opt: None)
    loop_ = train(make_job(models, tmp_path / "loop", steps=4, eval_interval=4, save_interval=2, precision=precision))
    assert losses(tmp_path / "fused") == pytest.approx(losses(tmp_path / "loop"), rel=1e-5)
    assert fused["validation"]["kd_loss"] == pytest.approx(loop_["validation"]["kd_loss"], rel=1e-5)


def _hf_kl(student_hf, teacher_hf, rows) -> float:
    """KL(teacher || student) per token, averaged, computed with transformers (independent of the loop)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()  # noqa: E731
    with torch.no_grad():
        s, t = load(student_hf)(rows[:, :-1]).logits, load(teacher_hf)(rows[:, :-1]).logits
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="none", log_target=True).sum(-1).mean().item()


@pytest.mark.parametrize("lm_loss", [False, True])
def test_reported_logit_kl_is_the_models_kl_where_the_lm_loss_is_computed(models, tmp_path, lm_loss):
    """fp32: Megatron's cross entropy exponentiates the logits in place, and they are the tensor the logit KL reads.
    Validation always computes the LM loss, training with kd.lm_loss too: both KLs must be the models' KL."""
    from minitron.conversion.convert import nemo_to_hf
    from minitron.conversion import nemo_checkpoint as nemo
    from minitron.data import prepare, samples

    job = make_job(models, tmp_path / "kd", steps=2, eval_interval=2, save_interval=2, micro_batch_size=8,
                   kd=KDConfig(lm_loss=lm_loss))
    result = train(job)
    nemo_to_hf(tmp_path / "kd/nemo", tmp_path / "student_hf")
    prepared = prepare(job.data, nemo.tokenizer_dir(job.student))
    val = torch.stack(list(samples(prepared, "validation", 32, job.train.eval_samples)))
    expected = _hf_kl(tmp_path / "student_hf", models / "teacher_hf", val)
    assert result["validation"]["kd_loss"] == pytest.approx(expected, rel=1e-4)
    if lm_loss:  # step 1's training KL: the untrained student on the first batch
        first = torch.stack(list(samples(prepared, "train", 32, 16, seed=job.data.seed)))[:8]
        step1 = json.loads((tmp_path / "kd/metrics.jsonl").read_text().splitlines()[0])["kd_loss"]
        assert step1 == pytest.approx(_hf_kl(models / "student_hf", models / "teacher_hf", first), rel=1e-4)


def test_kill_minus_9_then_resume(models, tmp_path):
    """A real SIGKILL between checkpoints; the restarted run's losses equal an uninterrupted run's."""
    reference = tmp_path / "reference"
    train(make_job(models, reference, steps=12, save_interval=4, eval_interval=100))
    job = make_job(models, tmp_path / "killed", steps=12, save_interval=4, eval_interval=100)
    config.save(job, tmp_path / "job.json")
    cmd = [sys.executable, "-m", "minitron.training.loop", str(tmp_path / "job.json")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = tmp_path / "killed/metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill after step 6: checkpoint 4 exists, 8 does not
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p.name for p in (tmp_path / "killed/checkpoints").iterdir() if not p.name.startswith(".")]
    assert done == ["step_00000004"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    assert losses(tmp_path / "killed") == pytest.approx(losses(reference), rel=1e-6)


def test_mismatched_vocabulary_is_refused(models, tmp_path):
    other = write_tiny_llama(tmp_path / "other_hf", vocab_size=300)
    hf_to_nemo(other, tmp_path / "other")
    job = make_job(models, tmp_path / "out")
    job.teacher = str(tmp_path / "other")
    with pytest.raises(MinitronError, match="vocab"):
        train(job)


def test_nan_loss_stops_with_a_clear_error(models, tmp_path):
    from minitron.conversion import nemo_checkpoint as nemo
    from minitron.conversion.convert import load_megatron_from_nemo
    from minitron.runtime import distributed

    distributed.initialize(1, 1)
    model, arch = load_megatron_from_nemo(models / "student")
    with torch.no_grad():
        model.decoder.final_layernorm.weight[0] = float("nan")
    _, dtype, hf = nemo.read_context(models / "student")
    nemo.write_context(tmp_path / "broken", arch, dtype, hf, nemo.tokenizer_dir(models / "student"))
    nemo.save_weights(model, tmp_path / "broken")
    job = make_job(models, tmp_path / "out", teacher=False)
    job.student = str(tmp_path / "broken")
    with pytest.raises(MinitronError, match="loss is nan at step 1"):
        train(job)
    assert not (tmp_path / "out/checkpoints").exists() or not any((tmp_path / "out/checkpoints").iterdir())


def test_students_sharing_a_teacher_forward_train_as_if_alone(models, tmp_path, monkeypatch):
    """train_together: one teacher forward per micro-batch for two students; each student's losses,
    validation and exported weights equal those of training it alone, also where they have hidden-state
    losses of their own (the first on the real teacher, the second on replayed teacher hidden states)."""
    from safetensors.torch import load_file

    from minitron.conversion.convert import nemo_to_hf
    from minitron.training.loop import train_together
    from minitron.training.shared_teacher import TeacherLogits

    hf_to_nemo(write_tiny_llama(tmp_path / "second_hf", seed=9, intermediate_size=48, num_hidden_layers=3),
               tmp_path / "second")
    kw = dict(steps=4, eval_interval=2, save_interval=2)
    jobs = [make_job(models, tmp_path / "together_a", **kw), make_job(models, tmp_path / "together_b", **kw)]
    jobs[1].student = str(tmp_path / "second")
    alone = [make_job(models, tmp_path / "alone_a", **kw), make_job(models, tmp_path / "alone_b", **kw)]
    alone[1].student = str(tmp_path / "second")
    for i, pairs in enumerate([[["decoder.layers.0", "decoder.layers.1", "cosine"]],
                               [["decoder.layers.2", "decoder.layers.3", "mse"]]]):
        for job in (jobs[i], alone[i]):
            job.train = dataclasses.replace(job.train, kd=KDConfig(intermediate_pairs=pairs))
    replays = []
    original = TeacherLogits.next_output
    monkeypatch.setattr(TeacherLogits, "next_output",
                        lambda self, name="output_layer": replays.append(name) or original(self, name))
    together = train_together(jobs)
    # the second student's teacher logits and layer-3 hidden states were all replayed: 4 steps x 4
    # micro-batches + 3 validations x 2 (before step 1, the recovery curve's start, then at steps 2 and 4)
    assert replays.count("output_layer") == replays.count("decoder.layers.3") == 4 * 4 + 3 * 2
    assert len(replays) == 2 * (4 * 4 + 3 * 2)
    separate = [train(job) for job in alone]
    for pair, single, job, solo in zip(together, separate, jobs, alone):
        assert losses(Path(job.output)) == losses(Path(solo.output))
        assert pair["validation"] == single["validation"]
        assert pair["initial_validation"] == single["initial_validation"] is not None
        nemo_to_hf(Path(job.output) / "nemo", Path(job.output) / "hf")
        nemo_to_hf(Path(solo.output) / "nemo", Path(solo.output) / "hf")
        a = load_file(Path(job.output) / "hf/model.safetensors")
        b = load_file(Path(solo.output) / "hf/model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_students_without_a_teacher_train_one_after_another_as_if_alone(models, tmp_path):
    """train_together of LM-loss jobs (make bench-quality's lm arm with both students): no teacher forward to
    share, so they train one by one, each with the losses and validation of training it alone."""
    from minitron.training.loop import train_together

    hf_to_nemo(write_tiny_llama(tmp_path / "second_hf", seed=9, intermediate_size=48, num_hidden_layers=3),
               tmp_path / "second")
    kw = dict(steps=4, eval_interval=2, save_interval=2)
    jobs = [make_job(models, tmp_path / f"together_{s}", teacher=False, **kw) for s in "ab"]
    alone = [make_job(models, tmp_path / f"alone_{s}", teacher=False, **kw) for s in "ab"]
    jobs[1].student = alone[1].student = str(tmp_path / "second")
    together = train_together(jobs)
    for pair, job, solo in zip(together, jobs, alone):
        single = train(solo)
        assert losses(Path(job.output)) == losses(Path(solo.output))
        # json: the validation's kd_loss is NaN without a teacher, and NaN != NaN
        assert json.dumps(pair["validation"]) == json.dumps(single["validation"])
        assert pair["validation"]["lm_loss"] == single["validation"]["lm_loss"] > 0
    assert losses(tmp_path / "together_a") != losses(tmp_path / "together_b")


def test_students_trained_together_resume_together_or_one_by_one(models, tmp_path):
    """Cut short, train_together resumes both students from their common checkpoint; if one student's newest
    checkpoint is missing (killed between the two saves), they resume one by one; the curves are unchanged."""
    import shutil

    from minitron.training.loop import train_together

    hf_to_nemo(write_tiny_llama(tmp_path / "second_hf", seed=9, intermediate_size=48, num_hidden_layers=3),
               tmp_path / "second")

    def jobs(name, max_steps_this_run=None):
        pair = [make_job(models, tmp_path / f"{name}_a", steps=6, save_interval=2),
                make_job(models, tmp_path / f"{name}_b", steps=6, save_interval=2)]
        pair[1].student = str(tmp_path / "second")
        return [dataclasses.replace(job, max_steps_this_run=max_steps_this_run) for job in pair]

    train_together(jobs("full"))
    train_together(jobs("cut", max_steps_this_run=3))  # checkpoints at step 2; step 3 is lost
    train_together(jobs("cut"))
    train_together(jobs("uneven", max_steps_this_run=4))
    shutil.rmtree(tmp_path / "uneven_b/checkpoints/step_00000004")  # b last saved at step 2, a at 4
    train_together(jobs("uneven"))
    for name in ("cut", "uneven"):
        for side in "ab":
            assert losses(tmp_path / f"{name}_{side}") == losses(tmp_path / f"full_{side}")


def test_null_micro_batch_is_one_micro_batch_per_rank(models, tmp_path):
    """micro_batch_size: null = global batch / DP: the same steps as the explicit size, no accumulation."""
    train(make_job(models, tmp_path / "null", steps=3, eval_interval=3, save_interval=3, micro_batch_size=None))
    train(make_job(models, tmp_path / "eight", steps=3, eval_interval=3, save_interval=3, micro_batch_size=8))
    assert losses(tmp_path / "null") == losses(tmp_path / "eight")
    assert TrainConfig(micro_batch_size=None, global_batch_size=16).micro_batch(data_parallel=4) == 4


def test_cpu_budget_shrinks_what_runs_in_fp32_on_a_cpu(tiny_hf, tmp_path):
    """cpu_budget: where a training section computes in fp32 on a CPU its steps (and warmup, in proportion)
    shrink when the recipe is loaded; bf16, a smaller section or no budget keep the recipe's numbers."""
    from minitron.recipe import load_recipe

    def loaded(precision, steps, budget="{reason: fits 30 min, distill_steps: 3, teacher_correction_steps: 2}"):
        yaml = tmp_path / f"train-{precision}-{steps}.yaml"
        yaml.write_text(f"steps: {steps}\nwarmup_steps: {steps // 5}\nglobal_batch_size: 8\nprecision: {precision}\n")
        recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, teacher_correction, prune, distill]",
                                   "[{name: depth, num_layers: 2}]",
                                   f"teacher_correction: {{config: {yaml}}}\ndistill: {{config: {yaml}}}\n"
                                   + (f"cpu_budget: {budget}\n" if budget else ""))
        return load_recipe(recipe)

    assert not fp32_on_cpu("bf16", "cpu") and not fp32_on_cpu("fp32", "cuda") and fp32_on_cpu("fp32", "cpu")
    small = loaded("fp32", 10)
    assert small.distill.train_config().steps == 3 and small.teacher_correction.train_config().steps == 2
    assert small.distill.train_config().warmup_steps == 1 and small.teacher_correction.train_config().warmup_steps == 1
    assert small.applied_budget["distill"] == ["3 steps (cpu_budget.distill_steps) instead of 10, 24 sequences "
                                               "instead of 80, warmup_steps 1 instead of 2"]
    assert loaded("bf16", 10).applied_budget == {} and loaded("bf16", 10).distill.train_config().steps == 10
    assert loaded("fp32", 2).distill.train_config().steps == 2  # already smaller than the budget
    assert loaded("fp32", 10, budget=None).distill.train_config().steps == 10
    with pytest.raises(MinitronError, match=r"cpu_budget.distill_steps=0 must be >= 1 or null"):
        loaded("fp32", 10, budget="{distill_steps: 0}")


def test_cpu_budget_leaves_out_the_uncorrected_comparison_and_lm_eval_models_in_fp32(tiny_hf, tmp_path):
    """cpu_budget.from_uncorrected_teacher / lm_eval_models: where distillation (lm-eval) computes in fp32 on a
    CPU the run plans no distill-<student>@uncorrected stage and runs lm-eval on the named models only; in bf16
    the recipe's lists stay. The budget can only leave comparisons out, not add students."""
    from minitron.recipe import load_recipe

    def loaded(precision, budget="{from_uncorrected_teacher: [], lm_eval_models: [teacher*]}"):
        yaml = tmp_path / f"train-{precision}.yaml"
        yaml.write_text(f"steps: 4\nwarmup_steps: 1\nglobal_batch_size: 8\nprecision: {precision}\n")
        path = write_tiny_recipe(tmp_path, tiny_hf, "[import, teacher_correction, prune, distill, eval]",
                                 "[{name: depth, num_layers: 2}]",
                                 f"teacher_correction: {{config: {yaml}}}\n"
                                 f"distill: {{config: {yaml}, from_uncorrected_teacher: [depth]}}\n"
                                 f"eval: {{lm_eval: {{dtype: {precision}}}}}\ncpu_budget: {budget}\n")
        return load_recipe(path)

    fp32, bf16 = loaded("fp32"), loaded("bf16")
    assert fp32.distill.from_uncorrected_teacher == [] and bf16.distill.from_uncorrected_teacher == ["depth"]
    assert [name for _, name in RunFolder(fp32).planned()][-2:] == ["distill-depth", "eval"]
    assert "distill-depth@uncorrected" in [name for _, name in RunFolder(bf16).planned()]
    assert fp32.eval.lm_eval.models == ["teacher*"] and bf16.eval.lm_eval.models == []
    assert fp32.applied_budget["distill"][-1] == ("distilled from the uncorrected teacher: none "
                                                  "(cpu_budget.from_uncorrected_teacher) instead of ['depth']")
    assert bf16.applied_budget == {}
    with pytest.raises(MinitronError, match=r"cpu_budget.from_uncorrected_teacher: 'width' is not in "
                                            r"distill.from_uncorrected_teacher \(\['depth'\]\)"):
        loaded("fp32", budget="{from_uncorrected_teacher: [width]}")


@pytest.mark.parametrize("bf16_native", [True, False])
def test_cpu_budget_shrinks_calibration_where_bf16_is_not_native(tiny_hf, tmp_path, monkeypatch, bf16_native):
    """cpu_budget.calibration_samples: pruning computes in fp32 everywhere, so its calibration shrinks by the
    machine (no native bf16), not by prune.dtype; repair never gets more sequences than calibration."""
    from minitron.recipe import load_recipe
    from minitron.runtime import precision

    monkeypatch.setattr(precision, "fp32_on_cpu", lambda requested, device=None: not bf16_native)
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_hf, "[import, prune]", "[{name: depth, num_layers: 2}]",
                                           "cpu_budget: {reason: fits 30 min, calibration_samples: 4}\n"))
    assert (recipe.prune.calibration_samples, recipe.prune.repair_samples) == ((8, 64) if bf16_native else (4, 4))
    assert recipe.applied_budget.get("prune") == (None if bf16_native else [
        "4 calibration sequences (cpu_budget.calibration_samples) instead of 8, repair on 4 instead of 64"])


@pytest.mark.parametrize("override, message", [
    ({"global_batch_size": 6, "micro_batch_size": 4}, "not a multiple of micro_batch_size"),
    ({"warmup_steps": 100, "steps": 100}, "warmup_steps"),
    ({"min_lr": 1.0}, "min_lr <= lr"),
    ({"micro_batch_size": 0}, r"micro_batch_size=0 must be >= 1 \(or null\)"),
    ({"kd": {"chunk_tokens": "all"}}, r"kd.chunk_tokens='all' must be int or 'auto' or null"),
    ({"kd": {"chunk_tokens": 0}}, r"kd.chunk_tokens must be >= 1, auto or null"),
])
def test_train_config_validation(override, message):
    with pytest.raises(MinitronError, match=message):
        config.build(TrainConfig, override)


def test_intermediate_pairs_follow_the_cuts():
    """distill.intermediate_students: after each block of dropped layers (Megatron numbers from 1), the kept layer
    that follows it vs the teacher layer it was copied from (module indices from 0); a block at the end pairs
    the last layers. Refused where it cannot apply."""
    from minitron.recipe import load_recipe
    from minitron.stages.training import _with_intermediate_pairs, intermediate_pairs

    # the demo's depth student on the fp32 budget: kept layers 1, 2, 7, 8, 9, 11, 19..25, 28, 29, 30
    dropped = [3, 4, 5, 6, 10, 12, 13, 14, 15, 16, 17, 18, 26, 27]
    assert intermediate_pairs(dropped, 16, "cosine") == [
        ["decoder.layers.2", "decoder.layers.6", "cosine"], ["decoder.layers.5", "decoder.layers.10", "cosine"],
        ["decoder.layers.6", "decoder.layers.18", "cosine"], ["decoder.layers.13", "decoder.layers.27", "cosine"]]
    assert intermediate_pairs([1, 2], 2, "mse") == [["decoder.layers.0", "decoder.layers.2", "mse"]]
    assert intermediate_pairs([3, 4], 2, "mse") == [["decoder.layers.1", "decoder.layers.3", "mse"]]
    assert intermediate_pairs([2, 5, 6], 3, "cosine") == [["decoder.layers.1", "decoder.layers.2", "cosine"],
                                                          ["decoder.layers.2", "decoder.layers.5", "cosine"]]

    train = TrainConfig()
    depth = {"layers_dropped": [2, 3], "arch": {"num_layers": 2}}
    assert _with_intermediate_pairs(train, "depth", depth, "cosine").kd.intermediate_pairs == \
        [["decoder.layers.1", "decoder.layers.3", "cosine"]]
    with pytest.raises(MinitronError, match="student 'width' dropped no layers"):
        _with_intermediate_pairs(train, "width", {"layers_dropped": [], "arch": {"num_layers": 4}}, "cosine")
    yaml_pairs = dataclasses.replace(train, kd=KDConfig(intermediate_pairs=[["decoder.layers.0", "decoder.layers.0"]]))
    with pytest.raises(MinitronError, match="sets kd.intermediate_pairs too; keep one of them"):
        _with_intermediate_pairs(yaml_pairs, "depth", depth, "cosine")

    cpu = REPO / "recipes" / "smollm2-135m_minitron_cpu.yaml"
    with pytest.raises(MinitronError, match=r"distill.intermediate_students: 'dept' is not a distilled student"):
        load_recipe(cpu, ["distill.intermediate_students=[dept]"])
    with pytest.raises(MinitronError, match="distill.intermediate_loss='l1' must be one of"):
        load_recipe(cpu, ["distill.intermediate_loss=l1"])
    with pytest.raises(MinitronError, match="intermediate_students needs pipeline_parallel 1"):
        load_recipe(cpu, ["distill.intermediate_students=[depth]", "distill.share_teacher=false",
                          "distill.parallel={tensor_parallel: 1, pipeline_parallel: 2}"])


def test_chunk_tokens_takes_a_count_auto_or_null():
    assert [config.build(TrainConfig, {"kd": {"chunk_tokens": v}}).kd.chunk_tokens for v in (7, "auto", None)] \
        == [7, "auto", None]
    assert TrainConfig().kd.chunk_tokens == "auto"


@pytest.mark.torchrun
def test_parallel_layouts_give_the_same_loss_curve(models, tmp_path):
    curves = {}
    for name, tp, pp, n in (("tp1", 1, 1, 1), ("tp2", 2, 1, 2), ("pp2", 1, 2, 2), ("dp2", 1, 1, 2)):
        job = make_job(models, tmp_path / name, steps=10, eval_interval=10, save_interval=10)
        job.tensor_parallel, job.pipeline_parallel = tp, pp
        config.save(job, tmp_path / f"{name}.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "minitron.training.loop", str(tmp_path / f"{name}.json")]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        curves[name] = losses(tmp_path / name)
    for name in ("tp2", "pp2", "dp2"):
        rel = max(abs(a - b) / abs(b) for a, b in zip(curves[name], curves["tp1"]))
        assert rel <= 1e-3, (name, rel)


@pytest.mark.torchrun
def test_batch_that_does_not_divide_over_data_parallel(models, tmp_path):
    job = make_job(models, tmp_path / "dp", global_batch_size=6, micro_batch_size=2)
    config.save(job, tmp_path / "job.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "minitron.training.loop", str(tmp_path / "job.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "global_batch_size=6 is not divisible by micro_batch_size=2 x data_parallel=2" in proc.stderr


def test_top_k_and_intermediate_losses(models, tmp_path):
    """Top-k logit KL and a cosine hidden-state loss between mapped layers (depth-pruned students)."""
    job = make_job(models, tmp_path / "kd", steps=4, eval_interval=4, save_interval=4)
    job.train.kd = KDConfig(temperature=2.0, top_k=16, lm_loss=True, kd_loss_scale=1.0,
                            intermediate_pairs=[["decoder.layers.1", "decoder.layers.3", "cosine"]])
    result = train(job)
    curve = losses(tmp_path / "kd")
    assert all(torch.isfinite(torch.tensor(curve))) and curve[-1] < curve[0]
    assert result["validation"]["lm_loss"] > 0 and result["validation"]["kd_loss"] > 0


def test_checkpoint_from_another_model_is_refused(models, tmp_path):
    train(make_job(models, tmp_path / "run", teacher=False, steps=3, save_interval=3))
    bigger = write_tiny_llama(tmp_path / "big_hf", seed=9, intermediate_size=96, num_hidden_layers=2)
    hf_to_nemo(bigger, tmp_path / "big")
    job = make_job(models, tmp_path / "run", teacher=False, steps=6, save_interval=3)
    job.student = str(tmp_path / "big")
    with pytest.raises(MinitronError, match="does not fit the model being trained"):
        train(job)


def test_resuming_with_other_steps_is_refused(models, tmp_path):
    """`steps` fixes the cosine schedule and the sample order: a resumed run must keep it."""
    train(make_job(models, tmp_path / "run", teacher=False, steps=3, save_interval=3))
    with pytest.raises(MinitronError, match=r"steps: checkpoint 3 vs now 6.*new output folder") as e:
        train(make_job(models, tmp_path / "run", teacher=False, steps=6, save_interval=3))
    assert "\n" not in str(e.value)
    never = make_job(models, tmp_path / "run", teacher=False, steps=6, save_interval=3, resume="never")
    assert train(never)["steps"] == 6


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("Worker failure: [enforce fail at inline_container.cc:672] . "
                                                "unexpected pos 704 vs 598")])  # what torch raised on a full disk
def test_disk_full_during_save_keeps_earlier_checkpoints(models, tmp_path, monkeypatch, error):
    from minitron.training import checkpoint

    first = make_job(models, tmp_path / "run", teacher=False, steps=6, save_interval=3)
    first.max_steps_this_run = 3  # stopped after the step-3 checkpoint
    train(first)
    real_save = checkpoint.dist_checkpointing.save

    def full_disk(state, path, *a, **k):
        real_save(state, path, *a, **k)  # the data lands, then the disk is full
        raise error

    monkeypatch.setattr(checkpoint.dist_checkpointing, "save", full_disk)
    with pytest.raises(MinitronError, match=r"checkpoint failed \(.*(No space left|unexpected pos).*MiB free there"):
        train(make_job(models, tmp_path / "run", teacher=False, steps=6, save_interval=3))
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert "step_00000003" in names and "step_00000006" not in names  # the new one never looks complete
    monkeypatch.undo()
    train(make_job(models, tmp_path / "run", teacher=False, steps=6, save_interval=3))  # and resume works
    assert (tmp_path / "run/checkpoints/step_00000006").is_dir()


def test_recipe_with_teacher_correction_and_distillation(tiny_hf, tmp_path):
    """import -> teacher_correction -> prune -> distill through `minitron distill`: the corrected teacher is
    pruned and distilled from, the same student is distilled from the uncorrected one for comparison, the
    report compares them; outputs load in HF."""
    from conftest import run_minitron

    train_yaml = write_train_yaml(tmp_path / "train.yaml", steps=4, interval=2, micro_batch_size=2, precision="bf16")
    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, teacher_correction, prune, distill]",
                               "[{name: width, hidden_size: 48, ffn_hidden_size: 64}]",
                               f"teacher_correction: {{config: {train_yaml}}}\n"
                               f"distill: {{config: {train_yaml}, from_uncorrected_teacher: [width]}}\n")
    proc = run_minitron("distill", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs/tiny"
    corrected = stage_summary(run / "teacher_correction")
    imported = stage_summary(run / "import")
    pruned = stage_summary(run / "prune-width")
    distilled = stage_summary(run / "distill-width")
    compared = stage_summary(run / "distill-width@uncorrected")
    assert pruned["teacher"] == distilled["teacher"] == corrected["nemo"]  # the corrected teacher, pruned and taught
    assert (compared["teacher"], compared["teacher_model"]) == (imported["nemo"], "teacher")
    assert distilled["teacher_model"] == "teacher-corrected"
    assert compared["validation"]["lm_loss"] != distilled["validation"]["lm_loss"]
    report = run_minitron("report", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert report.returncode == 0, report.stderr[-2000:]
    text = (run / "report/report.md").read_text()
    section = text.split("## Teacher correction")[1].split("## ")[0]
    assert "width-distilled (from teacher-corrected)" in section and "width-distilled@uncorrected (from teacher)" in section
    assert stage_summary(run / "prune-width")["arch"]["hidden_size"] == 48
    assert distilled["steps"] == 4 and (run / "distill-width/loss.png").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "distill-width/hf")
    assert model.config.hidden_size == 48 and model.config.head_dim == 24


def test_teacher_correction_order_and_stale_students(tiny_hf, tmp_path):
    """Correction after pruning is refused in the recipe; a student pruned before the teacher was corrected
    is not silently distilled from the corrected one."""
    import shutil

    from conftest import run_minitron

    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text("# Run: (test)\nsteps: 2\nmicro_batch_size: 2\nglobal_batch_size: 2\nwarmup_steps: 1\n"
                          "eval_interval: 2\nsave_interval: 2\neval_samples: 2\nprecision: fp32\n")
    sections = f"teacher_correction: {{config: {train_yaml}}}\ndistill: {{config: {train_yaml}}}\n"
    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, teacher_correction, distill]",
                               "[{name: depth, num_layers: 2}]", sections)
    proc = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert proc.returncode != 0 and "teacher_correction must come before prune" in proc.stderr

    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, distill]", "[{name: depth, num_layers: 2}]",
                               sections)
    first = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"), "stages=[import, prune]")
    assert first.returncode == 0, first.stderr[-2000:]
    corrected = run_minitron("teacher-correct", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert corrected.returncode == 0, corrected.stderr[-2000:]  # the old name still works, and says the new one
    assert corrected.stderr.count("deprecated") == 1
    assert "note: `minitron teacher-correct` is deprecated: use `minitron teacher-correction`" in corrected.stderr
    stale = run_minitron("distill", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert stale.returncode != 0 and "corrected after pruning" in stale.stderr
    assert not (tmp_path / "runs/tiny/distill-depth").exists()
    shutil.rmtree(tmp_path / "runs/tiny/prune-depth")  # as the message says: prune the corrected teacher
    again = run_minitron("distill", "--config", str(recipe), "--output", str(tmp_path / "runs"))
    assert again.returncode == 0, again.stderr[-2000:]
    runs = tmp_path / "runs/tiny"
    assert stage_summary(runs / "prune-depth")["teacher_model"] == "teacher-corrected"
