"""Reading datalist files and indexing folders of images for inference."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from medplugin.errors import BadInputError
from medplugin.io.image2d import IMAGE_SUFFIXES, looks_like_image
from medplugin.utils import safe_name

__all__ = ["read_datalist", "index_images", "index_knee_inputs", "index_knee_volumes", "open_text", "CsvReader",
           "strip_suffix"]

logger = logging.getLogger(__name__)

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")


def open_text(path: str | os.PathLike) -> io.StringIO:
    """A whole text file (CSV, list, JSON) decoded as UTF-8, a leading BOM dropped, as an in-memory file object.

    Use it instead of ``open(path)`` for label files: undecodable bytes and NUL bytes (a binary or damaged file)
    become :class:`BadInputError` naming the file and the offset, not a ``UnicodeDecodeError`` mid-way.
    Newlines are kept as they are (``newline=""``), as the ``csv`` module wants.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInputError(path, f"cannot read the file ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"not a UTF-8 text file (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                                  "binary or damaged?") from e
    if "\x00" in text:
        raise BadInputError(path, f"holds a NUL byte at character {text.index(chr(0))}: binary or damaged, not text")
    return io.StringIO(text, newline="")


class CsvReader:
    """``csv.reader`` whose parse errors (e.g. an unclosed quote running past the field size limit) become
    :class:`BadInputError` naming the file and line. Iterate it like ``csv.reader``; ``line_num`` as there.

    Args:
        f: the open text (e.g. from :func:`open_text`).
        path: the file, for messages.
        kwargs: passed to ``csv.reader``.
    """

    def __init__(self, f, path: str | os.PathLike, **kwargs) -> None:
        self._reader = csv.reader(f, **kwargs)
        self.path = path

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        try:
            return next(self._reader)
        except csv.Error as e:
            raise BadInputError(self.path, f"line {self._reader.line_num}: malformed CSV ({e})") from e


def read_datalist(
    path: str | os.PathLike, required_keys: Sequence[str] = ("image",), sections: Sequence[str] | None = None
) -> dict[str, list[dict]]:
    """Read a MONAI datalist JSON; relative ``image`` paths are resolved against the JSON's folder.

    Raises:
        BadInputError: missing or malformed file, missing sections or keys, or entries whose image is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "datalist file not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(path, f"not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise BadInputError(path, f"expected a JSON object with datalist sections, got {type(data).__name__}")
    for s in sections or ():
        if s not in data:
            raise BadInputError(path, f"no {s!r} section (found {sorted(data)})")
    out = {}
    missing = []
    for name, entries in data.items():
        if not isinstance(entries, list):
            continue
        fixed = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or any(k not in e for k in required_keys):
                raise BadInputError(path, f"{name}[{i}] must be an object with keys {list(required_keys)}, got {e!r}")
            e = dict(e)
            img = Path(e["image"])
            e["image"] = str(img if img.is_absolute() else path.parent / img)
            if not os.path.exists(e["image"]):
                missing.append(f"{name}[{i}] {e['image']}")
            fixed.append(e)
        out[name] = fixed
    if missing:
        raise BadInputError(path, f"{len(missing)} entr(ies) name missing files: {missing[:10]}")
    return out


NOT_AN_IMAGE = "not an image file (JPEG, PNG, BMP, TIFF or DICOM expected); skipped"
NOT_AN_EXAM = "an image file, not a knee exam (NIfTI, MRNet .npy or a folder per DICOM series expected); skipped"


def index_images(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """Entries for batch inference: every image under ``dataset_dir`` (recursively) or those ``datalist`` names.

    ``datalist`` may be a JSON list of paths or of ``{"image": path}`` objects, a JSON datalist (its
    ``testing``/``test`` section, else the first list), or a text file with one path per line. Each entry is
    ``{"image": path, "path": path, "name": safe relative name}``; the name keys output files (CAM overlays)
    and never contains path separators. Files are not opened here: unreadable ones produce an error row at
    inference time, and the others are still processed. A file in ``dataset_dir`` that is not an image is named in
    a warning and gets an entry whose ``error`` says so (:class:`medplugin.data.TolerantDataset` turns it into an
    error row without reading it), so it is never dropped silently.
    """
    if datalist:
        items = _read_image_list(Path(datalist))
        base = Path(dataset_dir) if dataset_dir else Path(datalist).parent
    else:
        base = _input_folder(dataset_dir)
        files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        image = [looks_like_image(p) for p in files]
        items = [str(p) for p, ok in zip(files, image) if ok]
        skipped = [p for p, ok in zip(files, image) if not ok]
        if not items:
            raise BadInputError(base, "no JPEG, PNG, BMP, TIFF or DICOM files found (searched recursively)")
        if skipped:  # never dropped silently: each is named
            logger.warning("%d file(s) under %s skipped, not JPEG, PNG, BMP, TIFF or DICOM images:\n%s", len(skipped),
                           base, "\n".join(f"  {p}: {NOT_AN_IMAGE}" for p in skipped[:50])
                           + (f"\n  ... and {len(skipped) - 50} more" if len(skipped) > 50 else ""))
    entries = _named([Path(p) if Path(p).is_absolute() else base / p for p in items], base,
                     lambda rel: str(Path(rel).with_suffix("")))
    if not datalist and skipped:  # each also gets its row in predictions.csv, with the reason
        named = _named(skipped, base, lambda rel: str(Path(rel).with_suffix("")) + "_not_an_image")
        for e in named:
            e["error"] = f"{e['path']}: {NOT_AN_IMAGE}"
        entries += named
    logger.info("inference on %d file(s)", len(entries) - (len(skipped) if not datalist else 0))
    return entries


def index_knee_inputs(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """Exams for batch inference: every NIfTI file, MRNet ``.npy`` file and DICOM series folder under ``dataset_dir``.

    A folder holding DICOM files (``DICM`` at byte 128) is one exam (one series). ``datalist`` (a JSON list or
    datalist, or a text file with one path a line) names the exams instead (as :func:`index_images`). Files are
    not opened beyond the DICOM check: unreadable ones produce an error row at inference time. Entries are
    ``{"image", "path", "name"}``; ``name`` is the path relative to ``dataset_dir`` made safe for file names. A 2-D
    image file (JPEG, PNG, BMP, TIFF) or a DICOM file directly in ``dataset_dir`` (outside a series folder) is not
    an exam: it gets an entry whose ``error`` says so (an error row, as :func:`index_images` gives a file that is
    not an image), so it is never dropped silently.

    Raises:
        BadInputError: no folder, or nothing to infer on.
    """
    if datalist:
        return index_images(dataset_dir, datalist)
    base = _input_folder(dataset_dir)
    items, flat = [], []
    for p in sorted(base.rglob("*")):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith(_VOLUME_SUFFIXES):
            items.append(p)
        elif p.is_dir() and any(f.is_file() and _has_dicm(f) for f in p.iterdir()):
            items.append(p)
        elif p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or (p.parent == base and _has_dicm(p))):
            flat.append(p)  # a photograph, a radiograph, a lone DICOM file: never dropped silently, an error row
    if not items:
        raise BadInputError(base, "no NIfTI (.nii, .nii.gz), MRNet .npy files or DICOM series folders found")
    entries = _named(items, base, lambda rel: strip_suffix(rel[:-4] if rel.lower().endswith(".npy") else rel,
                                                            (".nii.gz", ".nii")))
    if flat:
        logger.warning("%d image file(s) under %s are not knee exams; each gets an error row", len(flat), base)
        for e in _named(flat, base, lambda rel: str(Path(rel).with_suffix("")) + "_not_an_exam"):
            e["error"] = f"{e['path']}: {NOT_AN_EXAM}"
            entries.append(e)
    logger.info("inference on %d exam(s)", len(entries) - len(flat))
    return entries


def index_knee_volumes(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """Entries for batch inference: every knee exam under ``dataset_dir`` (recursively) or those ``datalist`` names.

    An exam is a NIfTI file (``.nii``, ``.nii.gz``), an MRNet ``.npy`` file, or a folder directly holding DICOM
    files (one series; found by the ``.dcm`` suffix or the ``DICM`` magic among its first 20 other files).
    Entries are ``{"image": path, "path": path, "name": safe relative name}``; nothing is opened here, so a bad
    file becomes an error row at inference time while the others are processed.

    Args:
        dataset_dir: the folder to search.
        datalist: optional JSON list / datalist or text file naming the exams (relative to ``dataset_dir``).

    Raises:
        BadInputError: the folder is missing or holds no exam.
    """
    if datalist:
        base = Path(dataset_dir) if dataset_dir else Path(datalist).parent
        items = [Path(p) if Path(p).is_absolute() else base / p for p in _read_image_list(Path(datalist))]
    else:
        base = _input_folder(dataset_dir)
        items = []
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            here = Path(folder)
            files = sorted(f for f in files if not f.startswith("."))
            items += [here / f for f in files if f.lower().endswith(_VOLUME_SUFFIXES)]
            others = [here / f for f in files if not f.lower().endswith(_VOLUME_SUFFIXES)]
            if here != base and any(p.suffix.lower() == ".dcm" or _has_dicm(p) for p in others[:20]):
                items.append(here)
        items.sort()
        if not items:
            raise BadInputError(base, "no NIfTI (.nii, .nii.gz), MRNet .npy or DICOM series folder found (searched "
                                      "recursively)")

    def stem(rel: str) -> str:
        for suffix in _VOLUME_SUFFIXES:
            rel = strip_suffix(rel, (suffix,))
        return rel

    return _named(items, base, stem)



def _input_folder(dataset_dir: str | os.PathLike | None) -> Path:
    if not dataset_dir or not Path(dataset_dir).is_dir():
        raise BadInputError(dataset_dir, "input folder not found (set --dataset_dir or --datalist)")
    return Path(dataset_dir)


def strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    """``name`` without the first of ``suffixes`` it ends with (case-insensitive)."""
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _has_dicm(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _named(paths: Sequence[Path], base: Path, stem: Callable[[str], str]) -> list[dict]:
    """``{"image", "path", "name"}`` entries: ``name`` is ``stem`` of the path relative to ``base`` (or of the file
    name, outside it) made safe for file names, and unique (``_1``, ``_2``, ... appended)."""
    entries, seen = [], set()
    for full in paths:
        try:
            rel = full.relative_to(base)
        except ValueError:
            rel = Path(full.name)
        name = first = safe_name(stem(str(rel)))
        n = 1
        while name in seen:
            name, n = f"{first}_{n}", n + 1
        seen.add(name)
        entries.append({"image": str(full), "path": str(full), "name": name})
    return entries


def _read_image_list(path: Path) -> list[str]:
    if not path.is_file():
        raise BadInputError(path, "datalist file not found")
    text = open_text(path).getvalue()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInputError(path, f"not valid JSON ({e})") from e
        if isinstance(data, dict):
            key = next((k for k in ("testing", "test") if k in data), None)
            key = key or next((k for k, v in data.items() if isinstance(v, list)), None)
            if key is None:
                raise BadInputError(path, "no list of images found in the JSON object")
            data = data[key]
        if not isinstance(data, list):
            raise BadInputError(path, "expected a list of image paths")
        out = []
        for i, e in enumerate(data):
            v = e.get("image") if isinstance(e, dict) else e
            if not isinstance(v, str):
                raise BadInputError(path, f"entry {i} names no image path: {e!r}")
            out.append(v)
        return out
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
