"""Writing benchmark numbers into docs/benchmarks.md: one section per benchmark, with machine, command and date."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from datetime import date
from pathlib import Path

import torch

from selfsup.hardware import cpu_label

# SELFSUP_BENCH_DOC points trial runs of a benchmark elsewhere, so docs/benchmarks.md keeps only real numbers.
DOC = Path(os.environ.get("SELFSUP_BENCH_DOC") or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
HEADER = "# Benchmarks\n\nEvery number here was printed by the command shown with it. Sections are rewritten by their benchmark.\n"


def machine() -> str:
    """One line describing where the numbers were measured, precisely enough to tell CPU generations apart."""
    return (f"{cpu_label()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def write_section(key: str, title: str, body: str, machine_line: str | None = None,
                  dates: str | None = None) -> None:
    """Replace (or append) the section `key` of docs/benchmarks.md. A section built from records kept over several
    sessions passes where (`machine_line`) and when (`dates`) they were measured, instead of today and here."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    command = "python " + shlex.join([os.path.relpath(sys.argv[0], DOC.parent.parent)] + sys.argv[1:])
    section = (f"<!-- {key} -->\n## {title}\n\n- date: {dates or date.today().isoformat()}\n"
               f"- machine: {machine_line or machine()}\n"
               f"- command: `{command}`\n\n{body.rstrip()}\n<!-- /{key} -->\n")
    pattern = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text)


def write_records_section(key: str, title: str, body: str, records: list[dict]) -> None:
    """write_section for a table of records kept over sessions: its date and machine lines say when and on which CPU
    the records were measured (records from before 2026-12-07 name no CPU)."""
    days = sorted({r["date"] for r in records})
    where = records[0].get("machine") or "not recorded (2 CPU cores, AMD EPYC; the generation unknown)"
    write_section(key, title, body, machine_line=f"{where} (where the records were measured)",
                  dates=days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}")
