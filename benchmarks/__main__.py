"""Run every benchmark and print one Markdown table: ``python -m benchmarks [--quick] [--only NAME ...]``.

Every module ``benchmarks/bench_<name>.py`` is a benchmark: it defines ``run(quick: bool) -> list[row]`` where a
row is ``(name, a_label, a, b_label, b)`` and ``a / b`` is the ratio reported. Each ratio is measured within one
run on one machine, so it means the same thing on a laptop and on a GPU server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import platform
from pathlib import Path

import torch


def discover() -> list[str]:
    """Names of the benchmark modules, sorted."""
    here = Path(__file__).parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def main() -> None:
    names = discover()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a small version (for CI; no thresholds)")
    p.add_argument("--only", nargs="+", choices=names, help="run only these benchmarks")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows, skipped = [], []
    for name in args.only or names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        reason = getattr(module, "skip_reason", lambda: None)()  # optional: why it cannot run on this machine
        if reason:
            skipped.append(f"skipped {name}: {reason}")
            continue
        rows.extend(module.run(quick=args.quick))
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(f"\nmachine: {device}; torch {torch.__version__}\n")
    print("| benchmark | A | B | A/B |")
    print("|---|---|---|---|")
    for name, a_label, a, b_label, b in rows:
        print(f"| {name} | {a_label}: {a:.3g} | {b_label}: {b:.3g} | {a / b:.2f} |")
    for line in skipped:
        print(f"\n{line}")


if __name__ == "__main__":
    main()
