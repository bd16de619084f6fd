"""The ``launch`` section of a recipe and the site YAML of `minitron launch`: where and how jobs are submitted.

A recipe's ``launch:`` gives the job's shape (nodes, GPUs, image); a site file (``--site launch/<site>.yaml``)
gives what belongs to a cluster (account, partition, mounts, cloud project); flags override both. Nothing
about a site is hard-coded, and no credential is ever written in a file: cloud secrets are read from the
environment variables named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from minitron.config import doc

EXECUTORS = ("local", "docker", "slurm", "dgxcloud", "lepton")


@dataclass
class SlurmSite:
    account: Optional[str] = doc(None, "Slurm account (sbatch --account); required")
    partition: Optional[str] = doc(None, "Slurm partition; null = the cluster's default")
    time: str = doc("04:00:00", "wall-time limit per job (HH:MM:SS)")
    job_dir: Optional[str] = doc(None, "folder on the cluster's shared filesystem where NeMo-Run keeps the "
                                       "shipped code, the sbatch scripts and the logs; required")
    host: Optional[str] = doc(None, "login node to submit through over SSH; null = sbatch runs on this machine")
    user: Optional[str] = doc(None, "SSH user on `host` (null = this user)")
    exclusive: bool = doc(True, "sbatch --exclusive: whole nodes")
    gres: Optional[str] = doc(None, "sbatch --gres (some clusters want gpu:8 instead of --gpus-per-node)")
    srun_args: list[str] = doc([], "extra srun flags, e.g. [--mpi=pmix]")
    additional_parameters: dict = doc({}, "extra #SBATCH parameters, e.g. {qos: high}")


@dataclass
class DGXCloudSite:
    base_url: Optional[str] = doc(None, "DGX Cloud (Run:ai) API URL, e.g. https://<cluster>/api/v1; required")
    kube_apiserver_url: Optional[str] = doc(None, "the cluster's Kubernetes API server URL; required")
    project_name: Optional[str] = doc(None, "DGX Cloud project; required")
    pvc_nemo_run_dir: Optional[str] = doc(None, "NeMo-Run's folder on a PVC (code, scripts, logs); required")
    pvcs: list[dict] = doc([], "PVCs to mount: [{name, path, claimName}, ...] as the DGX Cloud API takes them")
    client_id_env: str = doc("DGXC_CLIENT_ID", "environment variable holding the application's client id")
    client_secret_env: str = doc("DGXC_CLIENT_SECRET", "environment variable holding its client secret")


@dataclass
class LeptonSite:
    resource_shape: Optional[str] = doc(None, "Lepton resource shape, e.g. gpu.8xh100-80gb; required")
    node_group: Optional[str] = doc(None, "dedicated node group; required")
    nemo_run_dir: Optional[str] = doc(None, "NeMo-Run's folder on the mounted storage; required")
    mounts: list[dict] = doc([], "storage mounts: [{path, mount_path, from?}, ...] as Lepton takes them")
    image_pull_secrets: list[str] = doc([], "registry secrets for the image (e.g. an NGC key secret)")


@dataclass
class LaunchConfig:
    executor: Literal["local", "docker", "slurm", "dgxcloud", "lepton"] = doc(
        "local", "where jobs run: this machine (local), a local Docker container, Slurm with pyxis/enroot, "
                 "DGX Cloud, or DGX Cloud Lepton")
    nodes: int = doc(1, "nodes of the multi-node stages (distill, teacher_correction)")
    gpus_per_node: int = doc(8, "GPUs per node; on CPU (local executor) the processes per node")
    gpu: str = doc("h100-80gb", "GPU model for the pre-submission memory check (see `minitron plan --gpu`)")
    size_as: Optional[str] = doc(None, "architecture to size the run with when model.source is not readable "
                                       "on the submitting machine (e.g. llama3.1-8b); null = read model.source")
    container: Optional[str] = doc(None, "container image (required by docker, slurm, dgxcloud, lepton)")
    mounts: list[str] = doc([], "host:container mounts (docker, slurm): models, data, outputs, caches")
    env: dict = doc({}, "environment variables of every task, e.g. {MINITRON_CACHE: /lustre/cache}")
    output_root: Optional[str] = doc(None, "output root of the run as the tasks see it; on clusters an absolute "
                                           "path on shared storage (every task runs in its own code folder)")
    experiment_dir: Optional[str] = doc(None, "where NeMo-Run keeps experiment records on this machine "
                                              "(null = NeMo-Run's default, ~/.nemo_run or $NEMORUN_HOME)")
    slurm: SlurmSite = doc(SlurmSite, "Slurm settings (executor: slurm)")
    dgxcloud: DGXCloudSite = doc(DGXCloudSite, "DGX Cloud settings (executor: dgxcloud)")
    lepton: LeptonSite = doc(LeptonSite, "DGX Cloud Lepton settings (executor: lepton)")

    def check(self) -> list[str]:
        problems = [f"launch.{k}={getattr(self, k)} must be >= 1" for k in ("nodes", "gpus_per_node")
                    if getattr(self, k) < 1]
        if not isinstance(self.env, dict):
            problems.append(f"launch.env must be a mapping of NAME: value, got {self.env!r}")
        bad = [m for m in self.mounts if ":" not in m]
        if bad:
            problems.append(f"launch.mounts entries must be host_path:container_path, got {bad}")
        return problems

    def site_problems(self) -> list[str]:
        """What the chosen executor still lacks (every missing setting at once)."""
        needs = {"slurm": ("slurm", ("account", "job_dir")),
                 "dgxcloud": ("dgxcloud", ("base_url", "kube_apiserver_url", "project_name", "pvc_nemo_run_dir")),
                 "lepton": ("lepton", ("resource_shape", "node_group", "nemo_run_dir"))}
        problems = []
        if self.executor != "local" and not self.container:
            problems.append(f"executor {self.executor} needs a container image: launch.container or --container "
                            "(e.g. the image `make docker-build` pushes)")
        if self.executor in needs:
            section, keys = needs[self.executor]
            site = getattr(self, section)
            problems += [f"executor {self.executor} needs launch.{section}.{k} (in the recipe's launch: section or "
                         f"the --site file)" for k in keys if not getattr(site, k)]
        if self.executor == "docker" and self.nodes > 1:
            problems.append("executor docker runs on this one machine: launch.nodes must be 1")
        return problems


def add_arguments(p) -> None:
    p.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="where to run (default: the recipe's/site's launch.executor, else local)")
    p.add_argument("--site", default=None, help="YAML of your cluster's launch settings (see launch/*.yaml)")
    p.add_argument("--nodes", type=int, default=None)
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (local CPU runs: processes)")
    p.add_argument("--container", default=None, help="container image")
    p.add_argument("--name", default=None, help="experiment name (default: minitron-<recipe name>)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    p.add_argument("job", nargs="+", metavar="COMMAND",
                   help="after --: the minitron command to run, e.g. -- distill --config recipes/<recipe>.yaml")
