"""Per-file test times of the integration tier, for scheduling it over pytest-xdist processes.

``tests/durations.json`` maps each test file to the seconds its tests took (setup, call and teardown summed) in one
full run of ``make test-integration`` on 2 CPU cores. ``tests/conftest.py`` orders the files longest first, and the
Makefile keeps that order (``--no-loadscope-reorder``): the processes take the long files first and the short ones
fill in, so they finish together. The figures only order the files; a wrong or missing one (a new file: the median
is assumed) costs balance, never a result.

Update after a change that moves the times (any ``--durations=0`` log of the tier works)::

    python -m pytest -m "not (not slow and not integration)" -n 2 --dist loadfile --durations=0 | tee log.txt
    python -m tests.durations log.txt
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FILE = Path(__file__).with_name("durations.json")
_LINE = re.compile(r"^\s*([0-9.]+)s (?:setup|call|teardown)\s+(tests/[^:\s]+\.py)::")


def read() -> dict[str, float]:
    """``{"tests/x/test_y.py": seconds}`` (empty when the file is missing or unreadable)."""
    try:
        data = json.loads(FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


def from_log(text: str) -> dict[str, float]:
    """Per-file totals from pytest's ``--durations=0`` lines."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            totals[m.group(2)] = totals.get(m.group(2), 0.0) + float(m.group(1))
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.durations PYTEST_LOG", file=sys.stderr)
        return 2
    totals = from_log(Path(argv[0]).read_text())
    if not totals:
        print(f"error: {argv[0]}: no --durations=0 lines", file=sys.stderr)
        return 2
    FILE.write_text(json.dumps(totals, indent=1) + "\n")
    print(f"wrote {FILE}: {len(totals)} files, {sum(totals.values()) / 60:.1f} min in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
