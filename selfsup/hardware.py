"""Which CPU a run or a benchmark ran on, precisely enough to tell two machines apart.

"2 CPU cores (AMD EPYC)" names a 2017 Zen 1 and a 2022 Zen 4 alike, yet one trains this toolkit's small CNNs 2.7x
faster than the other in fp32 and has native bf16 besides (docs/benchmarks.md). Anything measured against the clock
(steps per minute, accuracy after a time budget) is only comparable between machines of one kind, so runs and
benchmark records carry `cpu_label()` and group by `cpu_key()`.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# Instruction sets that change how fast this toolkit trains, as /proc/cpuinfo spells them, and how we print them.
_X86 = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")]
_ARM = [("asimd", "NEON"), ("sve", "SVE"), ("bf16", "BF16")]


def cpu_info(cpuinfo: str | None = None) -> dict:
    """{"model", "family", "model_id", "isa", "cores"} of this machine, read from /proc/cpuinfo (or the text given).

    family/model_id are x86's CPU family and model numbers (None elsewhere): the marketing name alone often hides
    the generation (every EPYC reports "AMD EPYC" in a VM).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            fields.setdefault(key, value)  # the first processor speaks for all
    model = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    table = _X86 if "flags" in fields else _ARM
    return {"model": model,
            "family": int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
            "model_id": int(fields["model"]) if fields.get("model", "").isdigit() else None,
            "isa": [name for flag, name in table if flag in flags],
            "cores": os.cpu_count()}


def cpu_label(info: dict | None = None) -> str:
    """One line for people: 'AMD EPYC (family 23 model 1; AVX2), 2 cores'."""
    info = info or cpu_info()
    details = []
    if info.get("family") is not None:
        details.append(f"family {info['family']} model {info['model_id']}")
    if info.get("isa"):
        details.append(", ".join(info["isa"]))
    inside = f" ({'; '.join(details)})" if details else ""
    return f"{info['model']}{inside}, {info['cores']} cores"


def cpu_key(info: dict | None = None) -> str:
    """The same, as a short name for files and grouping: 'amd-epyc-f23m1-avx2-2c'."""
    info = info or cpu_info()
    parts = [re.sub(r"[^a-z0-9]+", "-", info["model"].lower()).strip("-")[:40] or "cpu"]
    if info.get("family") is not None:
        parts.append(f"f{info['family']}m{info['model_id']}")
    if info.get("isa"):
        parts.append(re.sub(r"[^a-z0-9]+", "", info["isa"][-1].lower()))  # the most capable one names the rest
    parts.append(f"{info['cores']}c")
    return "-".join(parts)
