"""`minitron launch` through NeMo-Run: Slurm and cloud dry runs of the 8B recipes, refusals before anything is
submitted, and a real local run (torchrun launcher, 2 gloo processes) that resumes from its checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import REPO, run_minitron, stage_summary, write_tiny_recipe, write_train_yaml

RECIPES = {kind: REPO / "recipes" / f"llama3.1-8b_minitron-{kind}_dgx.yaml" for kind in ("width", "depth")}
SLURM_SITE = REPO / "launch" / "slurm-example.yaml"


def tasks_of(stdout: str) -> dict[str, str]:
    """Task name -> what NeMo-Run would submit for it (the dry run prints one block per task)."""
    blocks = re.split(r"^# ---- task \d+/\d+: (\S+) .*----$", stdout, flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2]))


@pytest.mark.parametrize("kind", ["width", "depth"])
def test_slurm_dry_run_of_the_8b_recipe(kind):
    result = run_minitron("launch", "--site", str(SLURM_SITE), "--dry-run", "--", "run", "--config", str(RECIPES[kind]))
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = tasks_of(result.stdout)
    assert list(tasks) == ["import", "verify", "teacher-correction", "prune", "distill"]  # stage order
    assert json.loads(result.stdout[result.stdout.rindex("\n{"):])["submitted"] is False
    recipe = f"recipes/llama3.1-8b_minitron-{kind}_dgx.yaml"  # repo-relative: the job runs in the shipped checkout
    for name, text in tasks.items():
        assert "#SBATCH --account=my_account" in text and "#SBATCH --partition=batch" in text
        assert "--container-image nvcr.io/nvidia/nemo:26.06" in text
        assert re.search(r"--container-mounts /lustre/models:/models,/lustre/data:/data,/lustre/minitron:/lustre/"
                         r"minitron,\S+:/nemo_run ", text)
        assert "--container-workdir /nemo_run/code" in text and "export MINITRON_CACHE=/lustre/minitron/cache" in text
        assert re.search(rf"--config {re.escape(recipe)} (.* )?--output /lustre/minitron/runs", text)
    for name in ("teacher-correction", "distill"):  # every GPU of 8 nodes under torchrun
        text = tasks[name]
        assert "#SBATCH --nodes=8" in text and "#SBATCH --ntasks-per-node=1" in text
        assert "#SBATCH --gpus-per-node=8" in text
        assert re.search(r"torchrun --rdzv-backend c10d --rdzv-endpoint \$head_node_ip:29500 --rdzv-id \d+ "
                         r"--nnodes 8 --nproc-per-node 8 --node-rank \$SLURM_NODEID", text)
        assert f"-m minitron.cli {name} --config {recipe}" in text
    verify = tasks["verify"]  # one process holds one node's 8 GPUs and starts each layout's ranks itself
    assert "#SBATCH --nodes=1" in verify and "#SBATCH --gpus-per-node=8" in verify and "torchrun" not in verify
    assert "python -m minitron.cli run" in verify
    prune = tasks["prune"]  # torchrun on one node with the prune layout's 8 pipeline ranks
    assert "#SBATCH --nodes=1" in prune and "#SBATCH --gpus-per-node=8" in prune
    assert re.search(r"torchrun --rdzv-backend c10d .* --nnodes 1 --nproc-per-node 8 .* -m minitron.cli prune", prune)
    assert "#SBATCH --gpus-per-node=1" in tasks["import"] and " 'stages=[import]' " in tasks["import"]
    assert " 'stages=[import, verify]' " in tasks["verify"]  # one shell word
    # the pre-submission sizing ran (launch.size_as) and printed minitron plan's table
    assert f"| distill-{kind} | 8/1/8 |" in result.stderr


def test_smoke_recipe_runs_on_one_node():
    smoke = REPO / "recipes" / "llama3.1-8b_minitron-width_smoke-wikitext_dgx.yaml"
    result = run_minitron("launch", "--site", str(SLURM_SITE), "--nodes", "1", "--dry-run", "--", "run", "--config",
                          str(smoke))
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = tasks_of(result.stdout)
    assert list(tasks) == ["import", "verify", "teacher-correction", "prune", "distill", "eval", "report"]
    assert "--nnodes 1 --nproc-per-node 8" in tasks["distill"] and "#SBATCH --nodes=1" in tasks["distill"]
    assert "| distill-width | 8/1/1 |" in result.stderr


def test_docker_dry_run():
    result = run_minitron("launch", "--executor", "docker", "--container", "minitron:latest", "--nodes", "1",
                          "--dry-run", "--", "distill", "--config", str(RECIPES["depth"]), "--output", "/runs")
    assert result.returncode == 0, result.stderr[-3000:]
    distill = tasks_of(result.stdout)["distill"]
    assert "container_image: minitron:latest" in distill and "runtime: nvidia" in distill
    assert "- --nproc-per-node\n  - '8'" in distill and "- /nemo_run/scripts/distill.sh" in distill
    assert "# distill's script: python -m minitron.cli distill --config recipes/llama3.1-8b_minitron-depth_dgx.yaml " \
           "--output /runs" in distill


def test_other_commands_are_one_task():
    export = run_minitron("launch", "--site", str(SLURM_SITE), "--dry-run", "--", "export", "--model", "/models/x",
                          "--format", "trtllm", "--output", "/lustre/minitron/exports/x")
    assert export.returncode == 0, export.stderr[-2000:]
    assert list(tasks_of(export.stdout)) == ["export"]
    assert "python -m minitron.cli export --model /models/x" in export.stdout and "torchrun" not in export.stdout
    verify = run_minitron("launch", "--site", str(SLURM_SITE), "--dry-run", "--", "verify", "--nemo", "/ckpt/n",
                          "--hf", "/models/x", "--tp", "2", "--pp", "4")
    assert verify.returncode == 0, verify.stderr[-2000:]
    assert "--nnodes 1 --nproc-per-node 8" in verify.stdout and "-m minitron.cli verify --nemo /ckpt/n" in verify.stdout


@pytest.mark.parametrize("site", ["dgxcloud", "lepton"])
def test_cloud_dry_runs(site):
    result = run_minitron("launch", "--site", str(REPO / "launch" / f"{site}-example.yaml"), "--nodes", "2",
                          "--dry-run", "--", "distill", "--config", str(RECIPES["width"]), env_extra={
                              "DGXC_CLIENT_ID": "", "DGXC_CLIENT_SECRET": ""})  # a dry run needs no credentials
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = tasks_of(result.stdout)
    assert list(tasks) == ["import", "teacher-correction", "prune", "distill"]
    distill = tasks["distill"]
    assert "torchrun --nnodes 2 --nproc-per-node 8" in distill and "-m minitron.cli distill" in distill
    assert "container_image='nvcr.io/nvidia/nemo:26.06'" in distill and "nodes=2" in distill
    assert "--output " in distill and ("/pvc/minitron/runs" in distill or "/mnt/minitron/runs" in distill)
    assert "nodes=1" in tasks["prune"] and "torchrun --nnodes 1 --nproc-per-node 8" in tasks["prune"]
    if site == "dgxcloud":
        assert "project_name='my-project'" in distill and "'claimName': 'minitron-pvc-claim'" in distill
        assert "client_secret='$DGXC_CLIENT_SECRET'" in distill  # the variable's name, never a value
    else:
        assert "resource_shape='gpu.8xh100-80gb'" in distill and "node_group='my-node-group'" in distill


def test_bad_launches_fail_in_one_line_and_leave_nothing(tmp_path):
    nemo_run = tmp_path / "nemo_run"
    site = tmp_path / "site.yaml"
    site.write_text(SLURM_SITE.read_text() + f"experiment_dir: {nemo_run}\n")
    nosite = tmp_path / "incomplete.yaml"
    nosite.write_text("executor: slurm\nslurm: {partition: batch}\n")
    cases = {
        ("--nodes", "0"): "launch.nodes=0 must be >= 1",
        ("--nodes", "1", "--gpus-per-node", "12"): "12 processes (1 x 12) are not a multiple of tensor_parallel x "
                                                   "pipeline_parallel = 8 x 1",
        ("--container", ""): "executor slurm needs a container image",
        ("--site", str(nosite)): "needs launch.slurm.account",
        ("--nodes", "1", "--gpus-per-node", "4"): "prune: its 8 ranks run on one node, which has 4",
    }
    for flags, message in cases.items():
        args = ["launch", "--site", str(site), *flags, "--", "distill", "--config", str(RECIPES["width"])]
        if flags[0] == "--site":
            args = ["launch", *flags, "--", "distill", "--config", str(RECIPES["width"])]
        result = run_minitron(*args)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # real submissions: what this machine lacks, named before anything is written
    no_sbatch = run_minitron("launch", "--site", str(site), "--", "distill", "--config", str(RECIPES["width"]),
                             env_extra={"PATH": "/usr/bin:/bin"})
    assert no_sbatch.returncode == 2 and "sbatch is not installed here" in no_sbatch.stderr
    cloud = run_minitron("launch", "--site", str(REPO / "launch" / "dgxcloud-example.yaml"), "--", "distill",
                         "--config", str(RECIPES["width"]), env_extra={"DGXC_CLIENT_ID": "x", "DGXC_CLIENT_SECRET": ""})
    assert cloud.returncode == 2 and "$DGXC_CLIENT_SECRET is not set" in cloud.stderr
    lepton = run_minitron("launch", "--site", str(REPO / "launch" / "lepton-example.yaml"), "--", "distill",
                          "--config", str(RECIPES["width"]), env_extra={"LEPTON_WORKSPACE_ID": ""})
    assert lepton.returncode == 2 and "$LEPTON_WORKSPACE_ID" in lepton.stderr
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        docker = run_minitron("launch", "--executor", "docker", "--container", "minitron:latest", "--nodes", "1", "--", "report",
                              "--config", str(RECIPES["width"]), "--output", "/runs")
        assert docker.returncode == 2 and ("docker CLI is not installed" in docker.stderr
                                           or "no Docker daemon answers" in docker.stderr), docker.stderr[-2000:]
    relative = run_minitron("launch", "--site", str(site), "--dry-run", "--", "distill", "--config",
                            str(RECIPES["width"]), "--output", "runs")
    assert relative.returncode == 2 and "output root 'runs' is relative" in relative.stderr
    unknown = run_minitron("launch", "--site", str(site), "--", "distill", "--config", str(RECIPES["width"]),
                           "launch.slurm.acount=x")
    assert unknown.returncode == 2 and "did you mean 'account'" in unknown.stderr
    assert not nemo_run.exists()


@pytest.mark.torchrun
def test_local_launch_prunes_and_distils_on_two_processes_and_resumes(tiny_hf, tmp_path):
    train_yaml = write_train_yaml(tmp_path / "train.yaml", steps=4, interval=2)
    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune, distill]",
                               "[{name: width, hidden_size: 48, ffn_hidden_size: 64}, {name: depth, num_layers: 2}]",
                               f"distill: {{config: {train_yaml}}}\nlaunch: {{gpus_per_node: 2, experiment_dir: "
                               f"{tmp_path / 'nemo_run'}}}\n")
    out = tmp_path / "runs"

    def launch():
        result = run_minitron("launch", "--executor", "local", "--", "distill", "--config", str(recipe),
                              "prune.parallel.pipeline_parallel=2", "--output", str(out))
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        return json.loads(result.stdout[result.stdout.rindex("\n{"):])

    assert launch()["tasks"] == ["import", "prune", "distill"]
    stage = out / "tiny" / "distill-depth"
    summary = stage_summary(stage)
    assert summary["steps"] == 4 and (stage / "hf" / "config.json").is_file()
    # NeMo-Run's torchrun launcher ran prune (2 pipeline ranks) and distill (DP 2) as two workers each
    # (torchelastic keeps one log folder per rank)
    for task in ("prune", "distill"):
        workers = {p.parent.name for p in (tmp_path / "nemo_run" / "experiments" / f"minitron-tiny-{task}").rglob(
            "torchelastic/*/*/attempt_0/*/stderr.log")}
        assert workers == {"0", "1"}, task
    for student in ("width", "depth"):  # both students in one torchrun job each for prune and distill
        pruned = stage_summary(out / "tiny" / f"prune-{student}")
        assert pruned["calibration"]["pipeline_parallel"] == 2 and pruned["hf_vs_megatron_max_abs_logit_diff"] < 1e-4
        assert stage_summary(out / "tiny" / f"distill-{student}")["steps"] == 4
    first = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in first] == [1, 2, 3, 4]
    # Interrupted after step 2: the stage folder and the step-4 checkpoint are gone, step 2 is there.
    shutil.rmtree(stage)
    checkpoints = out / "tiny" / "distill-depth.work" / "checkpoints"
    shutil.rmtree(checkpoints / "step_00000004")
    assert (checkpoints / "step_00000002").is_dir()
    launch()
    resumed = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in resumed] == [3, 4]  # from the checkpoint, not from scratch
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in first[2:]], rel=1e-6)


@pytest.mark.torchrun
def test_prune_under_torchrun_refuses_a_world_that_is_not_its_layout(tiny_hf, tmp_path):
    import sys

    recipe = write_tiny_recipe(tmp_path, tiny_hf, "[import, prune]", "[{name: depth, num_layers: 2}]")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                "minitron.cli", "prune", "--config", str(recipe), "--output", str(tmp_path / "runs")]
    early = subprocess.run(torchrun, capture_output=True, text=True, cwd=REPO)
    assert early.returncode != 0 and "prune under torchrun: run ['import'] first" in early.stderr
    assert run_minitron("run", "--config", str(recipe), "--output", str(tmp_path / "runs"),
                        "stages=[import]").returncode == 0
    wrong = subprocess.run(torchrun, capture_output=True, text=True, cwd=REPO)  # the recipe prunes at PP=1
    assert wrong.returncode != 0 and "2 ranks, but the prune layout has pipeline_parallel=1" in wrong.stderr
    assert not (tmp_path / "runs" / "tiny" / "prune-depth").exists()
