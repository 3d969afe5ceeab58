"""Process-group setup for `torchrun` (NCCL on GPUs, gloo on CPU); a single process needs none.

Nothing happens at import: the group is created only when a step starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import TrainingError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(threads: int = 0) -> DistEnv:
    """Join the group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if threads:
        torch.set_num_threads(threads)
    elif world > 1 and not torch.cuda.is_available():
        # Processes sharing a CPU would otherwise each start one thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local_rank, device)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_floats(env: DistEnv, values: list[float]) -> list[float]:
    """Rank 0's values on every rank (e.g. the validation score and the stop decision)."""
    if not env.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def check_replicas(env: DistEnv, module: torch.nn.Module) -> None:
    """Raise when the ranks' weights differ: DDP must keep every replica identical.

    Parameters only: BatchNorm running statistics legitimately differ (each rank updates them
    from its own batch; DDP re-broadcasts rank 0's before each forward).
    """
    if not env.distributed:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().double().reshape(-1) for p in module.parameters()])
        mine = torch.stack([flat.sum(), (flat * flat).sum(), flat.abs().max()]).to(env.device)
    gathered = [torch.zeros_like(mine) for _ in range(env.world)]
    dist.all_gather(gathered, mine)
    if any(not torch.allclose(g, gathered[0], rtol=1e-9, atol=0) for g in gathered):
        raise TrainingError(f"DDP replicas diverged: per-rank weight checksums {[g.tolist() for g in gathered]}")
