"""``medplugin compare RUN_A RUN_B``: the command line of :mod:`medplugin.compare` (it prints; the library logs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medplugin.compare import compare_runs, format_table
from medplugin.errors import BadInputError
from medplugin.utils import write_json

__all__ = ["add_compare_parser", "cmd_compare", "main"]


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to ``medplugin``'s sub-parsers (``cli.build_parser``)."""
    c = subparsers.add_parser("compare", help="compare two evaluation runs on the same test set (paired bootstrap, "
                                              "DeLong)",
                              description="Compare two evaluation runs on the same test set: differences B - A of "
                                          "every headline figure with a paired patient-level bootstrap (95% "
                                          "interval, p-value) and DeLong's test for each AUROC.")
    c.add_argument("run_a", help="evaluation run folder A (the reference)")
    c.add_argument("run_b", help="evaluation run folder B; differences are B - A")
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="resamples (default 1000)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("-o", "--output", default="comparison.json", help="JSON to write (default: comparison.json)")
    c.add_argument("--force", action="store_true", help="replace an existing output file")
    c.set_defaults(func=cmd_compare)
    return c


def cmd_compare(args) -> int:
    """Run the comparison, print the table, write the JSON; a bad run folder is an error line and exit code 2."""
    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; use --force to replace it")
    if args.bootstrap < 1:
        print(f"error: --bootstrap must be at least 1, got {args.bootstrap}", file=sys.stderr)
        return 2
    try:
        result = compare_runs(args.run_a, args.run_b, args.bootstrap, args.seed)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"A: {result['run_a']}\nB: {result['run_b']}\n{result['n_images']} images of {result['n_patients']} "
          f"patients, {result['n_resamples']} paired {result['resampling_unit']}-level bootstrap resamples\n")
    print(format_table(result))
    write_json(out, result)
    print(f"\nwritten to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medplugin.compare_cli RUN_A RUN_B [...]`` (the same as ``medplugin compare``)."""
    parser = argparse.ArgumentParser(prog="medplugin")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
