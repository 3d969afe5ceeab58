"""DistributedDataParallel on CPU: two gloo processes train a few steps and end with equal weights;
only rank 0 writes checkpoints. Also the real `torchrun` launch of the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp  # noqa: E402

# First: skips this module cleanly (or fails in CI) when torch is missing, like test_training.
from test_training import make_dataset, torch

from training.config import RunConfig
from training.distributed import setup, teardown
from training.train import arcface_loop

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config_json: str, folder: str, out: str) -> None:
    """One rank, set up exactly as torchrun would (environment variables), saving its weights.

    The ranks see different batches (DistributedSampler): only DDP's gradient all-reduce keeps
    their weights equal.
    """
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    cfg = RunConfig.model_validate_json(config_json)
    env = setup(threads=1)
    try:
        loop = arcface_loop(cfg, Path(folder), env, Path(out) / "train")
        loop.fit()
        params = {k: v.detach().clone() for k, v in loop.trainee.named_parameters()}
        torch.save(params, Path(out) / f"weights_rank{rank}.pt")
    finally:
        teardown(env)


@pytest.fixture(scope="module")
def dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    cfg, folder = make_dataset(shared_data, tmp_path_factory.mktemp("dataset"))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": STEPS, "batch_size": 8})})
    return cfg, folder


def test_two_gloo_processes_agree_on_weights_and_only_rank0_writes(dataset: tuple[RunConfig, Path],
                                                                   tmp_path: Path) -> None:  # fmt: skip
    cfg, folder = dataset
    initial = {k: v.clone() for k, v in arcface_loop(cfg, folder, setup(threads=1), None).trainee.named_parameters()}
    mp.spawn(_worker, args=(2, _free_port(), cfg.model_dump_json(), str(folder), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "weights_rank0.pt")
    rank1 = torch.load(tmp_path / "weights_rank1.pt")
    assert rank0.keys() == rank1.keys() == initial.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0), "no training happened"
    written = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert written == ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl"]
    assert torch.load(tmp_path / "train" / "ckpt_last.pt", weights_only=False)["step"] == STEPS


def test_torchrun_launches_the_train_command(dataset: tuple[RunConfig, Path], tmp_path: Path) -> None:
    cfg, folder = dataset
    config = tmp_path / "tiny.json"
    config.write_text(cfg.model_dump_json())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data").symlink_to(folder)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port", str(_free_port()), "-m", "training", "train",
         "--config", str(config), "--run-dir", str(tmp_path / "run"), "--skip-overfit"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es)" in done.stderr
    assert done.stdout.count("best val TAR") == 1  # one report, from rank 0
    assert (tmp_path / "run" / "train" / "ckpt_last.pt").is_file()
