"""The training loop: budgets, checkpoints, exact resume, stop requests."""

import json
import os
import signal

import pytest
import torch

from selfsup.checkpoint import load_checkpoint
from selfsup.config import load_config
from selfsup.data import sources
from selfsup.errors import SelfSupError
from selfsup.run import build_method
from selfsup.train import Budget, StopRequest, train


def tiny_setup(steps: int, seed: int = 0, optimizer: str = "lars", method: dict | None = None, channels: int = 1,
               precision: str = "fp32"):
    # fp32 unless asked: precision auto would test bf16 on CPUs with native bf16 and fp32 elsewhere.
    cfg = load_config({"data": {"name": "synthetic"}, "model": {"width": 4}, "method": method or {"name": "simclr"},
                       "train": {"steps": steps, "batch_size": 16, "seed": seed, "optimizer": optimizer,
                                 "log_every": 1, "device": "cpu", "precision": precision}})
    data = sources.load("synthetic", "train", n=96, seed=0, channels=channels)
    method, _ = build_method(cfg, data)
    return cfg, data, method


def weights(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


def interrupt_after(method, monkeypatch, k: int) -> None:
    """Send ourselves SIGINT (a Ctrl-C) at the end of step k, as a user would."""
    original = method.on_step_end

    def hook(step, total):
        original(step, total)
        if step == k:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(method, "on_step_end", hook)


RESUME_CASES = [  # (optimizer, method config, channels): methods with state beyond a backbone and a head
    ("lars", None, 1), ("adamw", None, 1),
    ("adamw", {"name": "colorization"}, 3),  # the colour prior and rebalancing weights (buffers from prepare())
    ("adamw", {"name": "inpainting", "adversarial": True}, 1),  # a discriminator and its random masks
    ("adamw", {"name": "splitbrain"}, 3),  # two backbones in one encoder
    ("sgd", {"name": "moco", "queue_size": 40}, 1),  # the queue (40 keys, 16 a step: it wraps) and key encoder
    ("sgd", {"name": "byol"}, 1),  # the EMA target and its momentum
    ("sgd", {"name": "barlow", "proj_hidden": 16, "proj_dim": 12}, 1),  # the last cross-correlation (the picture)
    ("sgd", {"name": "vicreg", "proj_hidden": 16, "proj_dim": 12}, 1),
    ("sgd", {"name": "npid", "negatives": 8}, 1),  # the memory bank, its first fill and the NCE constant Z
    ("sgd", {"name": "dino", "out_dim": 16, "head_hidden": 16, "bottleneck": 8}, 1),  # teacher, centre, schedule
    # the prototypes frozen for 6 steps (the resumed run must finish the freeze, then train them); the queue (40
    # rows, 16 a step from step 2: it wraps), its fill count, and the step that decides both
    ("sgd", {"name": "swav", "n_prototypes": 16, "proj_hidden": 16, "proj_dim": 8, "freeze_prototypes_steps": 6,
             "queue_size": 40, "queue_start_steps": 2}, 1),
    ("sgd", {"name": "deepcluster", "clusters": 8}, 1),  # pseudo-labels, weights, the classifier reset at step 6
    ("sgd", {"name": "sela", "clusters": 8}, 1),  # random first labels, then Sinkhorn's at step 6
]
# State each case must carry in its checkpoint beyond backbone and heads, by key prefix.
CARRIED = {"moco": ("queue.",), "byol": ("tau",), "barlow": ("last_c",), "colorization": ("prior", "weights"),
           "npid": ("bank.", "log_z", "bank_filled"), "dino": ("center", "progress", "teacher_head."),
           "swav": ("prototypes.", "queues.", "queue_filled", "progress"),
           "deepcluster": ("labels", "weights", "stats"), "sela": ("labels", "stats")}


def assert_resume_is_exact(tmp_path, monkeypatch, steps: int, stop: int, **setup) -> dict:
    """Train `steps` steps in one go, and again stopped after step `stop` and resumed by a fresh process: the final
    states must be bitwise equal. Returns the resumed run's state."""
    cfg, data, method = tiny_setup(steps, **setup)
    train(method, data.images, cfg.train, tmp_path / "full", progress=False)
    full = weights(method)

    cfg, _, first = tiny_setup(steps, **setup)
    interrupt_after(first, monkeypatch, stop)
    result = train(first, data.images, cfg.train, tmp_path / "split", progress=False)
    assert result.interrupted and result.steps == stop
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["step"] == stop

    cfg, _, resumed = tiny_setup(steps, **setup)  # a new process would build everything afresh
    torch.manual_seed(123)  # the global RNG is restored from the checkpoint, whatever it is now
    result = train(resumed, data.images, cfg.train, tmp_path / "split", resume=True, progress=False)
    assert result.steps == steps and not result.interrupted
    state = weights(resumed)
    for k, v in state.items():
        assert torch.equal(v, full[k]), k
    logged = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))
    return state


@pytest.mark.parametrize("optimizer,method_cfg,channels", RESUME_CASES,
                         ids=["simclr-lars", "simclr-adamw", "colorization", "inpainting-adversarial", "splitbrain",
                              "moco", "byol", "barlow", "vicreg", "npid", "dino", "swav", "deepcluster", "sela"])
def test_resume_is_bitwise_exact(tmp_path, monkeypatch, optimizer, method_cfg, channels):
    # 9 steps, stopped after 4: the resumed run crosses an epoch boundary (96 images / 16 = 6 steps per epoch).
    state = assert_resume_is_exact(tmp_path, monkeypatch, 9, 4, optimizer=optimizer, method=method_cfg,
                                   channels=channels)
    for prefix in CARRIED.get((method_cfg or {}).get("name"), ()):
        assert any(k.startswith(prefix) and v.any() for k, v in state.items()), prefix


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stop", [6, 8], ids=["at-the-boundary", "inside-the-epoch-after-it"])
@pytest.mark.parametrize("method_cfg", [{"name": "deepcluster", "clusters": 8}, {"name": "sela", "clusters": 8}],
                         ids=["deepcluster", "sela"])
def test_resume_around_a_reclustering_is_bitwise_exact(tmp_path, monkeypatch, method_cfg, stop):
    # 15 steps re-cluster at steps 0, 6 and 12. Stopped after step 6, the resumed run must re-cluster for epoch 1
    # itself; stopped after step 8, it must train on the clusters of epoch 1 from the checkpoint, not make new ones.
    assert_resume_is_exact(tmp_path, monkeypatch, 15, stop, optimizer="sgd", method=method_cfg)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("stop", [None, 6, 8])
def test_on_epoch_start_runs_once_before_each_epoch_also_across_a_resume(tmp_path, monkeypatch, stop):
    """15 steps of 6 an epoch: epochs 0, 1, 2, each hook call before the epoch's first step, none repeated."""
    calls = []

    def record(method, images):
        done = {"steps": None}  # the last step this process has run
        original = method.on_step_end

        def on_step_end(step, total):
            done["steps"] = step
            original(step, total)

        def on_epoch_start(epoch, given):
            assert given.dtype == torch.uint8 and torch.equal(given, images)  # all training images
            calls.append((epoch, done["steps"]))

        monkeypatch.setattr(method, "on_step_end", on_step_end)
        monkeypatch.setattr(method, "on_epoch_start", on_epoch_start)

    cfg, data, method = tiny_setup(15)
    record(method, data.images)
    if stop is None:
        train(method, data.images, cfg.train, tmp_path, progress=False)
        assert calls == [(0, None), (1, 6), (2, 12)]
        return
    interrupt_after(method, monkeypatch, stop)
    train(method, data.images, cfg.train, tmp_path, progress=False)
    before = list(calls)
    calls.clear()
    cfg, _, resumed = tiny_setup(15)
    record(resumed, data.images)
    train(resumed, data.images, cfg.train, tmp_path, resume=True, progress=False)
    if stop == 6:  # stopped at the boundary: epoch 1 has not started, the resumed run starts it
        assert before == [(0, None)] and calls == [(1, None), (2, 12)]
    else:  # stopped inside epoch 1: its start is in the checkpoint, only epoch 2 starts afresh
        assert before == [(0, None), (1, 6)] and calls == [(2, 12)]


def test_stop_request_saves_at_a_step_boundary(tmp_path, monkeypatch):
    cfg, data, method = tiny_setup(50)
    interrupt_after(method, monkeypatch, 3)
    result = train(method, data.images, cfg.train, tmp_path, progress=False)
    assert result.interrupted and result.steps == 3
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["total_steps"] == 50
    for k, v in method.state_dict().items():
        assert torch.equal(state["method"][k], v.cpu())


def test_checkpoint_loads_with_weights_only(tmp_path):
    cfg, data, method = tiny_setup(2)
    train(method, data.images, cfg.train, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"method", "optimizer", "step", "total_steps", "rng", "elapsed"} <= set(state)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg, data, method = tiny_setup(2)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SelfSupError, match="cannot be read"):
        train(method, data.images, cfg.train, tmp_path, resume=True, progress=False)


def test_minutes_budget_replans_from_measured_step_time():
    cfg = load_config({"train": {"minutes": 1.0}})
    budget = Budget.plan(cfg.train, steps_per_epoch=100)
    assert budget.seconds == 60
    budget.replan(step=10, elapsed=5.0, seconds_per_step=0.5)
    assert budget.total_steps == 10 + 110
    budget.replan(step=200, elapsed=61.0, seconds_per_step=0.5)
    assert budget.total_steps == 201  # over budget: stop after this step


def test_batch_larger_than_data_is_an_error(tmp_path):
    cfg, data, method = tiny_setup(2)
    cfg.train.batch_size = 1000
    with pytest.raises(SelfSupError, match="larger than the data"):
        train(method, data.images, cfg.train, tmp_path, progress=False)


def test_stop_request_second_signal_aborts():
    stop = StopRequest()
    stop._handle(2, None)
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        stop._handle(2, None)


def test_warmup_is_frozen_at_the_first_measured_plan():
    cfg = load_config({"train": {"minutes": 1.0, "warmup_fraction": 0.1}})
    budget = Budget.plan(cfg.train, steps_per_epoch=100)
    first_guess = budget.warmup_steps(0.1)
    budget.replan(step=5, elapsed=2.0, seconds_per_step=0.2, warmup_fraction=0.1)
    frozen = budget.warmup_steps(0.1)
    assert frozen == int(0.1 * budget.total_steps) and frozen != first_guess
    budget.replan(step=50, elapsed=30.0, seconds_per_step=0.1, warmup_fraction=0.1)
    assert budget.warmup_steps(0.1) == frozen  # later plans move the end of the cosine, not the warm-up


def test_a_cut_off_metrics_line_does_not_break_resume(tmp_path):
    from selfsup.train import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    _truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("name, message", [("gpu", "is not a device"), ("mps", "cpu and cuda devices")])
def test_bad_devices_are_one_line_errors(name, message):
    from selfsup.train import resolve_device

    with pytest.raises(SelfSupError, match=message):
        resolve_device(name)


def test_a_non_finite_loss_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg, data, method = tiny_setup(6)
    cfg.train.checkpoint_minutes = 1e-9  # a checkpoint after every step
    original, calls = method.loss, {"n": 0}

    def loss_nan_at_step_four(images):
        calls["n"] += 1
        loss, logs = original(images)
        return (loss * float("nan"), logs) if calls["n"] == 4 else (loss, logs)

    monkeypatch.setattr(method, "loss", loss_nan_at_step_four)
    with pytest.raises(SelfSupError, match="lower learning rate"):
        train(method, data.images, cfg.train, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    """Run folders are shared: results.md and the encoder must be readable by others where the umask allows it."""
    from selfsup.checkpoint import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "results.md", lambda tmp: open(tmp, "w").write("hello"))
    finally:
        os.umask(old)
    assert (tmp_path / "results.md").read_text() == "hello"
    assert (tmp_path / "results.md").stat().st_mode & 0o777 == 0o644
    from safetensors.torch import save_file  # writes a file of its own over the temporary one

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "encoder.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "encoder.safetensors").stat().st_mode & 0o777 == 0o644


def _cpu_probes(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, want", [(False, False, None), (True, False, torch.bfloat16),
                                                     (False, True, torch.bfloat16)])
def test_auto_precision_is_bf16_on_cpus_that_compute_it(monkeypatch, avx512_bf16, amx, want):
    from selfsup.precision import autocast_dtype, describe_precision

    _cpu_probes(monkeypatch, avx512_bf16, amx)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == want
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    line = describe_precision("auto", cpu)
    assert ("bf16 autocast" in line) == (want is not None) and ("train.precision=fp32" in line) == (want is not None)
    assert ("slower than fp32" in describe_precision("bf16", cpu)) == (want is None)


def test_a_torch_without_the_cpu_probes_trains_in_fp32(monkeypatch):
    from selfsup.precision import autocast_dtype, cpu_bf16_native

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_bf16_native() is False and autocast_dtype("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("native, precision, want", [(True, "auto", True), (False, "auto", False),
                                                     (True, "fp32", False), (False, "bf16", True)])
def test_the_training_step_runs_under_the_chosen_precision(tmp_path, monkeypatch, native, precision, want):
    _cpu_probes(monkeypatch, native, False)
    cfg, data, method = tiny_setup(2)
    cfg.train.precision = precision
    seen = []
    original = method.loss

    def loss(images):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(images)

    monkeypatch.setattr(method, "loss", loss)
    features = []
    method.backbone.register_forward_hook(lambda module, args, out: features.append(out.dtype))
    result = train(method, data.images, cfg.train, tmp_path / "run", progress=False)
    assert seen == [want, want] and result.precision == ("bf16" if want else "fp32")
    assert set(features) == {torch.bfloat16 if want else torch.float32}  # the convolutions ran in it


def test_resume_under_bf16_is_bitwise_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, steps=6, stop=3, precision="bf16")


@pytest.mark.parametrize("resumed_with, want", [("auto", "fp32"), ("bf16", "fp32+bf16")])
def test_a_resumed_run_keeps_its_precision_under_auto(tmp_path, monkeypatch, resumed_with, want):
    """A run started in fp32 (another machine, or auto before it picked bf16 on CPUs) and resumed where auto would
    pick bf16 continues in fp32; a precision asked for explicitly is honoured, and the record says both."""
    cfg, data, first = tiny_setup(4)
    interrupt_after(first, monkeypatch, 2)
    assert train(first, data.images, cfg.train, tmp_path / "run", progress=False).precision == "fp32"
    _cpu_probes(monkeypatch, True, False)
    cfg, _, resumed = tiny_setup(4, precision=resumed_with)
    result = train(resumed, data.images, cfg.train, tmp_path / "run", resume=True, progress=False)
    assert result.steps == 4 and result.precision == want


def test_a_checkpoint_from_before_precision_was_recorded_resumes_in_fp32_on_a_cpu(tmp_path, monkeypatch):
    from selfsup.checkpoint import save_checkpoint

    cfg, data, first = tiny_setup(4)
    interrupt_after(first, monkeypatch, 2)
    train(first, data.images, cfg.train, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    del state["precision"]  # as written before checkpoints said
    save_checkpoint(path, state)
    _cpu_probes(monkeypatch, True, False)
    cfg, _, resumed = tiny_setup(4, precision="auto")
    assert train(resumed, data.images, cfg.train, tmp_path / "run", resume=True, progress=False).precision == "fp32"
