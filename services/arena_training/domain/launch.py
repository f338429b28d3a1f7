"""The command line that starts a worker: plain Python, torchrun or accelerate.

>>> launch_command("python", python="python3", processes_per_node=1, job_file="job.json")
['python3', '-m', 'arena_training.worker', 'job.json']
>>> launch_command("torchrun", python="python3", processes_per_node=8, job_file="job.json")[:4]
['python3', '-m', 'torch.distributed.run', '--nproc-per-node=8']

For several nodes the rendezvous comes from ``PET_*`` environment variables (torchrun reads
``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``), which the indexed
Job sets from its completion index and Kubeflow's operators set themselves — so the same command
runs on every node.
"""

from __future__ import annotations

from typing import Literal

WORKER_MODULE = "arena_training.worker"

Launcher = Literal["auto", "python", "torchrun", "accelerate"]


def choose_launcher(launcher: Launcher, processes_per_node: int, num_nodes: int) -> Launcher:
    """`auto` is plain Python for one process (fastest start) and torchrun for more."""
    if launcher != "auto":
        return launcher
    return "python" if processes_per_node <= 1 and num_nodes <= 1 else "torchrun"


def launch_command(
    launcher: Launcher,
    *,
    python: str,
    processes_per_node: int,
    job_file: str | None,
    num_nodes: int = 1,
    rendezvous_from_env: bool = False,
) -> list[str]:
    """The argv for one node. Without `job_file` the worker reads the job from its environment."""
    chosen = choose_launcher(launcher, processes_per_node, num_nodes)
    tail = ["-m", WORKER_MODULE] + ([job_file] if job_file else [])
    if chosen == "python":
        return [python, *tail]
    if chosen == "accelerate":
        return [
            python,
            "-m",
            "accelerate.commands.launch",
            f"--num_processes={processes_per_node}",
            *tail,
        ]
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={processes_per_node}"]
    if not rendezvous_from_env:
        command += ["--nnodes=1", "--standalone"]
    return command + tail
