"""Run every benchmark and print one Markdown table: ``python -m benchmarks [--quick]``."""

from __future__ import annotations

import argparse
import platform

import torch

from benchmarks import bench_classification


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a small version (for CI; no thresholds)")
    args = p.parse_args()
    rows = bench_classification.run(quick=args.quick)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\nmachine: {device}; torch {torch.__version__}\n")
    print("| benchmark | A | B | A/B |")
    print("|---|---|---|---|")
    for name, a_label, a, b_label, b in rows:
        print(f"| {name} | {a_label}: {a:.1f} | {b_label}: {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
