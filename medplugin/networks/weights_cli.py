"""``medplugin weights``: list, fetch and export the starting weights of :mod:`medplugin.networks.weights`.

- ``medplugin weights list``: every architecture the bundles start from, its file, its size, cached or not;
- ``medplugin weights fetch ARCH...``: download files into their cache folders on a connected machine (then
  copy them to the same folders of an offline one);
- ``medplugin weights export torchxrayvision:<name> --bundle chest_xray_classification --out DIR``: a ready
  ``model.pt`` + ``model.json`` from a labelled starting point, for evaluation, inference, ONNX export and
  MONAI Label without training.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path

import torch

from medplugin.errors import BadInputError
from medplugin.networks.weights import (
    TORCHVISION_WEIGHTS,
    XRV_PREFIX,
    XRV_WEIGHTS,
    WeightsUnavailableError,
    fetch,
    known_weights,
    map_labels,
    weights_file,
    xrv_operating_points,
)

__all__ = ["export_labelled_model", "add_weights_parser"]

logger = logging.getLogger(__name__)


def _find_bundle(bundle: str, bundles_root: str | os.PathLike | None) -> Path:
    path = Path(bundle)
    if (path / "configs" / "inference.yaml").is_file():
        return path
    root = Path(bundles_root) if bundles_root else Path("bundles")
    if (root / bundle / "configs" / "inference.yaml").is_file():
        return root / bundle
    raise BadInputError(root / bundle, "no bundle here (configs/inference.yaml not found): give the bundle folder, "
                                       "or its name with --bundles-root (default: ./bundles)")


def export_labelled_model(source: str, bundle: str | os.PathLike, out: str | os.PathLike,
                          bundles_root: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Write ``out/model.pt`` and ``out/model.json`` for ``bundle`` from a labelled starting point, no training.

    The bundle's own ``inference.yaml`` builds the network (``network_def`` with ``pretrained=source``, so the
    outputs are mapped onto the bundle's ``class_names`` by the code training uses) and gives ``model_meta``
    with the starting point's input convention (architecture, size, one channel, normalisation), so the
    bundle's evaluation, inference, ``ckpt_export``/``onnx_export`` and MONAI Label load it as a trained model.
    The network's outputs are kept as they are (its logits, unchanged); torchxrayvision's operating points
    (``op_threshs``) are stored as ``model.json``'s ``operating_points``
    (:func:`~medplugin.networks.weights.xrv_operating_points`), where the bundles read the threshold of each
    finding's call. No temperature is stored: the probabilities are torchxrayvision's own.

    Args:
        source: ``torchxrayvision:<name>`` (a key of :data:`~medplugin.networks.weights.XRV_WEIGHTS`).
        bundle: the bundle folder, or its name under ``bundles_root``.
        out: the folder to write (created).
        bundles_root: where bundles are looked up by name (default ``./bundles``).
        force: replace an existing ``out/model.pt``.

    Returns:
        the ``model.json`` written.

    Raises:
        ValueError: a source without labelled outputs, or one lacking some of the bundle's classes.
        FileExistsError: ``out/model.pt`` exists and not ``force``.
        WeightsUnavailableError: the file is neither cached nor downloadable.
    """
    from monai.bundle import ConfigParser

    if not source.startswith(XRV_PREFIX) or source[len(XRV_PREFIX):] not in XRV_WEIGHTS:
        raise ValueError(f"export needs a starting point with labelled outputs, one of "
                         f"{[XRV_PREFIX + n for n in XRV_WEIGHTS]}; got {source!r} (ImageNet weights have no outputs "
                         "for the bundle's classes: train the bundle instead).")
    entry = XRV_WEIGHTS[source[len(XRV_PREFIX):]]
    folder = _find_bundle(str(bundle), bundles_root)
    out = Path(out)
    if (out / "model.pt").exists() and not force:
        raise FileExistsError(f"{out / 'model.pt'} exists; pass --force to replace it")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(folder), "arch": entry.arch, "image_size": entry.image_size, "in_channels": 1,
                   "pretrained": source, "ckpt_dir": str(out)})
    class_names = list(parser.get_parsed_content("class_names"))
    _, missing = map_labels(entry.labels, class_names)
    if missing:
        raise ValueError(f"{source} has no output for {missing} of {folder.name}'s classes: it cannot be used "
                         "without training (start a training from it with --pretrained instead).")
    network = parser.get_parsed_content("network_def")
    meta = dict(parser.get_parsed_content("model_meta"))
    meta["pretrained"] = dict(network.pretrained_source)
    meta["operating_points"] = xrv_operating_points(entry, class_names)
    meta["exported"] = datetime.datetime.now().isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, out / "model.pt")
    from medplugin.utils import write_json

    write_json(out / "model.json", meta)
    logger.info("wrote %s and model.json for %s from %s", out / "model.pt", folder.name, source)
    return meta


def _size(w) -> str:
    # torchvision's enums give the size (MiB); torchxrayvision's registry does not: the cached file's then
    size = w.size_mb if w.size_mb else (w.path.stat().st_size / 2**20 if w.cached else None)
    return f"{size:.1f} MB" if size else "-"


def _cmd_list(args) -> int:
    rows = [(w.fetch_name, w.arch, w.path.name, _size(w), "cached" if w.cached else "not cached",
             str(w.path.parent)) for w in known_weights()]
    head = ("weights", "arch", "file", "size", "state", "folder")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print("Architectures without published files (pretrained: a local file, or none): seresnet50, efficientnet_b0, "
          "resnet3d18. Offline: run `medplugin weights fetch NAME...` on a connected machine and copy the files "
          "into the same folders here.")
    return 0


def _cmd_fetch(args) -> int:
    names = list(TORCHVISION_WEIGHTS) + [XRV_PREFIX + n for n in XRV_WEIGHTS] if args.all else args.names
    if not names:
        print("error: name architectures (e.g. resnet50 densenet121) or torchxrayvision:<name>, or --all",
              file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        try:
            wf = weights_file(name)
            was = wf.cached
            path = fetch(name, progress=not args.quiet)
        except (ValueError, ImportError) as e:  # WeightsUnavailableError is a ValueError (BadInputError)
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {path} ({'already cached' if was else 'downloaded'})")
    return 2 if failed else 0


def _cmd_export(args) -> int:
    try:
        meta = export_labelled_model(args.source, args.bundle, args.out, args.bundles_root, args.force)
    except (ValueError, FileExistsError, WeightsUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'model.pt'} and model.json ({len(meta['class_names'])} classes, "
          f"{meta['arch']}, {meta['image_size']} px) from {args.source}; use it with --ckpt_dir {args.out}")
    return 0


def add_weights_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``weights list | fetch | export`` to the ``medplugin`` command's subparsers."""
    w = subparsers.add_parser("weights", help="list, fetch (for offline machines) or export starting weights")
    sub = w.add_subparsers(dest="weights_command", required=True)
    ls = sub.add_parser("list", help="every architecture the bundles use: its file, size, cached or not")
    ls.set_defaults(func=_cmd_list)
    f = sub.add_parser("fetch", help="download weights into their cache folders (torch's, torchxrayvision's)")
    f.add_argument("names", nargs="*", metavar="ARCH",
                   help=f"{', '.join(TORCHVISION_WEIGHTS)} or {', '.join(XRV_PREFIX + n for n in XRV_WEIGHTS)}")
    f.add_argument("--all", action="store_true", help="every file of `medplugin weights list`")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fetch)
    e = sub.add_parser("export", help="a ready model.pt + model.json from torchxrayvision weights, no training")
    e.add_argument("source", help=f"one of {', '.join(XRV_PREFIX + n for n in XRV_WEIGHTS)}")
    e.add_argument("--bundle", required=True, help="bundle folder, or its name under --bundles-root")
    e.add_argument("--bundles-root", default=None, help="folder holding the bundles (default: ./bundles)")
    e.add_argument("--out", required=True, help="folder for model.pt and model.json (use it as --ckpt_dir)")
    e.add_argument("--force", action="store_true", help="replace an existing model.pt there")
    e.set_defaults(func=_cmd_export)
    return w
