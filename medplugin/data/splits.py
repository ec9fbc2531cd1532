"""Patient-level splits: every image of a patient lands in exactly one split."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

__all__ = ["patient_level_split", "assert_disjoint_patients"]

logger = logging.getLogger(__name__)


def patient_level_split(
    items: Sequence[dict],
    fractions: dict[str, float],
    seed: int = 0,
    patient_key: str = "patient_id",
    stratify_key: str | Callable[[dict], Hashable] | None = "label",
) -> dict[str, list[dict]]:
    """Split ``items`` into named parts so that no patient appears in two parts.

    Patients are grouped by their most frequent ``stratify_key`` value (when given); each group is shuffled
    with a local generator seeded by ``seed`` (no global random state is touched) and cut so that every
    part receives its fraction of the group's patients (largest remainder), and at least one patient when
    the group has as many patients as there are parts.

    Args:
        items: datalist entries; each must hold ``patient_key``.
        fractions: part name -> fraction of the images, e.g. ``{"training": 0.9, "validation": 0.1}``.
            Fractions must be positive and sum to 1.
        seed: seed of the local random generator; the same seed gives the same split.
        patient_key: the entry key that identifies a patient.
        stratify_key: entry key to stratify on (hashable values, or lists for multi-label data, compared as
            a whole), a function of an entry giving its stratum (e.g. "any finding" of a
            multi-label entry), or ``None``.

    Returns:
        part name -> entries, each list keeping the input order of its entries.

    Raises:
        ValueError: when fractions are invalid or an entry lacks ``patient_key``.
    """
    if not fractions:
        raise ValueError("fractions must name at least one part, got an empty mapping.")
    bad = {k: v for k, v in fractions.items() if not 0 < float(v) <= 1}
    if bad:
        raise ValueError(f"every fraction must be in (0, 1], got {bad}.")
    total = sum(float(v) for v in fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total:.6f} from {dict(fractions)}.")

    by_patient: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        if patient_key not in item:
            raise ValueError(f"datalist entry {i} has no {patient_key!r} key: {item}.")
        by_patient[item[patient_key]].append(i)

    def _stratum(indices: list[int]) -> Hashable:
        if stratify_key is None:
            return None
        values = []
        for i in indices:
            v = stratify_key(items[i]) if callable(stratify_key) else items[i].get(stratify_key)
            if isinstance(v, (list, tuple, np.ndarray)):
                v = tuple(np.asarray(v).tolist())
            values.append(v)
        return Counter(values).most_common(1)[0][0]

    strata: dict[Hashable, list[Hashable]] = defaultdict(list)
    for pid in sorted(by_patient, key=str):
        strata[_stratum(by_patient[pid])].append(pid)

    rng = np.random.default_rng(seed)
    names = list(fractions)
    assignment: dict[Hashable, str] = {}
    for stratum in sorted(strata, key=str):
        pids = [strata[stratum][j] for j in rng.permutation(len(strata[stratum]))]
        for pid, name in zip(pids, _allocate(len(pids), [float(fractions[n]) for n in names], names), strict=True):
            assignment[pid] = name

    parts: dict[str, list[dict]] = {n: [] for n in names}
    for item in items:
        parts[assignment[item[patient_key]]].append(item)
    logger.info(
        "patient-level split (seed %d): %s",
        seed,
        ", ".join(f"{n}={len(v)} images" for n, v in parts.items()),
    )
    return parts


def _allocate(n: int, fractions: list[float], names: list[str]) -> list[str]:
    """Names for ``n`` patients in proportion to ``fractions`` (largest remainder); every part gets at least
    one patient when there are at least as many patients as parts."""
    exact = [f * n for f in fractions]
    counts = [int(np.floor(e)) for e in exact]
    for i in sorted(range(len(names)), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(names):
        for i in range(len(names)):
            while counts[i] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[i] += 1
    return [name for name, c in zip(names, counts, strict=True) for _ in range(c)]


def assert_disjoint_patients(parts: dict[str, Sequence[dict]], patient_key: str = "patient_id") -> None:
    """Raise ``ValueError`` naming the patients found in more than one part.

    Args:
        parts: part name -> datalist entries.
        patient_key: the entry key that identifies a patient.
    """
    seen: dict[Hashable, str] = {}
    clashes: dict[Hashable, set[str]] = defaultdict(set)
    for name, entries in parts.items():
        for e in entries:
            pid = e[patient_key]
            if pid in seen and seen[pid] != name:
                clashes[pid].update({seen[pid], name})
            seen.setdefault(pid, name)
    if clashes:
        shown = ", ".join(f"{p} in {sorted(n)}" for p, n in list(clashes.items())[:10])
        raise ValueError(f"{len(clashes)} patient(s) appear in more than one split: {shown}.")
