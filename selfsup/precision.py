"""Training precision: fp32, or bf16 autocast where the hardware computes bf16 natively.

`train.precision=auto` picks bf16 autocast on CUDA devices with bf16 and on CPUs with AVX512-BF16 or AMX
(docs/tuning.md, "bf16 on the CPU"); weights, optimizer state and the losses stay fp32 either way.
"""

from __future__ import annotations

import torch


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 in hardware: AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake) or AMX
    (Intel Sapphire Rapids and later). There oneDNN runs bf16 convolutions and matmuls faster than fp32 (a VICReg
    step of small-cnn on a 2-core Zen 4: 1.45x, docs/tuning.md); x86 CPUs without them emulate bf16, slower than
    fp32. Other CPUs (e.g. ARM with bf16) answer no here: fp32 until measured."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)  # private helpers of torch.cpu: a build without them answers no
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            pass
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the device computes it natively (CUDA with bf16 support, a CPU with AVX512-BF16 or AMX), else None
    (fp32). Weights, optimizer state and the losses stay fp32 either way: autocast runs convolutions and matmuls in
    bf16."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_bf16_native():
        return torch.bfloat16
    return None


def describe_precision(precision: str, device: torch.device) -> str:
    """One line for the log: what precision.auto (or the setting) chose on this device, and why."""
    dtype = autocast_dtype(precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        return ("precision: bf16 autocast, fp32 weights (train.precision=bf16), emulated on this CPU and slower than "
                "fp32; --set train.precision=auto picks fp32 here")
    if precision != "auto":
        return f"precision: {'bf16 autocast, fp32 weights' if dtype else 'fp32'} (train.precision={precision})"
    if dtype is None:
        return f"precision: fp32 (auto: {device.type} without native bf16)"
    why = "a CPU with native bf16 (AVX512-BF16 or AMX)" if device.type == "cpu" else "a CUDA device with bf16"
    return f"precision: bf16 autocast, fp32 weights (auto: {why}; --set train.precision=fp32 to turn it off)"


def legacy_precision(precision: str, device: torch.device) -> str:
    """What a checkpoint from before checkpoints recorded their precision trained in: auto then meant bf16 on CUDA
    devices with bf16 and fp32 everywhere else."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision
