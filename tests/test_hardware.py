"""Which CPU: the label and key that keep clock-bound numbers of different machines apart."""

import json
import sys
from pathlib import Path

from selfsup.hardware import cpu_info, cpu_key, cpu_label

# Abridged /proc/cpuinfo of three machines this kind of project runs on: two EPYC generations that both call
# themselves "AMD EPYC" in a VM, and an ARM server.
ZEN1 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 1
model name	: AMD EPYC
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 1
model name	: AMD EPYC
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni
"""
ZEN4 = """processor	: 0
cpu family	: 25
model		: 17
model name	: AMD EPYC
flags		: fpu sse2 avx avx2 avx512f avx512dq avx512_bf16 avx512_vnni
"""
ARM = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes sha1 sve bf16 i8mm
CPU implementer	: 0x41
"""


def test_two_epyc_generations_are_told_apart():
    zen1, zen4 = cpu_info(ZEN1), cpu_info(ZEN4)
    assert zen1["model"] == zen4["model"] == "AMD EPYC"
    assert (zen1["family"], zen1["model_id"], zen1["isa"]) == (23, 1, ["AVX2"])
    assert (zen4["family"], zen4["model_id"], zen4["isa"]) == (25, 17, ["AVX2", "AVX-512", "AVX512-BF16"])
    cores = zen1["cores"]
    assert cpu_label(zen1) == f"AMD EPYC (family 23 model 1; AVX2), {cores} cores"
    assert cpu_label(zen4) == f"AMD EPYC (family 25 model 17; AVX2, AVX-512, AVX512-BF16), {cores} cores"
    assert cpu_key(zen1) == f"amd-epyc-f23m1-avx2-{cores}c"
    assert cpu_key(zen4) == f"amd-epyc-f25m17-avx512bf16-{cores}c"


def test_arm_and_unreadable_cpuinfo():
    arm = cpu_info(ARM)
    assert arm["family"] is None and arm["isa"] == ["NEON", "SVE", "BF16"]
    assert "(NEON, SVE, BF16)" in cpu_label(arm) and cpu_key(arm).endswith(f"-bf16-{arm['cores']}c")
    bare = cpu_info("")  # no /proc/cpuinfo (macOS, Windows): the platform's name, no details
    assert bare["isa"] == [] and bare["model"] and cpu_label(bare).endswith(" cores")
    assert "/" not in cpu_key(bare) and " " not in cpu_key(bare)


def test_this_machine():
    assert cpu_label() == cpu_label(cpu_info()) and cpu_key() == cpu_key(cpu_info())


def test_quality_records_are_kept_and_published_per_machine(tmp_path, monkeypatch):
    """bench/quality_at_budget.py: a record names its machine, and each machine gets its own table and curve, so a
    minute on a slow CPU is never averaged with a minute on a fast one."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import quality_at_budget as q
    import report

    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(report, "DOC", doc)
    results = tmp_path / "results"
    results.mkdir()
    base = {"data": "fashion-mnist", "validation": None, "steps": 10, "images_per_s": 100.0, "knn": 0.8,
            "linear": 0.85, "few_label": 0.75, "random_init": 0.6, "scratch": 0.7, "labels": 200,
            "eval_seconds": 5, "backbone": "small-cnn width 32", "batch": 256, "settings": "defaults",
            "precision": "fp32", "note": "test"}
    made = [("old", None, None, "2026-11-30"), ("fast", "amd-epyc-f25m17-avx512bf16-2c", "Zen 4 label", "2026-12-01"),
            ("slow", "amd-epyc-f23m1-avx2-2c", "Zen 1 label", "2026-12-07")]
    for name, key, label, day in made:
        for seed, few in ((0, 0.70), (1, 0.80)):
            path = q.record_path(results, name, "fashion-mnist", 5, seed, None, key)
            assert (key or "seed") in path.name and path.suffix == ".json"
            extra = {"machine": label, "machine_key": key} if key else {}
            path.write_text(json.dumps({**base, "name": name, "budget": 5, "seed": seed, "date": day,
                                        "few_label": few, **extra}))
    assert q.record_path(results, "x", "fashion-mnist", 5, 0, 0.1667, "k").name == \
        "x-fashion-mnist-5min-seed0-val0.1667-k.json"
    recs = q.records(results, "fashion-mnist", None)
    assert len(recs) == 6 and q.records(results, "fashion-mnist", 0.1667) == []
    assert {k: len(v) for k, v in q.by_machine(recs).items()} == {None: 2, "amd-epyc-f25m17-avx512bf16-2c": 2,
                                                                 "amd-epyc-f23m1-avx2-2c": 2}

    class Args:
        data, validation, images = "fashion-mnist", None, str(tmp_path / "images")
    Args.results = str(results)
    q.publish(Args)
    text = doc.read_text()
    sections = text.split("<!-- /")
    assert text.count("## Quality per CPU-minute on fashion-mnist") == 3
    slow = next(s for s in sections if "<!-- quality-at-budget-fashion-mnist-amd-epyc-f23m1-avx2-2c -->" in s)
    assert "## Quality per CPU-minute on fashion-mnist, Zen 1 label" in slow and "- date: 2026-12-07" in slow
    assert "- machine: Zen 1 label (where the records were measured)" in slow
    assert "| slow | 5 | 0,1 |" in slow and "| fast |" not in slow and "75.0 ± 7.1" in slow  # seeds of one machine
    old = next(s for s in sections if "<!-- quality-at-budget-fashion-mnist -->" in s)
    assert "machine not recorded" in old and "| old | 5 | 0,1 |" in old and "| slow |" not in old
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "quality-at-budget-fashion-mnist-amd-epyc-f23m1-avx2-2c.png",
        "quality-at-budget-fashion-mnist-amd-epyc-f25m17-avx512bf16-2c.png", "quality-at-budget-fashion-mnist.png"]


def test_methods_table_keeps_one_table_per_machine(tmp_path, monkeypatch):
    """bench/methods_table.py: the same per-machine split for the every-method table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import methods_table as m
    import report

    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(report, "DOC", doc)
    monkeypatch.setattr(m, "RESULTS", tmp_path)

    class Args:
        data, minutes, out = "fashion-mnist", 10.0, str(tmp_path / "out")

    def record(method, few, machine):
        return {"method": method, "seed": 0, "date": "2026-12-07", "overrides": [], "pretext": None, "note": None,
                "train": {"steps": 5, "images_per_s": 50.0, "precision": "fp32"},
                "eval": {"knn": {"top1": 0.7}, "linear": {"top1": 0.8},
                         "few_label": {"labels": 200, "ssl": few, "random_init": 0.6, "supervised_scratch": 0.7}},
                **({"machine": f"label of {machine}", "machine_key": machine} if machine else {})}

    for method, few, machine in (("simclr", 0.71, None), ("simclr", 0.61, "zen1-2c"), ("vicreg", 0.62, "zen1-2c")):
        path = m.record_path(method, 0, Args, machine)
        path.write_text(json.dumps(record(method, few, machine)))
    assert m.record_path("simclr", 0, Args, "zen1-2c").name == "simclr-fashion-mnist-10min-seed0-zen1-2c.json"
    assert m.machines(Args) == [None, "zen1-2c"]
    assert [r["method"] for r in m.finished_rows(Args, "zen1-2c")] == ["simclr", "vicreg"]
    assert [r["method"] for r in m.finished_rows(Args, None)] == ["simclr"]
    for machine in m.machines(Args):
        m.publish(Args, machine)
    text = doc.read_text()
    zen1 = text[text.index("<!-- methods-table-fashion-mnist-10min-zen1-2c -->"):]
    old = text[text.index("<!-- methods-table-fashion-mnist-10min -->"):
               text.index("<!-- /methods-table-fashion-mnist-10min -->")]
    assert "## Every method at 10 minutes on fashion-mnist, label of zen1-2c" in zen1 and "| 61.0 |" in zen1
    assert "| 71.0 |" not in zen1 and "| 71.0 |" in old and "| vicreg |" not in old
    assert "- machine: not recorded" in old
