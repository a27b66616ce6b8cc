"""Throughput of one training run on 1 and on N processes (torchrun, gloo on the CPU), same global batch.

    python bench/scaling.py --processes 1 2 --steps 60 --batch 256

Each row is `torchrun --standalone --nproc_per_node=N -m selfsup pretrain` on Fashion-MNIST (falls back to synthetic
data when it is not installed) with the cores split evenly between the processes (T threads for 1 process, T / N
each for N), so the rows compare the same machine used two ways: threads inside one process against processes
that all-reduce their gradients. Images/s are those the run logged after its warm-up steps (train.json and
metrics.jsonl), so start-up and evaluation are left out. Writes the table into docs/benchmarks.md (section
scaling). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402


def steady_images_per_second(run: Path, skip: int) -> float:
    """Images/s over the logged windows after the first `skip` steps (allocation, first plans)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > skip and r.get("images_per_s")]
    if not rows:
        raise SystemExit(f"{run}: no logged steps after step {skip}; use more --steps")
    return sum(r["images_per_s"] for r in rows) / len(rows)


def one_row(processes: int, threads: int, args: argparse.Namespace, data: str, work: Path) -> dict:
    out = work / f"p{processes}"
    per_process = max(1, threads // processes)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "selfsup", "pretrain", "--data", data, "--method", args.method, "--out", str(out), "--no-progress",
           "--set", f"train.steps={args.steps}", "--set", f"train.batch_size={args.batch}",
           "--set", f"train.threads={per_process}", "--set", "train.device=cpu", "--set", "train.log_every=10",
           "--set", "train.checkpoint_minutes=0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(per_process)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {"processes": processes, "threads": per_process,
            "images_per_s": steady_images_per_second(out, skip=10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores to split between processes")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--method", default="simclr")
    args = parser.parse_args()
    from selfsup.data import sources

    try:
        sources.load("fashion-mnist", "test")
        data = "fashion-mnist"
    except Exception:  # noqa: BLE001 - any failure to find the files: measure on synthetic data instead
        data = "synthetic"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.processes:
            row = one_row(p, args.threads, args, data, Path(tmp))
            rows.append(row)
            print(f"{p} process(es) x {row['threads']} thread(s): {row['images_per_s']:.0f} images/s", flush=True)
    base = rows[0]["images_per_s"]
    lines = ["| processes | threads each | images/s | relative to the first row |", "|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['threads']} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x |"
              for r in rows]
    body = (f"{args.method} on {data}, small-cnn, global batch {args.batch} ({args.steps} steps, the first 10 "
            f"left out), the machine's {args.threads} cores split between the processes; gloo all-reduces the "
            "gradients, BatchNorm over the global batch (train.sync_batchnorm), views of the global batch on every "
            "process.\n\n" + "\n".join(lines) + "\n")
    write_section("scaling", "Scaling: one run on 1 and N processes (torchrun, CPU)", body)


if __name__ == "__main__":
    main()
