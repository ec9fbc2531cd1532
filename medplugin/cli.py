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

from medplugin import __version__, resources
from medplugin.errors import BadInputError
from medplugin.utils import write_json

logger = logging.getLogger("medplugin")


def _datalist_oct2017(args) -> dict:
    from medplugin.data.oct2017 import index_oct2017

    return index_oct2017(args.root, val_fraction=args.val_fraction, seed=args.seed, on_bad_input=args.on_bad_input)


def _datalist_eyepacs(args) -> dict:
    from medplugin.data.fundus import index_eyepacs

    return index_eyepacs(args.root, val_fraction=args.val_fraction, seed=args.seed, on_bad_input=args.on_bad_input)


def _datalist_aptos(args) -> dict:
    from medplugin.data.fundus import index_aptos

    return index_aptos(args.root, val_fraction=args.val_fraction, seed=args.seed, on_bad_input=args.on_bad_input)


DATALISTS: dict[str, Callable] = {"oct2017": _datalist_oct2017}
DATALISTS.update({"eyepacs": _datalist_eyepacs, "aptos": _datalist_aptos})  # label = DR grade; "grade" kept


def _demo_retina_oct(out: Path, args) -> dict:
    from medplugin.data.synthetic.oct import make_oct2017_demo

    info = make_oct2017_demo(out, seed=args.seed)
    return {"dataset_dir": info["root"], "inference_dir": str(Path(info["root"]) / "test"), **info}


# bundle name -> writer of its demo data; returns dataset_dir (train/evaluate) and inference_dir
DEMOS: dict[str, Callable[[Path, argparse.Namespace], dict]] = {"retina_oct_classification": _demo_retina_oct}


def _demo_retina_fundus(out: Path, args) -> dict:
    from medplugin.data.synthetic.fundus import make_eyepacs_demo

    root = out / "eyepacs"
    info = make_eyepacs_demo(root, n_patients=40, size=128, seed=args.seed, n_test_patients=20)  # 120 eyes
    return {"dataset_dir": str(root), "inference_dir": str(root / "test"), **info}


DEMOS["retina_fundus_classification"] = _demo_retina_fundus


def _datalist_kneeseg(args) -> dict:
    from medplugin.data.knee_segmentation import index_knee_segmentation

    return index_knee_segmentation(args.root, val_fraction=args.val_fraction, seed=args.seed,
                                   on_bad_input=args.on_bad_input)


def _demo_knee_segmentation(out: Path, args) -> dict:
    from medplugin.data.synthetic.knee import make_knee_nifti_demo

    root = out / "knee_nifti"
    info = make_knee_nifti_demo(root, n=24, shape=(16, 64, 64), seed=args.seed)
    return {"dataset_dir": str(root), "inference_dir": str(root / "exams"), **info}


DATALISTS["kneeseg"] = _datalist_kneeseg  # volume/mask pairs; "label" is the mask file


def _datalist_chestxray14(args) -> dict:
    from medplugin.data.chestxray14 import index_chestxray14

    return index_chestxray14(args.root, val_fraction=args.val_fraction, seed=args.seed, on_bad_input=args.on_bad_input)


def _demo_chest_xray(out: Path, args) -> dict:
    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo

    root = out / "chestxray14"
    # the four findings of the docs' figures on 120 patients (the docs' slow test runs this demo); 14 planted on 240
    # patients left 8 findings with sensitivity 0 and a pointing-game hit rate far below the docs' 0.8
    info = make_chestxray14_demo(root, n_patients=120, size=128, seed=args.seed, max_follow_ups=3,
                                 findings=CHEST_DEMO_FINDINGS)
    inference_dir = root / "images_001" / "images"
    return {"dataset_dir": str(root), "inference_dir": str(inference_dir), "planted": list(CHEST_DEMO_FINDINGS),
            **info}


CHEST_DEMO_FINDINGS = ("Cardiomegaly", "Effusion", "Mass", "Pneumothorax")
"""The findings the chest demo plants (the other 10 outputs have no positive image)."""


DATALISTS["chestxray14"] = _datalist_chestxray14  # label = 14 findings 0/1 in medplugin.data.chestxray14.FINDINGS order
DEMOS["chest_xray_classification"] = _demo_chest_xray
DEMOS["knee_mri_segmentation"] = _demo_knee_segmentation


def _datalist_mrnet(args) -> dict:
    from medplugin.data.knee import index_mrnet

    return index_mrnet(args.root, task="acl", plane="sagittal", val_fraction=args.val_fraction, seed=args.seed,
                       on_bad_input=args.on_bad_input)


def _datalist_knee(args) -> dict:
    from medplugin.data.knee import index_knee

    return index_knee(args.root, label_mode="four", val_fraction=args.val_fraction, seed=args.seed,
                      on_bad_input=args.on_bad_input)


def _demo_knee_classification(out: Path, args) -> dict:
    """MRNet layout (binary ACL tear, the demo's data set) and the clinical NIfTI layout (four conditions)."""
    from medplugin.data.synthetic.knee import make_knee_nifti_demo, make_mrnet_demo

    mrnet = make_mrnet_demo(out / "mrnet", n_train=48, n_valid=16, slices=(8, 12), size=64, seed=args.seed)
    nifti = make_knee_nifti_demo(out / "knee_nifti", n=24, shape=(10, 64, 64), seed=args.seed)
    return {"dataset_dir": mrnet["root"], "inference_dir": str(Path(mrnet["root"]) / "valid" / "sagittal"),
            "nifti_dir": nifti["root"], **mrnet}


DATALISTS["mrnet"] = _datalist_mrnet  # sagittal plane, ACL task; the bundle's --task/--plane pick others
DATALISTS["knee"] = _datalist_knee  # clinical layout, labels 0-3 (the bundle's --label_mode binary merges 1-3)
DEMOS["knee_mri_classification"] = _demo_knee_classification


def _datalist_lungseg(args) -> dict:
    from medplugin.data.lungseg import index_lungseg

    return index_lungseg(args.root, val_fraction=args.val_fraction, test_fraction=getattr(args, "test_fraction", 0.15),
                         seed=args.seed, on_bad_input=args.on_bad_input)


def _demo_lung_segmentation(out: Path, args) -> dict:
    from medplugin.data.synthetic.chest_xray import make_lung_seg_demo

    root = out / "MontgomerySet"
    info = make_lung_seg_demo(root, n=48, size=128, seed=args.seed)
    return {"dataset_dir": str(root), "inference_dir": str(root / "CXR_png"), **info}


DATALISTS["lungseg"] = _datalist_lungseg  # Montgomery layout or images/ + masks/; "label" is the mask file(s)
DEMOS["lung_xray_segmentation"] = _demo_lung_segmentation


def _demo_overlays(bundle: str, extra: Sequence[str]) -> list[Path]:
    """The demo overlay of ``bundle`` (its own ``demo_<bundle>.yaml`` when there is one, else ``demo.yaml``), then
    the ``--overlay`` files in their order."""
    root = resources.overlays_dir()
    own = root / f"demo_{bundle}.yaml"
    demo = own if own.is_file() else resources.overlay_file("demo", root)
    return [demo, *(resources.overlay_file(o, root) for o in extra)]


def _run_bundle(bundle: Path, config: str | Sequence[str], overrides: dict[str, str],
                overlays: Sequence[Path] = ()) -> None:
    """``python -m monai.bundle run`` of ``bundle``'s ``config`` file(s), merged with ``overlays`` and ``overrides``.

    Every output goes where ``overrides`` say (the demo passes ``ckpt_dir`` and ``output_dir``): the bundle folder
    may be inside an installed package and is only read.
    """
    files = [config] if isinstance(config, str) else list(config)
    configs = [*(str(bundle / "configs" / c) for c in files), *(str(o) for o in overlays)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(bundle),
           "--config_file", json.dumps(configs)]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def cmd_datalist(args) -> int:
    try:
        datalist = DATALISTS[args.dataset](args)  # paths absolute: the JSON works from any folder, wherever it is
    except BadInputError as e:
        print(f"error: {e}" + (f"\n{e.hint}" if e.hint else ""), file=sys.stderr)
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
    if args.run or args.overlay:  # the bundle and its overlays are found before anything is written
        bundle = resources.bundle_dir(args.bundle, args.bundles_dir)
        overlays = _demo_overlays(args.bundle, args.overlay)
    info = DEMOS[args.bundle](out, args)
    print(f"demo data for {args.bundle} written to {info['dataset_dir']}")
    if not args.run:
        return 0
    ckpt, runs = out / "models", out / "runs"
    common = {"ckpt_dir": str(ckpt)}
    _run_bundle(bundle, "train.yaml",
                {**common, "dataset_dir": info["dataset_dir"], "output_dir": str(runs / "train")}, overlays)
    _run_bundle(bundle, ("train.yaml", "evaluate.yaml"),  # evaluate.yaml is an overlay on train.yaml
                {**common, "dataset_dir": info["dataset_dir"], "output_dir": str(runs / "evaluate")}, overlays)
    _run_bundle(bundle, "inference.yaml",
                {**common, "dataset_dir": info["inference_dir"], "output_dir": str(runs / "inference")}, overlays)
    metrics = json.loads((runs / "evaluate" / "metrics.json").read_text())
    if "mean_dice" in metrics:  # segmentation bundles
        print(f"\ndemo finished: test mean Dice {metrics['mean_dice']:.4f} on {metrics['n']} volumes")
    elif "mean_auroc" in metrics:  # multi-label classification (chest X-ray)
        loc = metrics.get("localization") or {}
        print(f"\ndemo finished: test mean AUROC {metrics['mean_auroc']:.4f} on {metrics['n']} images"
              + (f", CAM pointing-game hit rate {loc['hit_rate']:.3f} on {loc['n_boxes']} boxes" if loc else ""))
        planted = info.get("planted", [])
        print(f"findings planted: {', '.join(planted)}; the other {14 - len(planted)} outputs have no positive "
              "image (their AUROC is undefined and left out of the mean). The docs' slow test runs this demo and "
              "requires mean AUROC >= 0.9 and hit rate >= 0.8 (bundles/chest_xray_classification/docs)")
    else:
        print(f"\ndemo finished: test accuracy {metrics['accuracy']:.4f}, macro AUC {metrics['macro_auc']:.4f} "
              f"on {metrics['n']} images")
    print(f"outputs: {runs}")
    print(next_steps(bundle, overlays, out, info))
    return 0


def _config_list(files: Sequence[str | Path]) -> str:
    """``--config_file``'s value as the docs write it: ``['a.yaml','b.yaml']`` (JSON when a path holds a quote)."""
    names = [str(f) for f in files]
    return json.dumps(names) if any("'" in n for n in names) else "[" + ",".join(f"'{n}'" for n in names) + "]"


def next_steps(bundle: Path, overlays: Sequence[Path], out: Path, info: dict) -> str:
    """The demo's last lines: copy-paste runnable commands that evaluate, infer and export with the demo's model
    (``out/models``) and settings (its overlays), and review the training in TensorBoard; ``#`` lines say what
    each does, so the block can be pasted into a shell as it is."""
    from medplugin.run_guard import _quote

    bin_dir = Path(sys.executable).parent
    py = _quote(sys.executable)
    tool = bin_dir / "medplugin"
    medplugin_cmd = _quote(str(tool)) if tool.is_file() else "medplugin"
    conf = bundle / "configs"
    ckpt, runs = out / "models", out / "runs"

    def run(configs: Sequence[str], **overrides: Path | str) -> str:
        files = [*(conf / c for c in configs), *overlays]
        args = ["--bundle_root", str(bundle), "--config_file", _config_list(files), "--ckpt_dir", str(ckpt)]
        for k, v in overrides.items():
            args += [f"--{k}", str(v)]
        return " ".join([py, "-m monai.bundle run", *(_quote(a) for a in args)])

    inference = [str(conf / "inference.yaml"), *(str(o) for o in overlays)]
    export = " ".join([py, "-m monai.bundle ckpt_export network_def", "--filepath", _quote(str(ckpt / "model.ts")),
                       "--ckpt_file", _quote(str(ckpt / "model.pt")), "--meta_file",
                       _quote(str(conf / "metadata.json")), "--config_file", _quote(_config_list(inference)),
                       "--bundle_root", _quote(str(bundle)), "--ckpt_dir", _quote(str(ckpt))])
    lines = [
        "",
        f"next steps with the demo's model ({ckpt}) and settings ({', '.join(o.name for o in overlays)}); "
        "paste any of these lines into a shell:",
        "# evaluate again (train.yaml + evaluate.yaml and the demo's overlays; each run needs a new --output_dir):",
        run(["train.yaml", "evaluate.yaml"], dataset_dir=info["dataset_dir"], output_dir=runs / "evaluate_2"),
        "# infer on a folder of images (here the demo's test images; give --dataset_dir your own folder):",
        run(["inference.yaml"], dataset_dir=info["inference_dir"], output_dir=runs / "inference_2"),
        "# export the network to TorchScript (onnx_export takes the same arguments plus --input_shape):",
        export,
        "# review the training run in TensorBoard (Ctrl-C stops it):",
        f"{medplugin_cmd} tensorboard {_quote(str(runs / 'train'))}",
    ]
    return "\n".join(lines)


def cmd_tensorboard(args) -> int:
    import signal

    from medplugin.tools.review import free_port, serve

    if not Path(args.run_dir).is_dir():
        print(f"error: {args.run_dir}: no such run folder", file=sys.stderr)
        return 2
    port = args.port or free_port(args.host)
    # a `kill` of this command stops the server it started, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"TensorBoard for {args.run_dir}: http://{args.host}:{port}/  (Ctrl-C stops it)", flush=True)
    return serve(args.run_dir, args.host, port)


def cmd_monailabel_app(args) -> int:
    from medplugin.tools import monailabel

    names = [n for n in args.bundles.split(",") if n] or None
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --set takes key=value, got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = _config_value(value)
    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            print(f"error: --weights takes BUNDLE=PATH, got {item!r}", file=sys.stderr)
            return 2
        weights[name] = Path(path)
    env = Path(args.env) if args.env else monailabel.default_env()
    try:
        app = monailabel.assemble_app(args.out, names, overrides=overrides, weights=weights, env=env,
                                      bundles_root=args.bundles_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"MONAI Label app with {', '.join(app['models'])} written to {app['app_dir']}")
    for n in app["without_weights"]:
        print(f"note: {n} has no trained models/model.pt: MONAI Label can train it, infer after a restart")
    print("start the server (offline; the MONAI Label environment first on PATH):")
    print(monailabel.server_line(app["app_dir"], args.studies, app["models"], port=args.port, env=env))
    return 0


def _config_value(text: str):
    """A ``--set`` value: JSON when it parses (numbers, true/false, lists), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_monailabel_env(args) -> int:
    from medplugin.tools import monailabel

    py = monailabel.ensure_env(args.env)
    print(f"MONAI Label environment ready: {py.parent}")
    return 0


def cmd_bundles(args) -> int:
    root = resources.bundles_dir(args.bundles_dir)
    for name in resources.list_bundles(root):
        print(f"{name}\t{root / name}")
    print(f"overlays\t{resources.overlays_dir()}")
    return 0


BUNDLES_DIR_HELP = (f"folder of bundles (default: ${resources.BUNDLES_ENV}, else those installed with medplugin, "
                    "else an editable install's bundles/)")
ENV_HELP = "environment folder (default: $MEDPLUGIN_MONAILABEL_ENV, else .venv-monailabel in the current folder)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medplugin", description=__doc__)
    p.add_argument("--version", action="version", version=f"medplugin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("datalist", help="index a public dataset release into a MONAI datalist JSON")
    d.add_argument("dataset", choices=sorted(DATALISTS))
    d.add_argument("root", help="the dataset's root folder")
    d.add_argument("-o", "--output", required=True, help="datalist JSON to write")
    # the bundles' spelling (--val_fraction, --split_seed, --on_bad_input); the dashed forms still work
    d.add_argument("--val_fraction", "--val-fraction", dest="val_fraction", type=float, default=0.1,
                   help="share of the patients held out for validation (default 0.1)")
    d.add_argument("--split_seed", "--seed", dest="seed", type=int, default=0, help="seed of the patient split")
    d.add_argument("--on_bad_input", "--on-bad-input", dest="on_bad_input", choices=("fail", "skip"), default="fail",
                   help="fail: stop and list bad files; skip: index what is usable, naming the rest in a warning")
    d.add_argument("--force", action="store_true", help="replace an existing output file")
    d.set_defaults(func=cmd_datalist)

    m = sub.add_parser("demo", help="write synthetic demo data for a bundle (and run its demo job with --run)")
    m.add_argument("bundle", choices=sorted(DEMOS))
    m.add_argument("--out", required=True, help="folder for the demo data and the runs")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--run", action="store_true", help="then train, evaluate and infer with the bundle")
    m.add_argument("--overlay", action="append", default=[], metavar="NAME|FILE",
                   help="another overlay merged after the demo's own, e.g. --overlay smoke (a seconds-long run) or "
                        "--overlay ./mine.yaml; repeatable")
    m.add_argument("--bundles-dir", default=None, metavar="DIR", help=BUNDLES_DIR_HELP)
    m.set_defaults(func=cmd_demo)

    b = sub.add_parser("bundles", help="list the bundles (name and folder) and the overlays folder")
    b.add_argument("--bundles-dir", default=None, metavar="DIR", help=BUNDLES_DIR_HELP)
    b.set_defaults(func=cmd_bundles)

    t = sub.add_parser("tensorboard", help="review a training run (or a folder of runs) in TensorBoard")
    t.add_argument("run_dir", help="a run folder (e.g. bundles/<bundle>/runs/train_<time>) or a folder of runs")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=0, help="default: a free port")
    t.set_defaults(func=cmd_tensorboard)

    ml = sub.add_parser("monailabel-app", help="assemble a MONAI Label monaibundle app folder holding the bundles")
    ml.add_argument("--out", required=True, help="app folder to write (must not exist)")
    ml.add_argument("--bundles", default="",
                    help="comma-separated bundle names (default: every bundle of --bundles-dir)")
    ml.add_argument("--studies", default="STUDIES", help="studies folder to print in the start_server line")
    ml.add_argument("--port", type=int, default=8000)
    ml.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config id to set in every bundle's MONAI Label configs, e.g. --set num_workers=0")
    ml.add_argument("--bundles-dir", default=None, metavar="DIR", help=BUNDLES_DIR_HELP)
    ml.add_argument("--env", default=None, help=ENV_HELP)
    ml.add_argument("--weights", action="append", default=[], metavar="BUNDLE=PATH",
                    help="use this model.pt for a bundle instead of bundles/<bundle>/models/model.pt")
    ml.set_defaults(func=cmd_monailabel_app)

    me = sub.add_parser("monailabel-env", help="create (or reuse) the MONAI Label virtual environment")
    me.add_argument("--env", default=None, help=ENV_HELP)
    me.set_defaults(func=cmd_monailabel_env)

    from medplugin.networks.weights_cli import add_weights_parser  # weights list | fetch | export

    add_weights_parser(sub)
    from medplugin.compare_cli import add_compare_parser  # compare RUN_A RUN_B: paired bootstrap, DeLong

    add_compare_parser(sub)
    from medplugin.pacs_cli import add_pacs_parser  # pacs BUNDLE --url --study: WADO-RS, inference, STOW-RS

    add_pacs_parser(sub)
    return p


def _option_strings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The command as typed (``medplugin datalist``) and every option of it and its parents."""
    prog, options = parser.prog, []
    while parser is not None:
        options += [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        parser = sub.choices.get(chosen) if chosen is not None else None
        prog = parser.prog if parser is not None else prog
    return prog, options


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, but an unknown option stops with the closest known one:
    ``unknown option '--val_fractoin'; did you mean '--val_fraction'?``."""
    import difflib

    args, extras = parser.parse_known_args(argv)
    unknown = [e.split("=", 1)[0] for e in extras if e.startswith("-")]
    if extras:
        prog, options = _option_strings(parser, args)
        if not unknown:
            parser.exit(2, f"{prog}: error: unexpected argument(s): {' '.join(extras)}\n")
        parts = []
        for u in unknown:
            close = difflib.get_close_matches(u, options, n=1, cutoff=0.6)
            parts.append(f"unknown option '{u}'" + (f"; did you mean '{close[0]}'?" if close else ""))
        parser.exit(2, f"{prog}: error: {'; '.join(parts)} (see {prog} --help)\n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("MEDPLUGIN_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(build_parser(), argv)
    try:
        return int(args.func(args) or 0)
    except (FileExistsError, FileNotFoundError) as e:  # a bundle, overlay or folder named wrong: the message says which
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:  # a bundle run of the demo: its own last line said why
        print(f"error: a bundle run stopped (exit status {e.returncode}); the line above says why", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
