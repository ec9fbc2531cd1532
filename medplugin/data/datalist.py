"""Reading datalist files and indexing folders of images for inference."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from medplugin.errors import BadInputError
from medplugin.io.image2d import looks_like_image
from medplugin.utils import safe_name

__all__ = ["read_datalist", "index_images"]

logger = logging.getLogger(__name__)


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


def index_images(dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None) -> list[dict]:
    """Entries for batch inference: every image under ``dataset_dir`` (recursively) or those ``datalist`` names.

    ``datalist`` may be a JSON list of paths or of ``{"image": path}`` objects, a JSON datalist (its
    ``testing``/``test`` section, else the first list), or a text file with one path per line. Each entry is
    ``{"image": path, "path": path, "name": safe relative name}``; the name keys output files (CAM overlays)
    and never contains path separators. Files are not opened here: unreadable ones produce an error row at
    inference time, and the others are still processed.
    """
    if datalist:
        items = _read_image_list(Path(datalist))
        base = Path(dataset_dir) if dataset_dir else Path(datalist).parent
    else:
        if not dataset_dir or not Path(dataset_dir).is_dir():
            raise BadInputError(dataset_dir, "input folder not found (set --dataset_dir or --datalist)")
        base = Path(dataset_dir)
        items = sorted(
            str(p) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".") and looks_like_image(p)
        )
        if not items:
            raise BadInputError(base, "no JPEG, PNG, BMP, TIFF or DICOM files found (searched recursively)")
    entries, seen = [], set()
    for p in items:
        full = Path(p) if Path(p).is_absolute() else base / p
        try:
            rel = full.relative_to(base)
        except ValueError:
            rel = Path(full.name)
        name = safe_name(str(rel.with_suffix("")))
        stem, n = name, 1
        while name in seen:
            name, n = f"{stem}_{n}", n + 1
        seen.add(name)
        entries.append({"image": str(full), "path": str(full), "name": name})
    logger.info("inference on %d file(s)", len(entries))
    return entries


def _read_image_list(path: Path) -> list[str]:
    if not path.is_file():
        raise BadInputError(path, "datalist file not found")
    text = path.read_text()
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
