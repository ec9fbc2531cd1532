"""The ``medplugin`` command: build datalists, write demo data and run a bundle's demo job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medplugin import __version__
from medplugin.errors import BadInputError
from medplugin.utils import write_json

logger = logging.getLogger("medplugin")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _datalist_oct2017(args) -> dict:
    from medplugin.data.oct2017 import index_oct2017

    return index_oct2017(args.root, val_fraction=args.val_fraction, seed=args.seed, on_bad_input=args.on_bad_input)


DATALISTS: dict[str, Callable] = {"oct2017": _datalist_oct2017}


def _demo_retina_oct(out: Path, args) -> dict:
    from medplugin.data.synthetic.oct import make_oct2017_demo

    info = make_oct2017_demo(out, seed=args.seed)
    return {"dataset_dir": info["root"], "inference_dir": str(Path(info["root"]) / "test"), **info}


# bundle name -> writer of its demo data; returns dataset_dir (train/evaluate) and inference_dir
DEMOS: dict[str, Callable[[Path, argparse.Namespace], dict]] = {"retina_oct_classification": _demo_retina_oct}


def _bundle_dir(name: str) -> Path:
    path = REPO_ROOT / "bundles" / name
    if not path.is_dir():
        raise SystemExit(f"bundle folder {path} not found: run the demo from a clone of the medplugin repository.")
    return path


def _run_bundle(bundle: Path, config: str, overrides: dict[str, str]) -> None:
    configs = [str(bundle / "configs" / config), str(REPO_ROOT / "configs" / "demo.yaml")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle), "--config_file", json.dumps(configs)]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def cmd_datalist(args) -> int:
    try:
        datalist = DATALISTS[args.dataset](args)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    write_json(out, datalist)
    print(f"wrote {out}: " + ", ".join(f"{k}={len(v)}" for k, v in datalist.items()))
    return 0


def cmd_demo(args) -> int:
    out = Path(args.out).resolve()
    info = DEMOS[args.bundle](out, args)
    print(f"demo data for {args.bundle} written to {info['dataset_dir']}")
    if not args.run:
        return 0
    bundle = _bundle_dir(args.bundle)
    ckpt, runs = out / "models", out / "runs"
    common = {"ckpt_dir": str(ckpt)}
    _run_bundle(bundle, "train.yaml", {**common, "dataset_dir": info["dataset_dir"], "output_dir": str(runs / "train")})
    _run_bundle(bundle, "evaluate.yaml", {**common, "dataset_dir": info["dataset_dir"], "output_dir": str(runs / "evaluate")})
    _run_bundle(bundle, "inference.yaml", {**common, "dataset_dir": info["inference_dir"], "output_dir": str(runs / "inference")})
    metrics = json.loads((runs / "evaluate" / "metrics.json").read_text())
    print(f"\ndemo finished: test accuracy {metrics['accuracy']:.4f}, macro AUC {metrics['macro_auc']:.4f} "
          f"on {metrics['n']} images")
    print(f"outputs: {runs}  (TensorBoard: tensorboard --logdir {runs / 'train' / 'tensorboard'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medplugin", description=__doc__)
    p.add_argument("--version", action="version", version=f"medplugin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datalist", help="index a public dataset release into a MONAI datalist JSON")
    d.add_argument("dataset", choices=sorted(DATALISTS))
    d.add_argument("root", help="the dataset's root folder")
    d.add_argument("-o", "--output", required=True, help="datalist JSON to write")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--on-bad-input", choices=("fail", "skip"), default="fail")
    d.add_argument("--force", action="store_true", help="replace an existing output file")
    d.set_defaults(func=cmd_datalist)

    m = sub.add_parser("demo", help="write synthetic demo data for a bundle (and run its demo job with --run)")
    m.add_argument("bundle", choices=sorted(DEMOS))
    m.add_argument("--out", required=True, help="folder for the demo data and the runs")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--run", action="store_true", help="then train, evaluate and infer with the bundle")
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("MEDPLUGIN_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
