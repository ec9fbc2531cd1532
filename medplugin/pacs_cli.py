"""``medplugin pacs BUNDLE --url URL --study UID --ckpt_dir DIR --out DIR``: a bundle's inference on studies of a PACS.

For each study: QIDO-RS lists its series and WADO-RS retrieves, as stored, those of a modality the bundle takes
(``OUT/studies/<Study UID>/<Series UID>/<SOP UID>.dcm``, one folder per series, as the bundles read a DICOM series):
the ``Modality`` of the bundle's input scope (``inference.yaml``: chest CR/DX, knee MR, OCT OPT, fundus OP/XC), for a
bundle without one every modality but those of derived objects (SR, SEG, OT, KO, PR, ...: the results of an earlier
run filed in the same study are not inputs); ``--modality`` chooses. Then the bundle's ``inference.yaml`` runs on
them through the MONAI bundle runner with ``dicom_output: true`` (``OUT/inference``: predictions.csv, masks or CAMs,
and the DICOM results in ``dicom/``, listed in ``dicom_outputs.csv``); then STOW-RS stores every DICOM result (SR,
Secondary Captures, SEG) back, where it files with its source study. ``OUT/pacs_results.json`` lists what was stored,
with its study, series and SOP Instance UID. An input that got no result (its error row in ``dicom_outputs.csv``) is
named and the others are still stored. ``--no-store`` stops before STOW-RS.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from medplugin import resources
from medplugin.errors import BadInputError
from medplugin.utils import write_json

__all__ = ["add_pacs_parser", "cmd_pacs"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "pacs_results.json"
# modalities of derived objects (reports, segmentations, secondary captures, key objects, presentation states, ...)
DERIVED_MODALITIES = frozenset({"SR", "SEG", "OT", "KO", "PR", "DOC", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE"})


def add_pacs_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``pacs`` sub-command to ``medplugin``'s sub-parsers (``cli.build_parser``)."""
    from medplugin.cli import BUNDLES_DIR_HELP

    p = subparsers.add_parser(
        "pacs", help="run a bundle's inference on studies of a PACS (DICOMweb) and store the DICOM results back",
        description="Retrieve studies with WADO-RS, run the bundle's inference.yaml on them (DICOM results on), and "
                    "store the SR, Secondary Captures and SEG it writes back with STOW-RS.")
    p.add_argument("bundle", help="bundle name (see `medplugin bundles`)")
    p.add_argument("--url", required=True, help="the DICOMweb service root, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--study", action="append", required=True, metavar="UID",
                   help="Study Instance UID to process; repeatable")
    p.add_argument("--ckpt_dir", required=True, help="the trained model's folder (model.pt and model.json)")
    p.add_argument("--out", required=True, help="folder for the retrieved studies and the inference run (new)")
    p.add_argument("--overlay", action="append", default=[], metavar="NAME|FILE",
                   help="an overlay merged after inference.yaml (the one the model was trained with, e.g. smoke); "
                        "repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override of the inference run, e.g. --set image_size=128; repeatable")
    p.add_argument("--modality", action="append", default=[], metavar="MODALITY",
                   help="retrieve the study's series of this modality; repeatable (default: the bundle's input "
                        "scope, else every modality but derived objects such as SR, SEG, OT)")
    p.add_argument("--header", action="append", default=[], metavar="NAME: VALUE",
                   help="an HTTP header for the DICOMweb service, e.g. 'Authorization: Bearer ...'; repeatable")
    p.add_argument("--no-store", dest="store", action="store_false", help="write the results, do not store them")
    p.add_argument("--bundles-dir", default=None, metavar="DIR", help=BUNDLES_DIR_HELP)
    p.set_defaults(func=cmd_pacs)
    return p


def _pairs(items: list[str], sep: str, what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, found, value = item.partition(sep)
        if not found or not key.strip():
            raise ValueError(f"{what} must be KEY{sep}VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def input_modalities(bundle: Path) -> list[str] | None:
    """The DICOM modalities the bundle's ``inference.yaml`` scope names (``scope.dicom.Modality``), or ``None``."""
    import yaml

    config = yaml.safe_load((bundle / "configs" / "inference.yaml").read_text()) or {}
    found = ((config.get("scope") or {}).get("dicom") or {}).get("Modality")
    return [str(m).upper() for m in ([found] if isinstance(found, str) else found)] if found else None


def _retrieve(pacs, uid: str, folder: Path, modalities: list[str] | None) -> list[Path]:
    """The study's series of the wanted modalities, one folder each (``modalities`` ``None``: all but derived)."""
    series = pacs.search_series(uid)
    wanted = [s for s in series if (s["Modality"] or "").upper() in modalities] if modalities else \
        [s for s in series if (s["Modality"] or "").upper() not in DERIVED_MODALITIES]
    if not wanted:
        have = ", ".join(sorted({s["Modality"] or "?" for s in series})) or "no series"
        want = ", ".join(modalities) if modalities else "any but derived objects"
        raise BadInputError(f"{pacs.url}/studies/{uid}",
                            f"no series of modality {want}; the study has {have} (--modality chooses)")
    files = []
    for s in wanted:
        files += pacs.retrieve_series(uid, s["SeriesInstanceUID"], folder / s["SeriesInstanceUID"])
    skipped = len(series) - len(wanted)
    print(f"retrieved study {uid}: {len(files)} instance(s) in {len(wanted)} series"
          + (f" ({skipped} series of other modalities left out)" if skipped else ""))
    return files


def _written(inference_dir: Path) -> tuple[list[dict], list[dict]]:
    """The DICOM results the run listed in ``dicom_outputs.csv``: (written, errors), each a list of its rows."""
    from medplugin.handlers.dicom import CSV_NAME

    table = inference_dir / CSV_NAME
    if not table.is_file():
        return [], []
    rows = list(csv.DictReader(table.open(newline="")))
    return [r for r in rows if not r["error"] and r["dicom_file"]], [r for r in rows if r["error"]]


def cmd_pacs(args) -> int:
    """Retrieve, infer, store; print what was stored. Bad arguments or a missing study: an error line, exit 2."""
    from medplugin.cli import _run_bundle

    try:
        from medplugin.io.dicomweb import DicomWeb

        headers = _pairs(args.header, ":", "--header")
        overrides = _pairs(args.set, "=", "--set")
        pacs = DicomWeb(args.url, headers=headers or None)
    except (ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bundle = resources.bundle_dir(args.bundle, args.bundles_dir)
    overlays = [resources.overlay_file(o, resources.overlays_dir()) for o in args.overlay]
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; give a new folder (nothing in it is replaced)", file=sys.stderr)
        return 2
    studies, inference = out / "studies", out / "inference"
    import pydicom
    import requests

    modalities = [m.upper() for m in args.modality] or input_modalities(bundle)
    try:
        for uid in args.study:
            _retrieve(pacs, uid, studies / uid, modalities)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except requests.RequestException as e:
        print(f"error: {args.url}: {e}", file=sys.stderr)
        return 2

    _run_bundle(bundle, "inference.yaml", {**overrides, "ckpt_dir": str(Path(args.ckpt_dir).resolve()),
                                           "dataset_dir": str(studies), "output_dir": str(inference),
                                           "dicom_output": "true"}, overlays)
    written, errors = _written(inference)
    for row in errors:
        print(f"no DICOM {row['object']} for {row['file']}: {row['error']}", file=sys.stderr)
    objects: dict[str, dict] = {}  # one entry per object: a study's SR is listed once for each of its images
    for row in written:
        if row["dicom_file"] not in objects:
            ds = pydicom.dcmread(row["dicom_file"], stop_before_pixels=True)
            objects[row["dicom_file"]] = {
                "object": row["object"], "sources": [], "file": row["dicom_file"],
                "study_instance_uid": str(ds.StudyInstanceUID), "series_instance_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID), "stored": False}
        objects[row["dicom_file"]]["sources"].append(row["file"])
    results = list(objects.values())
    if args.store and results:
        try:
            stored = set(pacs.store([r["file"] for r in results]))
        except (RuntimeError, requests.RequestException) as e:
            write_json(out / RESULTS_FILE, {"url": args.url, "results": results, "errors": errors})
            print(f"error: {e}", file=sys.stderr)
            return 1
        for r in results:
            r["stored"] = r["sop_instance_uid"] in stored
    write_json(out / RESULTS_FILE, {"url": args.url, "results": results, "errors": errors})
    kinds = {k: sum(r["object"] == k for r in results) for k in ("SR", "SC", "SEG")}
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items() if n) or "no DICOM result"
    verb = "stored in" if args.store else "written for (not stored:"
    print(f"{summary} {verb} {len({r['study_instance_uid'] for r in results})} study(ies)"
          + ("" if args.store else " --no-store)") + f"; {len(errors)} input(s) without a result; "
          f"listed in {out / RESULTS_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m medplugin.pacs_cli BUNDLE [...]`` (the same as ``medplugin pacs``)."""
    from medplugin import cli

    return cli.main(["pacs", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
