"""`minitron distill` launched three ways (external torchrun, nproc=N, teacher shared or not) trains identically.

Its own file so that pytest-xdist (`make test`, one file per worker) can run this multi-process test beside
test_training.py rather than after it.
"""

import json

import pytest

from conftest import REPO, stage_summary, write_tiny_recipe, write_train_yaml


@pytest.mark.torchrun
def test_distill_under_external_torchrun_equals_nproc_launch(tiny_hf, tmp_path):
    """`torchrun -m minitron.cli distill` (how multi-node runs) trains exactly like `minitron distill nproc=2`;
    with distill.share_teacher the two students train side by side on one teacher forward, and exactly as
    without it, student after student in one torchrun job (the process group made again for each); the depth
    student's hidden-state loss (distill.intermediate_students) reads replayed teacher hidden states."""
    import shutil
    import subprocess
    import sys

    from conftest import run_minitron

    train_yaml = write_train_yaml(tmp_path / "train.yaml", steps=3, interval=3)
    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, distill]",
                               "[{name: width, hidden_size: 48, ffn_hidden_size: 64}, {name: depth, num_layers: 2}]",
                               f"distill: {{config: {train_yaml}, share_teacher: true,\n"
                               f"          intermediate_students: [depth]}}\n")
    first = run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "a"), "stages=[import, prune]")
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "minitron.cli", "distill", "--config", str(recipe), "--output", str(tmp_path / "a")]
    refused = subprocess.run(torchrun + ["nproc=2"], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode != 0 and "leave it out" in refused.stderr
    external = subprocess.run(torchrun, capture_output=True, text=True, cwd=REPO)
    assert external.returncode == 0, external.stderr[-3000:]
    internal = run_minitron("distill", "--config", str(recipe), "--output", str(tmp_path / "b"), "nproc=2")
    assert internal.returncode == 0, internal.stderr[-3000:]
    unshared = run_minitron("distill", "--config", str(recipe), "--output", str(tmp_path / "c"), "nproc=2",
                            "distill.share_teacher=false")
    assert unshared.returncode == 0, unshared.stderr[-3000:]

    def losses(root, student):
        metrics = (root / f"tiny/distill-{student}/metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in metrics]

    for student in ("width", "depth"):
        assert len(losses(tmp_path / "a", student)) == 3
        assert losses(tmp_path / "a", student) == losses(tmp_path / "b", student) == losses(tmp_path / "c", student)
    for root in ("a", "b"):
        summary = stage_summary(tmp_path / root / "tiny/distill-depth")
        assert summary["trained_with"] == "distill-width" and summary["steps"] == 3
        assert (tmp_path / root / "tiny/distill-depth/hf/config.json").is_file()
        assert not (tmp_path / root / "tiny/distill-depth.work/trained.json").exists()
    assert "trained_with" not in stage_summary(tmp_path / "c/tiny/distill-depth")
    # distill.intermediate_students: the depth student's hidden-state pairs follow its cuts, replayed when shared
    from minitron.stages.training import intermediate_pairs

    pruned = stage_summary(tmp_path / "a/tiny/prune-depth")
    pairs = intermediate_pairs(pruned["layers_dropped"], 2, "cosine")
    assert pairs and all(stage_summary(tmp_path / root / "tiny/distill-depth")["intermediate_pairs"] == pairs
                         for root in "abc")
    assert "intermediate_pairs" not in stage_summary(tmp_path / "a/tiny/distill-width")
    # each summary records the training config the stage ran with (what bench-quality checks before reusing it)
    trained = stage_summary(tmp_path / "a/tiny/distill-depth")["train"]
    assert trained["steps"] == 3 and trained["kd"]["intermediate_pairs"] == pairs
    assert stage_summary(tmp_path / "a/tiny/distill-width")["train"]["kd"]["intermediate_pairs"] == []
    report = run_minitron("report", "--config", str(recipe), "--output", str(tmp_path / "a"))
    assert report.returncode == 0, report.stderr[-2000:]
    listed = ", ".join(f"{s.split('.')[-1]} -> {t.split('.')[-1]} (cosine)" for s, t, _ in pairs)
    text = (tmp_path / "a/tiny/report/report.md").read_text()
    assert f"* distill-depth: {listed}" in text
    assert "| with distill-width |" in text  # the shared-teacher student's time is in the width stage's
    # Model Optimizer scales the hidden-state loss to the logit KL's size: the depth student's loss is twice its KL
    for root in "abc":
        for student, factor in (("width", 1), ("depth", 2)):
            for line in (tmp_path / root / f"tiny/distill-{student}/metrics.jsonl").read_text().splitlines():
                step = json.loads(line)
                assert step["loss"] == pytest.approx(factor * step["kd_loss"], rel=1e-5)
