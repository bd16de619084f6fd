"""`minitron launch`: minitron commands as NeMo-Run experiments, on this machine, Docker, Slurm or DGX Cloud.

    minitron launch --executor slurm --site launch/my-cluster.yaml --nodes 8 [--dry-run] -- run --config R

Each recipe stage becomes one NeMo-Run task, in stage order, with the process layout the stage needs:

* ``single``: one process on one GPU (import, eval, report, and any other subcommand);
* ``node``: one process holding one node's GPUs, which starts the stage's own ranks (verify: each of its
  layouts is a world of its own size);
* ``ranks``: NeMo-Run's torchrun launcher on one node with the stage's own rank count (pruning: Model
  Optimizer prunes at TP=1, so its PP ranks; one process when PP=1);
* ``all``: NeMo-Run's torchrun launcher on every GPU of every node (teacher correction, distillation);
  the world size sets the data parallelism (``DP = nodes x GPUs / (TP x PP)``).

On Slurm and the clouds the tasks are submitted at once, each after the previous one succeeds (NeMo-Run's
sequential experiment: ``sbatch --dependency=afterok``); the code goes along as a ``git archive`` of this
checkout's HEAD (NeMo-Run's GitArchivePackager) and runs from it. NeMo-Run's local executor starts the
next task even when one fails, so `local` and `docker` run one task at a time and stop at the first failure.
Done stages are skipped when a task starts, so rerunning a launch resumes (training from its last checkpoint).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from minitron import config
from minitron.cluster.config import LaunchConfig
from minitron.errors import MinitronError
from minitron.recipe import DEFAULT_RECIPE, Recipe, load_recipe

REPO = Path(__file__).resolve().parents[2]

#: recipe stage -> (minitron subcommand, process layout, overrides the task adds after the user's)
STAGE_TASKS = {
    "import": (["run"], "single", ["stages=[import]"]),
    "verify": (["run"], "node", ["stages=[import, verify]"]),
    "teacher_correction": (["teacher-correction"], "all", []),
    "prune": (["prune"], "ranks", []),
    "distill": (["distill"], "all", []),
    "eval": (["eval"], "single", []),
    "report": (["report"], "single", []),
}
#: subcommand -> the recipe stages it needs, in order (teacher_correction only where the recipe has it)
SUBCOMMAND_STAGES = {
    "teacher-correction": ("import", "teacher_correction"),
    "prune": ("import", "teacher_correction", "prune"),
    "distill": ("import", "teacher_correction", "prune", "distill"),
    "eval": ("eval",),
    "report": ("report",),
}


@dataclass
class Task:
    name: str
    args: list[str]   # minitron arguments
    shape: str        # single | node | ranks | all
    ranks: int = 1    # processes of a `ranks` task


def launch_command(args) -> dict:
    """`minitron launch ... -- <subcommand> <args>`: check everything, then submit (or print) the experiment."""
    sub = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not sub or sub[0] == "launch":
        raise MinitronError("launch: give the minitron command after --, e.g. minitron launch -- distill --config R")
    from minitron.cli import DEPRECATED, RECIPE_COMMANDS, parser

    parsed = parser().parse_args(sub)
    sub = [DEPRECATED.get(sub[0], sub[0]), *sub[1:]]
    recipe = load_recipe(parsed.config, parsed.overrides, getattr(parsed, "output", None)) \
        if sub[0] in RECIPE_COMMANDS else None
    cfg = launch_config(recipe, args)
    problems = cfg.site_problems() + (layout_problems(recipe, cfg, sub[0]) if recipe else [])
    if not problems and recipe and cfg.executor != "local" and {"distill", "teacher_correction"} & set(
            _stages(sub[0], recipe)):
        problems = _memory_problems(recipe, cfg)  # `minitron plan`'s check; prints its table
    if problems:
        raise MinitronError("launch: " + "; ".join(problems))
    tasks = plan_tasks(sub, parsed, recipe, cfg)
    name = args.name or f"minitron-{recipe.name if recipe else sub[0]}"
    if args.dry_run:
        return dry_run(tasks, cfg, name)
    check_can_submit(cfg)
    return submit(tasks, cfg, name)


def launch_config(recipe: Recipe | None, args) -> LaunchConfig:
    """The recipe's ``launch:`` section, then the --site file, then flags (all checked together)."""
    data = config.to_dict(recipe.launch) if recipe else {}
    if args.site:
        data = config.merge(data, config.load_yaml(args.site))
    flags = {"executor": args.executor, "nodes": args.nodes, "gpus_per_node": args.gpus_per_node,
             "container": args.container}
    data = config.merge(data, {k: v for k, v in flags.items() if v is not None})
    return config.build(LaunchConfig, data, args.site or "launch settings")


def layout_problems(recipe: Recipe, cfg: LaunchConfig, subcommand: str) -> list[str]:
    """Layouts that cannot run on nodes x GPUs (processes on CPU)."""
    problems, world = [], cfg.nodes * cfg.gpus_per_node
    stages = _stages(subcommand, recipe)
    if cfg.executor == "local" and cfg.nodes > 1:
        problems.append("executor local runs on this machine: launch.nodes must be 1 (use slurm for more)")
    for stage in stages:
        layout, shape = recipe.layout(stage), STAGE_TASKS[stage][1]
        if shape == "all" and world % layout.model_parallel:
            problems.append(f"{stage}: {world} processes ({cfg.nodes} x {cfg.gpus_per_node}) are not a multiple of "
                            f"tensor_parallel x pipeline_parallel = {layout.tensor_parallel} x "
                            f"{layout.pipeline_parallel}")
        if shape == "all" and layout.tensor_parallel > cfg.gpus_per_node:
            problems.append(f"{stage}: tensor_parallel={layout.tensor_parallel} spans nodes of {cfg.gpus_per_node}")
        ranks = max(tp * pp for tp, pp in recipe.verify.layouts) if stage == "verify" else layout.world_size
        if shape in ("node", "ranks") and ranks > cfg.gpus_per_node:
            problems.append(f"{stage}: its {ranks} ranks run on one node, which has {cfg.gpus_per_node}")
    return problems


def _memory_problems(recipe: Recipe, cfg: LaunchConfig) -> list[str]:
    from minitron.plan import GPUS, plan, render, teacher_arch

    if cfg.gpu not in GPUS:
        return [f"launch.gpu={cfg.gpu!r} is not one of {list(GPUS)}"]
    try:
        teacher = teacher_arch(recipe, cfg.size_as)
    except MinitronError:
        print(f"launch: memory check skipped: {recipe.model.source} is not readable here; set launch.size_as "
              "(e.g. llama3.1-8b) to size the run before submitting", file=sys.stderr)
        return []
    result = plan(recipe, teacher, cfg.nodes, cfg.gpus_per_node, GPUS[cfg.gpu], 0.4, False)
    print(render(result), file=sys.stderr)
    return result["problems"]


def _stages(subcommand: str, recipe: Recipe) -> list[str]:
    if subcommand == "run":
        return list(recipe.stages)
    wanted = SUBCOMMAND_STAGES.get(subcommand, ())
    return [s for s in wanted if s != "teacher_correction" or "teacher_correction" in recipe.stages
            or subcommand == "teacher-correction"]


def plan_tasks(sub: list[str], parsed, recipe: Recipe | None, cfg: LaunchConfig) -> list[Task]:
    """One task per stage the command needs (done ones skip when they start), or the command as one task."""
    if sub[0] == "verify" and parsed.tp * parsed.pp > 1:  # `minitron verify --tp N --pp M` runs on N*M ranks
        return [Task("verify", sub, "ranks", parsed.tp * parsed.pp)]
    if recipe is None or (sub[0] not in SUBCOMMAND_STAGES and sub[0] != "run"):
        return [Task(sub[0], sub, "single")]
    config_path, output = _recipe_path(parsed.config, cfg), _output(recipe, parsed, cfg)
    tasks = []
    for stage in _stages(sub[0], recipe):
        command, shape, extra = STAGE_TASKS[stage]  # overrides before --output: argparse takes them in one run
        ranks = recipe.layout(stage).pipeline_parallel if shape == "ranks" else 1
        tasks.append(Task(stage.replace("_", "-"),
                          [*command, "--config", config_path, *parsed.overrides, *extra, "--output", output],
                          "single" if shape == "ranks" and ranks == 1 else shape, ranks))
    return tasks


def _recipe_path(path: str | None, cfg: LaunchConfig) -> str:
    """Local runs take the file as it is here; container tasks run in the shipped checkout (repo-relative)."""
    path = path or str(DEFAULT_RECIPE)
    resolved = Path(path).resolve()
    if cfg.executor == "local":
        return str(resolved)
    if resolved.is_relative_to(REPO):
        return str(resolved.relative_to(REPO))
    return str(path)  # an absolute path the container must see (a mount)


def _output(recipe: Recipe, parsed, cfg: LaunchConfig) -> str:
    root = parsed.output or cfg.output_root or recipe.output_root
    if cfg.executor == "local":
        return str(Path(root).resolve())
    if not Path(root).is_absolute():
        raise MinitronError(f"launch: output root {root!r} is relative, but each {cfg.executor} task runs in its own "
                            "code folder, so stages would not find each other's outputs; set launch.output_root "
                            "(or --output) to an absolute path on shared storage that launch.mounts provides")
    return root


def check_can_submit(cfg: LaunchConfig) -> None:
    """What is missing on this machine to submit for real (no file is written before this passes)."""
    missing = []
    if cfg.executor == "slurm" and not cfg.slurm.host and not shutil.which("sbatch"):
        missing.append("sbatch is not installed here: run on the cluster's login node or set launch.slurm.host "
                       "to submit over SSH")
    if cfg.executor == "dgxcloud":
        missing += [f"${name} is not set (DGX Cloud application credentials; never put them in a file)"
                    for name in (cfg.dgxcloud.client_id_env, cfg.dgxcloud.client_secret_env) if not os.environ.get(name)]
    if cfg.executor == "lepton" and not os.environ.get("LEPTON_WORKSPACE_ID"):
        missing.append("$LEPTON_WORKSPACE_ID (and $LEPTON_WORKSPACE_TOKEN) are not set: `lep login` or export them")
    if cfg.executor == "docker":
        if not shutil.which("docker"):
            missing.append("the docker CLI is not installed")
        elif subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
            missing.append("no Docker daemon answers `docker info` (start it, or use another executor)")
    if cfg.executor != "local" and not (REPO / ".git").exists():
        missing.append(f"{REPO} is not a git checkout: NeMo-Run ships the code as a git archive of it")
    if missing:
        raise MinitronError("launch: " + "; ".join(missing))


def executor(cfg: LaunchConfig, task: Task, dry_run: bool = False):
    """The NeMo-Run executor of one task, sized by its shape."""
    import nemo_run as run

    nodes = cfg.nodes if task.shape == "all" else 1
    procs = {"all": cfg.gpus_per_node, "ranks": task.ranks}.get(task.shape, 1)
    gpus = {"single": 1, "ranks": task.ranks}.get(task.shape, cfg.gpus_per_node)
    env = {str(k): str(v) for k, v in cfg.env.items()}
    if cfg.executor == "local":
        ex = run.LocalExecutor(ntasks_per_node=procs, env_vars=env)
    elif cfg.executor == "docker":
        ex = run.DockerExecutor(container_image=cfg.container, ntasks_per_node=procs, num_gpus=gpus, runtime="nvidia",
                                ipc_mode="host", shm_size="16g", ulimits=["memlock:-1", "stack:67108864"],
                                volumes=list(cfg.mounts), env_vars=env, packager=_packager())
    elif cfg.executor == "slurm":
        s = cfg.slurm
        tunnel = (run.SSHTunnel(host=s.host, user=s.user or os.environ.get("USER", ""), job_dir=s.job_dir)
                  if s.host else run.LocalTunnel(job_dir=s.job_dir))
        ex = run.SlurmExecutor(account=s.account, partition=s.partition, time=s.time, nodes=nodes,
                               job_name_prefix="minitron.",
                               ntasks_per_node=procs, gpus_per_node=None if s.gres else gpus, gres=s.gres,
                               exclusive=s.exclusive or None, container_image=cfg.container,
                               container_mounts=list(cfg.mounts), srun_args=list(s.srun_args) or None,
                               additional_parameters=dict(s.additional_parameters) or None, env_vars=env,
                               tunnel=tunnel, packager=_packager())
    elif cfg.executor == "dgxcloud":
        d = cfg.dgxcloud
        secret = {k: os.environ.get(k) or (f"${k}" if dry_run else "") for k in (d.client_id_env, d.client_secret_env)}
        ex = run.DGXCloudExecutor(base_url=d.base_url, kube_apiserver_url=d.kube_apiserver_url,
                                  client_id=secret[d.client_id_env], client_secret=secret[d.client_secret_env],
                                  project_name=d.project_name, container_image=cfg.container,
                                  pvc_nemo_run_dir=d.pvc_nemo_run_dir, nodes=nodes, gpus_per_node=gpus,
                                  nprocs_per_node=procs, pvcs=list(d.pvcs), env_vars=env, packager=_packager())
    else:
        lep = cfg.lepton
        ex = run.LeptonExecutor(container_image=cfg.container, nemo_run_dir=lep.nemo_run_dir, nodes=nodes,
                                gpus_per_node=gpus, nprocs_per_node=procs, resource_shape=lep.resource_shape,
                                node_group=lep.node_group, mounts=list(lep.mounts),
                                image_pull_secrets=list(lep.image_pull_secrets), env_vars=env, packager=_packager())
    if _torchrun(task):
        ex.launcher = "torchrun"
    return ex


def _torchrun(task: Task) -> bool:
    return task.shape in ("all", "ranks")


def _packager():
    import nemo_run as run

    return run.GitArchivePackager(basepath=str(REPO), subpath="")


def _script(task: Task, cfg: LaunchConfig):
    import nemo_run as run

    # `python -m minitron.cli`: in containers it imports the shipped checkout (the task's working folder);
    # locally this interpreter, whose venv has minitron installed.
    if cfg.executor in ("local", "docker"):
        # These schedulers start the command without a shell, but NeMo-Run's torchrun launcher shell-quotes
        # every argument (right for sbatch scripts), so `a=[x, y]` would arrive with its quotes. A script
        # file, quoted once here, reaches every rank intact.
        python = sys.executable if cfg.executor == "local" else "python"
        return run.Script(inline=shlex.join([python, "-m", "minitron.cli", *task.args]))
    # Slurm's sbatch script and the clouds' launch scripts are shell: NeMo-Run's torchrun launcher quotes its
    # arguments, its plain scripts do not, so those are quoted here (`stages=[import, verify]` is one argument).
    args = task.args if _torchrun(task) else [shlex.quote(a) for a in task.args]
    return run.Script(path="minitron.cli", m=True, entrypoint="python", args=args)


def dry_run(tasks: list[Task], cfg: LaunchConfig, name: str) -> dict:
    """NeMo-Run's own dry run of the experiment: what each task would submit (nothing is)."""
    import nemo_run as run

    rendered = []
    with tempfile.TemporaryDirectory() as tmp, run.Experiment(name, base_dir=tmp, log_level="ERROR") as exp:
        for task in tasks:
            exp.add(_script(task, cfg), executor=executor(cfg, task, dry_run=True), name=task.name)
        exp.dryrun(log=False)
        for task, job in zip(tasks, exp.jobs):
            rendered.append(str(job._dryrun_info))  # NeMo-Run's AppDryRunInfo: sbatch script, job spec, command
    for i, (task, text) in enumerate(zip(tasks, rendered), 1):
        after = f", after {tasks[i - 2].name} succeeds" if i > 1 else ""
        if cfg.executor in ("local", "docker"):  # the command is in the task's script file: show it
            text += f"\n# {task.name}'s script: {_script(task, cfg).inline}"
        shape = f"{task.shape} x {task.ranks}" if task.shape == "ranks" else task.shape
        print(f"# ---- task {i}/{len(tasks)}: {task.name} ({shape}{after}) ----\n{text}\n")
    return {"dry_run": True, "executor": cfg.executor, "tasks": [t.name for t in tasks], "submitted": False}


def submit(tasks: list[Task], cfg: LaunchConfig, name: str) -> dict:
    import nemo_run as run

    base = {"base_dir": cfg.experiment_dir} if cfg.experiment_dir else {}
    if cfg.executor in ("local", "docker"):
        # torchrun and `python` must be this venv's, whatever PATH the caller has.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        for task in tasks:
            with run.Experiment(f"{name}-{task.name}", log_level="WARN", **base) as exp:
                exp.add(_script(task, cfg), executor=executor(cfg, task), name=task.name, tail_logs=True)
                exp.run(detach=False)
            # leaving the experiment waited for the task (a one-task experiment does not wait in run())
            state = str(exp.status(return_dict=True)[task.name]["status"]).split(" ")[0]
            if state != "SUCCEEDED":
                raise MinitronError(f"launch: task {task.name} {state}; its logs are under {exp._exp_dir}; "
                                    "later tasks were not started")
        return {"executor": cfg.executor, "tasks": [t.name for t in tasks], "state": "SUCCEEDED"}
    with run.Experiment(name, log_level="INFO", **base) as exp:
        for task in tasks:
            exp.add(_script(task, cfg), executor=executor(cfg, task), name=task.name)
        exp.run(sequential=True, detach=True)
        return {"executor": cfg.executor, "tasks": [t.name for t in tasks], "experiment": exp._id,
                "follow": f"nemo experiment status {exp._id}; nemo experiment logs {exp._id} 0"}
