"""Lung segmentation datasets (chest radiograph + lung mask pairs) -> MONAI datalist with a patient-level split.

Two layouts are recognised (:func:`detect_lungseg_layout`):

- ``montgomery``: the Montgomery County chest X-ray set (Jaeger et al. 2014, "Two public chest X-ray datasets
  for computer-aided screening of pulmonary diseases", Quant Imaging Med Surg 4(6)):
  ``CXR_png/MCUCXR_0001_0.png`` with ``ManualMask/leftMask/MCUCXR_0001_0.png`` and
  ``ManualMask/rightMask/MCUCXR_0001_0.png`` (0/255 PNGs, one per lung; the last digit of the name is 0 for
  normal, 1 for abnormal). The root may also be the folder holding ``MontgomerySet/``. The two masks are
  merged at load time (:class:`medplugin.transforms.LoadLungMaskd`): the entry's ``label`` is the list
  ``[leftMask, rightMask]``.
- ``images_masks``: any set laid out as ``images/<name>.<ext>`` and ``masks/<name>.<ext>`` (matching names
  without the suffix; PNG, JPEG, BMP, TIFF or DICOM images; masks > 0 are lung). Sub-folders are searched and
  the relative path (without suffix) must match.

Each entry is ``{"image": path, "label": path or [paths], "patient_id": str, "name": str}``. Montgomery has
one image per patient (the number in the name); for ``images_masks`` the patient is the name, or the first
group of ``patient_pattern`` matched against it, so that follow-up images of one patient stay together.
Image and mask sizes are compared from the file headers (nothing is decoded).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from medplugin.data.indexer import DatasetIndexer, Scan
from medplugin.errors import BadInputError
from medplugin.io.image2d import looks_like_image

__all__ = ["LAYOUTS", "LungSegmentationIndexer", "detect_lungseg_layout", "index_lungseg", "lungseg_datalist",
           "image_size_2d"]

logger = logging.getLogger(__name__)

LAYOUTS = ("montgomery", "images_masks")
_MC_NAME = re.compile(r"^MCUCXR_(?P<pid>\d+)_(?P<abn>[01])$", re.IGNORECASE)


def image_size_2d(path: str | os.PathLike) -> tuple[int, int]:
    """``(rows, columns)`` of a 2D image from its header only (PIL for PNG/JPEG/..., pydicom for DICOM).

    Raises:
        BadInputError: the file is missing or its header cannot be read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "file not found")
    from medplugin.io.dicom import has_dicom_magic
    from medplugin.io.image2d import DICOM_SUFFIXES, IMAGE_SUFFIXES

    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and has_dicom_magic(path)):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as e:  # noqa: BLE001 - any header problem
            raise BadInputError(path, f"cannot read the DICOM header ({type(e).__name__})") from e
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            shape = [s for s in nib.load(path).shape if s != 1]
        except Exception as e:  # noqa: BLE001
            raise BadInputError(path, f"cannot read the NIfTI header ({type(e).__name__})") from e
        if len(shape) != 2:
            raise BadInputError(path, f"expected a 2D NIfTI image, got shape {shape}")
        return int(shape[1]), int(shape[0])  # NIfTI axes are (x = column, y = row)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(path, f"not a readable image ({type(e).__name__})") from e
    return int(h), int(w)


def detect_lungseg_layout(root: str | os.PathLike) -> tuple[str, Path]:
    """Which layout ``root`` holds: ``("montgomery", folder)`` or ``("images_masks", folder)``.

    The folder returned is where ``CXR_png/`` (or ``images/``) is: ``root`` itself or ``root/MontgomerySet``.

    Raises:
        BadInputError: neither layout found, saying what was expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "dataset folder not found")
    for base in (root, root / "MontgomerySet"):
        if (base / "CXR_png").is_dir() and (base / "ManualMask").is_dir():
            return "montgomery", base
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images_masks", root
    raise BadInputError(
        root,
        "no lung segmentation layout found: expected the Montgomery layout (CXR_png/ and ManualMask/leftMask|"
        "rightMask/) or images/ + masks/ with matching file names",
    )


def _files(folder: Path) -> dict[str, Path]:
    """Relative path without suffix -> file, for every image file under ``folder`` (recursive)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and looks_like_image(p):
            key = str(p.relative_to(folder).with_suffix("")).replace(os.sep, "/")
            out.setdefault(key, p)
    return out


class LungSegmentationIndexer(DatasetIndexer):
    """Chest radiograph + lung mask pairs (either layout, see the module docstring) -> training/validation/test.

    The split is by patient, not stratified; ``training`` and ``validation`` must not come out empty.

    Args:
        root: the dataset folder.
        val_fraction: share of patients for validation, in (0, 1).
        test_fraction: share of patients for the test split, in [0, 1); 0 gives an empty ``test`` list.
        seed: seed of the patient-level split.
        on_bad_input: ``"fail"`` raises one error listing every bad pair (missing mask, unreadable header,
            size mismatch); ``"skip"`` logs them and leaves them out.
        patient_pattern: ``images_masks`` only: a regular expression whose first group (or whole match) in the
            image name is the patient id (e.g. ``r"^(\\w+?)_\\d+$"``); default: each image is its own patient.
    """

    name = "lung segmentation"
    stratify = None
    zero_validation = False
    datalist_sections = ("training", "validation")

    def __init__(self, root: str | os.PathLike | None, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0, on_bad_input: str = "fail", patient_pattern: str | None = None) -> None:
        super().__init__(root, val_fraction, test_fraction, seed, on_bad_input)
        self.patient_pattern = patient_pattern

    def check_fractions(self, val_fraction: float, test_fraction: float | None) -> tuple[float, float | None]:
        """One message for the three conditions (each fraction's range and their sum)."""
        if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"val_fraction must be in (0, 1), test_fraction in [0, 1), and their sum below 1; got {val_fraction!r} "
                f"and {test_fraction!r}."
            )
        return float(val_fraction), float(test_fraction)

    def scan(self) -> Scan:
        """Find the layout and pair each image with its mask(s), comparing their sizes from the headers."""
        self.layout, self.base = detect_lungseg_layout(self.root)
        self.problems.where = self.base
        if self.layout == "montgomery":
            if self.patient_pattern:
                logger.warning("patient_pattern is ignored for the Montgomery layout (one image per patient)")
            entries = self._scan_montgomery(self.base)
        else:
            entries = self._scan_images_masks(self.base)
        self.problems.close()
        if not entries:
            raise BadInputError(self.base, f"no usable image/mask pairs found ({self.layout} layout)")
        self._n_pairs = len(entries)
        return Scan(entries)

    def index(self) -> dict[str, list[dict]]:
        """As :meth:`DatasetIndexer.index`; an empty training or validation split is an error naming the folder."""
        datalist = super().index()
        for name in ("training", "validation"):
            if not datalist[name]:
                raise BadInputError(self.base, f"the {name} split is empty ({self._n_pairs} usable pair(s)): add data "
                                               "or change val_fraction/test_fraction")
        return datalist

    def check_datalist(self, datalist: dict[str, list[dict]], path: Path) -> dict[str, list[dict]]:
        """Resolve mask paths against the JSON's folder, check they exist, and add an empty ``test`` if absent."""
        for entries in datalist.values():
            for e in entries:
                labels = e["label"] if isinstance(e["label"], list) else [e["label"]]
                fixed = [str(p if Path(p).is_absolute() else path.parent / p) for p in labels]
                missing = [p for p in fixed if not os.path.exists(p)]
                if missing:
                    raise BadInputError(path, f"mask file(s) not found: {missing[:5]}")
                e["label"] = fixed if isinstance(e["label"], list) else fixed[0]
        datalist.setdefault("test", [])
        return datalist

    def _pair_ok(self, image: Path, masks: list[Path]) -> bool:
        try:
            size = image_size_2d(image)
        except BadInputError as e:
            self.problems.add(image, e.reason)
            return False
        for m in masks:
            try:
                msize = image_size_2d(m)
            except BadInputError as e:
                self.problems.add(m, e.reason)
                return False
            if msize != size:
                self.problems.add(m, f"mask size {msize[1]}x{msize[0]} differs from its image's {size[1]}x{size[0]} "
                                     f"({image.name})")
                return False
        return True

    def _scan_montgomery(self, base: Path) -> list[dict]:
        entries = []
        for key, img in _files(base / "CXR_png").items():
            name = Path(key).name
            masks = [base / "ManualMask" / side / f"{name}.png" for side in ("leftMask", "rightMask")]
            missing = [str(m.relative_to(base)) for m in masks if not m.is_file()]
            if missing:
                self.problems.add(img, f"no lung mask: {', '.join(missing)} missing")
                continue
            if not self._pair_ok(img, masks):
                continue
            m = _MC_NAME.match(name)
            entry = {"image": str(img), "label": [str(p) for p in masks], "patient_id": m.group("pid") if m else name,
                     "name": name}
            if m:
                entry["abnormal"] = int(m.group("abn"))
            entries.append(entry)
        return entries

    def _scan_images_masks(self, base: Path) -> list[dict]:
        images, masks = _files(base / "images"), _files(base / "masks")
        pattern = re.compile(self.patient_pattern) if self.patient_pattern else None
        entries = []
        for key, img in images.items():
            mask = masks.get(key)
            if mask is None:
                self.problems.add(img, f"no lung mask: masks/{key}.<png|jpg|...> missing")
                continue
            if not self._pair_ok(img, [mask]):
                continue
            pid = key
            if pattern is not None:
                m = pattern.search(Path(key).name)
                if m is None:
                    self.problems.add(img, f"name does not match patient_pattern {self.patient_pattern!r}")
                    continue
                pid = m.group(1) if m.groups() else m.group(0)
            entries.append({"image": str(img), "label": str(mask), "patient_id": pid, "name": key.replace("/", "__")})
        for key in sorted(set(masks) - set(images)):
            logger.warning("mask without an image, ignored: %s", masks[key])
        return entries


def index_lungseg(root: str | os.PathLike, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                  on_bad_input: str = "fail", patient_pattern: str | None = None) -> dict[str, list[dict]]:
    """Index a lung segmentation set into ``{"training", "validation", "test"}`` (:class:`LungSegmentationIndexer`).

    Raises:
        BadInputError: unknown layout, no usable pairs, or (with ``"fail"``) bad pairs, each named.
        ValueError: bad fractions or ``on_bad_input``.
    """
    return LungSegmentationIndexer(root, val_fraction, test_fraction, seed, on_bad_input, patient_pattern).index()


def lungseg_datalist(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None,
                     val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                     on_bad_input: str = "fail", patient_pattern: str | None = None) -> dict[str, list[dict]]:
    """What a bundle config calls: read ``datalist`` (JSON written by ``medplugin datalist lungseg``) when
    given, else index ``dataset_dir``. Relative image and mask paths in the JSON are taken relative to it."""
    return LungSegmentationIndexer(dataset_dir, val_fraction, test_fraction, seed, on_bad_input,
                                   patient_pattern).load(datalist)
