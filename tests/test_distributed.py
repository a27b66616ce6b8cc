"""Several processes (torch.distributed, gloo on the CPU): N processes with the global batch split between them
train as one process does on the whole batch; checkpoints move between world sizes; helpers are no-ops alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import dist_worker
from selfsup import distributed
from selfsup.errors import SelfSupError
from selfsup.train import check_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def run_processes(tmp_path: Path, world: int, method_cfg: dict | list[dict], steps: int, out: Path, resume: bool = False,
                  stop: int | None = None, extra_train: dict | None = None, float64: bool = True) -> dict:
    """`world` spawned processes train the tiny run into `out`; returns rank 0's result (for a list of methods,
    trained into out/NAME: nothing, the caller reads the files)."""
    rendezvous = tmp_path / f"rendezvous-{out.name}-{int(resume)}"
    rendezvous.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(dist_worker.worker, args=(world, str(rendezvous), method_cfg, steps, str(out), resume, stop,
                                       extra_train, float64), nprocs=world, join=True)
    if isinstance(method_cfg, list):
        return {}
    got = torch.load(out / "rank0.pt", weights_only=False)
    for r in range(1, world):  # every process ran the same steps and stopped together
        other = torch.load(out / f"rank{r}.pt", weights_only=False)
        assert (other["steps"], other["interrupted"]) == (got["steps"], got["interrupted"])
    return got


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict, atol: float, skip: tuple[str, ...] = ()) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if any(part in k for part in skip):
            continue
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-6), (k, (a[k] - b[k]).abs().max().item())
        else:
            assert torch.equal(a[k], b[k]), k


# In float64 (dist_worker.in_float64: in float32 the runs part within a few steps, as do two one-process runs
# whose weights differ by 1e-7). The methods whose losses couple the samples of a batch, each through a
# different collective: SimCLR's
# negatives and Barlow Twins' cross-correlation (gather with gradient), SwAV's Sinkhorn over the batch and its
# queue, MoCo's queue and shuffling BN across processes; BYOL needs none (global BN and the EMA target).
EQUIVALENT = {
    "simclr": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8},
    "byol": {"name": "byol", "proj_hidden": 16, "proj_dim": 8},
    "barlow": {"name": "barlow", "proj_hidden": 16, "proj_dim": 12},
    "swav": {"name": "swav", "n_prototypes": 16, "proj_hidden": 16, "proj_dim": 8, "freeze_prototypes_steps": 2,
             "queue_size": 32, "queue_start_steps": 1},
    "moco": {"name": "moco", "queue_size": 40, "bn_groups": 4},
    "vicreg": {"name": "vicreg", "proj_hidden": 16, "proj_dim": 12},
    "dino": {"name": "dino", "out_dim": 16, "head_hidden": 16, "bottleneck": 8},
}


@pytest.mark.parametrize("name", list(EQUIVALENT))
def test_two_processes_train_as_one_on_the_whole_batch(tmp_path, name):
    # 7 steps of a global batch of 16 (8 a process), crossing an epoch (96 images: 6 steps an epoch).
    cfg = EQUIVALENT[name]
    one = dist_worker.train_once(cfg, 7, str(tmp_path / "one"))
    two = run_processes(tmp_path, 2, cfg, 7, tmp_path / "two")
    assert two["steps"] == one["steps"] == 7
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)
    # MoCo's BatchNorm is per process (shuffling BN): its running statistics are rank 0's groups', as on MoCo's
    # GPUs; they never reach a training loss (train mode), and everything else must agree.
    skip = ("running_", "num_batches_tracked") if name == "moco" else ()
    assert_same_weights(two["weights"], one["weights"], atol=1e-8, skip=skip)


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_number_of_processes(tmp_path, first, then):
    cfg, steps, stop = EQUIVALENT["simclr"], 8, 3
    full = dist_worker.train_once(cfg, steps, str(tmp_path / "full"))

    out = tmp_path / "split"
    if first == 1:
        got = dist_worker.train_once(cfg, steps, str(out), stop=stop)
    else:
        got = run_processes(tmp_path, first, cfg, steps, out, stop=stop)
    assert got["interrupted"] and got["steps"] == stop
    if then == 1:
        got = dist_worker.train_once(cfg, steps, str(out), resume=True)
    else:
        got = run_processes(tmp_path, then, cfg, steps, out, resume=True)
    assert got["steps"] == steps and not got["interrupted"]
    assert_same_weights(got["weights"], full["weights"], atol=1e-8)
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))


# Every registered method with a few settings that keep it tiny; MoCo's BN statistics are per process.
STATE_CASES = {"npid": {"negatives": 8}, "deepcluster": {"clusters": 8}, "sela": {"clusters": 8},
               "jigsaw": {"permutations": 10}, "inpainting": {"adversarial": True}, "moco": {"queue_size": 40,
                                                                                       "bn_groups": 4}}


def test_every_method_ends_with_the_same_weights_and_state_on_every_process(tmp_path):
    # 7 steps cross an epoch start (re-clustering). Buffers (memory bank, pseudo-labels, queues, centres, BN
    # statistics) are not touched by DDP's gradient all-reduce: the methods' collectives keep them equal, and
    # a freshly reset head (DeepCluster) is rank 0's. The methods' own draws besides the views (noise rows,
    # k-means seeds, permutations, masks, rotations) come from per-process generators, so these runs are not
    # compared with one process; the equivalence test above does that for the methods whose draws are views.
    from selfsup.methods import METHODS

    cases = [{"name": name, **STATE_CASES.get(name, {})} for name in METHODS]
    run_processes(tmp_path, 2, cases, 7, tmp_path / "all", float64=False)
    for case in cases:
        out = tmp_path / "all" / case["name"]
        ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
        assert ranks[0]["steps"] == ranks[1]["steps"] == 7, case["name"]
        skip = ("running_", "num_batches_tracked") if case["name"] == "moco" else ()
        assert_same_weights(ranks[1]["weights"], ranks[0]["weights"], atol=1e-12, skip=skip)


def test_helpers_are_no_ops_with_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather(x) is x and distributed.local_rows(x) is x
    y = torch.ones(3)
    assert torch.equal(distributed.all_reduce_sum(y), torch.ones(3))
    assert torch.equal(distributed.all_reduce_mean(y), torch.ones(3))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.all_objects(5) == [5]
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert isinstance(distributed.sync_batchnorm(net)[1], nn.BatchNorm2d)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.setup("cpu").world_size == 1  # no torchrun in the environment


def test_global_batchnorm_is_batchnorm_alone_and_keeps_its_state_dict():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    glob = distributed.GlobalBatchNorm(3)
    glob.load_state_dict(bn.state_dict())
    x = torch.randn(5, 3, 4, 4)
    assert torch.allclose(glob(x), bn(x), atol=1e-6)
    assert torch.allclose(glob.running_var, bn.running_var)
    assert glob.state_dict().keys() == bn.state_dict().keys()


@pytest.mark.parametrize("batch,world,ok", [(16, 2, True), (15, 2, False), (4, 4, False), (8, 4, True)])
def test_the_global_batch_must_split_evenly(batch, world, ok):
    if ok:
        check_batch(batch, 100, world)
    else:
        with pytest.raises(SelfSupError, match="split evenly"):
            check_batch(batch, 100, world)


@pytest.mark.slow
def test_torchrun_runs_the_cli_on_two_processes(tmp_path):
    """The user's command: torchrun --nproc_per_node=2 -m selfsup pretrain ...; rank 0 alone writes the run."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "selfsup",
           "pretrain", "--data", "synthetic", "--method", "simclr", "--out", str(out), "--no-progress",
           "--set", "train.steps=4", "--set", "train.batch_size=16", "--set", "model.width=4",
           "--set", "train.device=cpu", "--set", "train.log_every=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 2  # the path, printed by rank 0 before and after training
    assert "processes: 2 (gloo), 8 images each of the global batch of 16" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert (out / "encoder.safetensors").exists() and json.loads((out / "env.json").read_text())["processes"] == 2


def test_the_data_goes_to_the_gpu_only_when_it_fits_and_batches_gather_rows():
    from selfsup.train import Batches, fits_on_device

    assert fits_on_device(1_000, 4_000) and not fits_on_device(1_001, 4_000)
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).view(5, 1, 2, 2)
    batches = Batches(images, torch.device("cpu"))
    assert batches.on_device
    rows = torch.tensor([4, 0, 2])
    assert torch.equal(batches(rows), images[rows])
