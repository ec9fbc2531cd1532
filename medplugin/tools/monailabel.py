"""MONAI Label around the bundles: its own environment, a ready ``monaibundle`` app folder, the server line.

MONAI Label 0.8.5 cannot share the main environment: it needs a working torchvision and ``pydicom<3`` (its
``pydicom-seg`` dependency imports a module pydicom 3 removed). :func:`ensure_env` creates (or reuses) a
separate virtual environment holding MONAI Label and the MONAI release of the main environment; the ``medplugin``
package imported by the caller is linked into it, so the bundles' ``medplugin.*`` components resolve inside the
server to the same code (a wheel install, an editable checkout or a checkout on ``PYTHONPATH`` alike). Where the
main environment has the pinned torch and torchvision, the new environment uses those (and the CUDA wheels under
them) through links instead of a second copy: about 5.5 GB less on disk.

The environment's folder is ``--env`` / the ``env`` argument, else ``$MEDPLUGIN_MONAILABEL_ENV``, else
``.venv-monailabel`` in the current folder (:func:`default_env`). The bundles come from
:func:`medplugin.resources.bundles_dir`.

:func:`assemble_app` writes an app folder in the layout of MONAI Label's stock ``monaibundle`` sample app (``main.py``,
``lib/``, ``model/<bundle>``: our bundles), its ``main.py`` the stock one (kept as ``stock_main.py``) plus medplugin's
mixins (:data:`APP_MAIN`); :func:`server_command` gives the offline ``monailabel start_server`` line for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medplugin import resources

logger = logging.getLogger(__name__)

ENV_VARIABLE = "MEDPLUGIN_MONAILABEL_ENV"

MONAILABEL_VERSION = "0.8.5"
# torch/torchvision as in the main environment (a torchvision that imports beside torch is required by
# MONAI Label); pydicom<3 for pydicom-seg.
TORCH, TORCHVISION = "2.14.1", "0.29.1"
BASE_REQUIREMENTS = (f"torch=={TORCH}", f"torchvision=={TORCHVISION}", f"monailabel=={MONAILABEL_VERSION}", "pydicom<3")
# what the bundles import besides medplugin (installed with --no-deps); monai pinned to the main env's release.
BUNDLE_REQUIREMENTS = (
    "pyyaml>=6", "nibabel", "pytorch-ignite", "tensorboard", "scipy", "pillow", "matplotlib", "tqdm", "fire",
    "scikit-learn",
    # compressed DICOM (JPEG lossless/extended, JPEG 2000) as in the main environment; NumPy 1 kept for
    # MONAI Label's own numpymaxflow and pydicom-seg (newer pylibjpeg-libjpeg releases would pull NumPy 2)
    "numpy<2", "pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1", "pylibjpeg-openjpeg>=2.3",
    # dcmqi's itkimage2segimage: MONAI Label's DICOMweb datastore (--studies http://.../dicom-web) needs it and
    # otherwise downloads it from GitHub at every start, which fails offline; highdicom 0.22 (the last on pydicom 2)
    "dcmqi", "highdicom>=0.22,<0.23",  # for the DICOM SEG answers of medplugin.tools.monailabel_dicom
)


def _main_monai_version() -> str:
    try:
        import monai

        return monai.__version__.split("+")[0]
    except ImportError:  # pragma: no cover - the main env always has MONAI
        return "1.6.1"


def default_env() -> Path:
    """The MONAI Label environment's folder when none is given: ``$MEDPLUGIN_MONAILABEL_ENV``, else
    ``.venv-monailabel`` in the current folder (the checkout's root for ``make monailabel-env``)."""
    return Path(os.environ.get(ENV_VARIABLE) or ".venv-monailabel").resolve()


def _env(env: Path | str | None) -> Path:
    return Path(env) if env else default_env()


def requirements() -> list[str]:
    """The full requirement list of the MONAI Label environment (MONAI pinned to the main env's release)."""
    return [*BASE_REQUIREMENTS, f"monai=={_main_monai_version()}", *BUNDLE_REQUIREMENTS]


def env_python(env: Path | str | None = None) -> Path:
    """The Python interpreter of the MONAI Label environment ``env`` (default: :func:`default_env`)."""
    return _env(env) / "bin" / "python"


def _stamp(reqs: Sequence[str]) -> str:
    # "medplugin linked": environments of earlier releases had medplugin installed editable from the checkout
    return hashlib.sha256(json.dumps([*reqs, "medplugin linked"]).encode()).hexdigest()[:16]


def env_ready(env: Path | str | None = None) -> bool:
    """Whether ``env`` holds a finished install of the current requirement list (and, where it shares the main
    environment's torch, whether every link to it still resolves)."""
    env = _env(env)
    stamp = env / ".medplugin-installed"
    if not (stamp.is_file() and stamp.read_text().strip() == _stamp(requirements())):
        return False
    layer = env / SHARED_LAYER
    return not layer.is_dir() or all(p.exists() for p in layer.iterdir())


# ---- torch shared with the main environment ------------------------------------------------------------------

SHARED_LAYER = "shared-torch"  # folder of links, inside the MONAI Label environment
SHARED_PTH = "medplugin-shared-torch.pth"  # puts it on sys.path, after the environment's own site-packages
MEDPLUGIN_LAYER = "medplugin-link"  # folder holding one link: medplugin -> the package the caller imports
MEDPLUGIN_PTH = "medplugin-link.pth"


def shareable_distributions() -> list | None:
    """torch, torchvision and the CUDA and triton wheels they pull in, as installed beside this interpreter, when
    torch and torchvision are the releases the MONAI Label environment pins; None when they are not."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        if metadata.version("torch") != TORCH or metadata.version("torchvision") != TORCHVISION:
            return None
    except metadata.PackageNotFoundError:
        return None
    seen, todo, out = set(), ["torch", "torchvision"], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-only requirement that is not installed
        out.append(dist)
        for req in dist.requires or []:
            dep = canonicalize_name(Requirement(req).name)
            if dep.startswith(("nvidia-", "cuda-")) or dep == "triton":
                todo.append(dep)
    return out


def _python_site(py: Path) -> tuple[tuple[int, int], Path]:
    """``py``'s (major, minor) version and its site-packages folder (asked once, in one subprocess)."""
    code = "import sys, sysconfig; print(*sys.version_info[:2]); print(sysconfig.get_paths()['purelib'])"
    version, site = subprocess.run([str(py), "-c", code], check=True, capture_output=True,
                                   text=True).stdout.strip().splitlines()
    major, minor = (int(v) for v in version.split())
    return (major, minor), Path(site)


def link_shared_torch(env: Path | str, site: Path, version: tuple[int, int], dists: list | None) -> bool:
    """Make ``env`` use this interpreter's torch, torchvision and CUDA wheels (``dists``, from
    :func:`shareable_distributions`) through a folder of links.

    Args:
        env: the MONAI Label environment.
        site: its site-packages folder (where the ``.pth`` file that puts the links on ``sys.path`` goes).
        version: its Python (major, minor) version; links are made only where it is this interpreter's.
        dists: the distributions to link, or ``None``.

    The links are on ``sys.path`` after ``env``'s own site-packages, so what ``env`` installs itself (``pydicom<3``,
    an older NumPy) still comes first, and pip there takes the pinned torch as installed. Returns whether ``env``
    now shares them; where they cannot be shared (no ``dists``, another Python minor version there), any old links
    are removed and pip installs ``env``'s own copy.
    """
    env = Path(env)
    layer, pth = env / SHARED_LAYER, Path(site) / SHARED_PTH
    if layer.is_dir():
        shutil.rmtree(layer)  # links only: rmtree removes a link, never what it points to
    pth.unlink(missing_ok=True)
    if not dists or tuple(version) != tuple(sys.version_info[:2]):
        return False
    layer.mkdir()
    for dist in dists:
        root = Path(dist.locate_file(""))
        for top in sorted({f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}):
            src, dst = root / top, layer / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src, target_is_directory=src.is_dir())
    pth.write_text(f"{layer}\n")
    return True


def imported_medplugin() -> Path:
    """The folder of the ``medplugin`` package this interpreter imports (installed, editable or on PYTHONPATH)."""
    import medplugin

    return Path(next(iter(medplugin.__path__))).resolve()


def link_medplugin(env: Path | str, site: Path | None = None) -> Path:
    """Make ``env`` import the same ``medplugin`` package as this interpreter: ``<env>/medplugin-link/medplugin``
    links to :func:`imported_medplugin`.

    Args:
        env: the MONAI Label environment.
        site: its site-packages folder; when given, the ``.pth`` file that puts the link folder on ``sys.path``
            (after the environment's own packages) is written there. Only the link changes afterwards.

    The server then runs the code of the caller, wherever it was installed from; no checkout is needed. Returns the
    package folder linked to.
    """
    layer = Path(env) / MEDPLUGIN_LAYER
    layer.mkdir(parents=True, exist_ok=True)
    target, link = imported_medplugin(), layer / "medplugin"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    if site is not None:
        (Path(site) / MEDPLUGIN_PTH).write_text(f"{layer}\n")
    return target


def ensure_env(env: Path | str | None = None, python: str | None = None) -> Path:
    """Create (or reuse) the MONAI Label virtual environment and return its interpreter.

    Args:
        env: folder of the environment (default: :func:`default_env`).
        python: interpreter that creates the venv (default: this interpreter where its torch can be shared,
            else ``python3`` from PATH).

    A finished install leaves a stamp of the requirement list; a later call with the same list returns at
    once, a changed list reinstalls into the same folder. Where this interpreter has the pinned torch and
    torchvision, the environment links to them (:func:`link_shared_torch`) instead of installing a copy; if
    those links break (the main environment was removed), the next call relinks or installs a copy. Every call
    points the environment's ``medplugin`` at the package this interpreter imports (:func:`link_medplugin`).
    """
    env = _env(env).resolve()
    py = env_python(env)
    if env_ready(env) and py.exists():
        link_medplugin(env)
        return py
    import fcntl

    # one creator at a time (two test processes, or two terminals, asking at once): the others wait, then reuse it
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if env_ready(env) and py.exists():
            link_medplugin(env)
            return py
        return _create_env(env, py, python)


def _create_env(env: Path, py: Path, python: str | None) -> Path:
    """The body of :func:`ensure_env` (under its lock): create the venv, link or install torch, install the rest."""
    reqs = requirements()
    start = time.monotonic()
    dists = shareable_distributions()
    if not py.exists():
        creator = python or (sys.executable if dists else None) or shutil.which("python3") or sys.executable
        subprocess.run([creator, "-m", "venv", str(env)], check=True)
    version, site = _python_site(py)
    shared = link_shared_torch(env, site, version, dists)
    pip = [str(py), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", *reqs], check=True)
    if list(site.glob("medplugin-*.dist-info")):  # an editable install made by an earlier release: the link replaces it
        subprocess.run([*pip, "uninstall", "-q", "-y", "medplugin"], check=True)
    link_medplugin(env, site)
    (env / ".medplugin-installed").write_text(_stamp(reqs) + "\n")
    logger.info("MONAI Label environment %s ready in %.0f s (%s)", env, time.monotonic() - start,
                "torch shared with this environment" if shared else "its own torch")
    return py


# ---- the app folder ------------------------------------------------------------------------------------------

# the studies folder may hold JPEG images, DICOM radiographs and text class labels: MONAI Label's datastore only
# lists files with these extensions (its default lacks .jpeg, .dcm and .txt). medplugin's DICOM reader runs on
# the environment's pydicom 2 through medplugin.io._pydicom2. Not *.json: MONAI Label keeps its own datastore file
# (datastore_v2.json) in the studies folder, which would then be listed as a study to label.
DATASTORE_FILE_EXT = ("*.nii.gz", "*.nii", "*.nrrd", "*.jpg", "*.jpeg", "*.png", "*.tif", "*.dcm", "*.txt")
# overlays a bundle may ship for MONAI Label, merged after its own config into the app's JSON config
OVERLAYS = {"train": "monailabel_train.yaml", "inference": "monailabel_inference.yaml"}


# the app's main.py: the stock app (kept as stock_main.py) with medplugin's mixins. MONAI Label takes the class of
# main.py whose direct bases include one named MONAILabelApp.
APP_MAIN = '''"""MONAI Label app of medplugin's bundles, written by `medplugin monailabel-app`.

MONAI Label's stock monaibundle app (stock_main.py, unchanged) plus medplugin's uncertainty-driven active learning
(--conf uncertainty_models <bundle,...|all>: a scoring method and a strategy <bundle>_uncertainty per bundle, see
medplugin.tools.monailabel_activelearning), each class's call at the model's operating point in classification
answers (medplugin.tools.monailabel_decisions), a DICOM SEG as segmentation answer for DICOM sources
(medplugin.tools.monailabel_dicom).
"""

import stock_main
from monailabel.interfaces.app import MONAILabelApp

from medplugin.tools.monailabel_activelearning import UncertaintyAppMixin
from medplugin.tools.monailabel_decisions import DecisionAppMixin
from medplugin.tools.monailabel_dicom import DicomSegAppMixin


class MyApp(DicomSegAppMixin, DecisionAppMixin, UncertaintyAppMixin, stock_main.MyApp, MONAILabelApp):
    """The stock monaibundle app with the uncertainty strategies, decisions and DICOM SEGs in the answers."""
'''


def stock_app_dir(env: Path | str | None = None) -> Path:
    """The stock ``monaibundle`` sample app installed with MONAI Label in ``env`` (default: :func:`default_env`).

    The wheel installs the sample apps as data files under ``<env>/monailabel/sample-apps``.
    """
    env = _env(env)
    candidates = [env / "monailabel" / "sample-apps" / "monaibundle",
                  *sorted(env.glob("lib/python3*/site-packages/monailabel/sample-apps/monaibundle"))]
    for c in candidates:
        if (c / "main.py").is_file():
            return c
    raise FileNotFoundError(f"{env}: no MONAI Label {MONAILABEL_VERSION} monaibundle sample app there; "
                            "create the environment with `medplugin monailabel-env` first")


def available_bundles(bundles_root: Path | str | None = None) -> list[str]:
    """Names of the bundles under ``bundles_root`` (default: :func:`medplugin.resources.bundles_dir`) MONAI Label
    can load (metadata and an inference config)."""
    out = []
    for b in sorted(resources.bundles_dir(bundles_root).glob("*")):
        c = b / "configs"
        if (c / "metadata.json").is_file() and any((c / f"inference.{e}").is_file() for e in ("yaml", "json")):
            out.append(b.name)
    return out


def _config_file(bundle: Path, stem: str) -> Path | None:
    for ext in ("yaml", "json", "yml"):
        p = bundle / "configs" / f"{stem}.{ext}"
        if p.is_file():
            return p
    return None


def merged_config(bundle: Path | str, stem: str, overrides: dict | None = None) -> dict | None:
    """``configs/<stem>`` of ``bundle`` merged with its MONAI Label overlay (if any) and ``overrides``."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    base = _config_file(bundle, stem)
    if base is None:
        return None
    files = [str(base)]
    overlay = bundle / "configs" / OVERLAYS.get(stem, "")
    if stem in OVERLAYS and overlay.is_file():
        files.append(str(overlay))
    config = ConfigParser.load_config_files(files)
    parser = ConfigParser(config)
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser.get()


def _plain(value) -> bool:
    scalar = (str, int, float, bool)
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def weights_settings(model_json: Path | str, config: dict) -> dict:
    """The settings recorded beside the weights (``model.json``) that ``config`` sets as plain top-level values.

    ``model.json`` (written by ``medplugin.handlers.BestModelSaver``) records the architecture, input size and
    network options the weights were trained with, at its top level or under ``network``. Those whose key is a
    top-level hyperparameter of ``config`` holding a plain value (not an expression) are returned, so the app's
    configs match the weights; computed task entries (class names, normalisation) are left to the config.
    """
    model_json = Path(model_json)
    if not model_json.is_file():
        return {}
    meta = json.loads(model_json.read_text())
    flat = {**{k: v for k, v in meta.items() if k != "network"}, **(meta.get("network") or {})}
    out = {}
    for k, v in flat.items():
        current = config.get(k)
        plain_current = current is None or (_plain(current) and not (isinstance(current, str) and current[:1] in "$@%"))
        if k in config and _plain(v) and plain_current:
            out[k] = v
    return out


def assemble_app(out: Path | str, bundles: Sequence[str] | None = None, overrides: dict | None = None,
                 weights: dict[str, Path | str] | None = None, env: Path | str | None = None,
                 bundles_root: Path | str | None = None) -> dict:
    """Write a ready MONAI Label app: the stock ``monaibundle`` app with our bundles in ``model/<name>``.

    Args:
        out: app folder to create (it must not exist: nothing is overwritten).
        bundles: bundle names (default: every bundle :func:`available_bundles` finds).
        overrides: config ids set in every bundle's train and inference config (e.g. ``{"num_workers": 0}``).
        weights: bundle name -> a ``model.pt`` to use instead of the bundle's own ``models/model.pt``.
        env: the MONAI Label environment holding the stock app (default: :func:`default_env`).
        bundles_root: where the bundles are (default: :func:`medplugin.resources.bundles_dir`).

    Each bundle folder gets its ``configs/``, ``docs/``, ``LICENSE`` and, where trained, ``models/model.pt``
    with ``model.json``. MONAI Label reads ``configs/train.json`` and ``configs/inference.json`` before the
    YAML files, so those are written: the bundle's config merged with its MONAI Label overlay
    (``configs/monailabel_train.yaml`` / ``monailabel_inference.yaml``, when the bundle ships one), the
    weights' settings from ``model.json`` (architecture, input size) and ``overrides``.
    A bundle without weights is still copied: MONAI Label lists it for training only (after a training,
    restart the server to infer with it). The stock ``main.py`` is kept as ``stock_main.py``; the app's
    ``main.py`` (:data:`APP_MAIN`) adds medplugin's mixins to it.

    Returns:
        ``{"app_dir", "models", "without_weights"}``.
    """
    out = Path(out).resolve()
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder (nothing is overwritten)")
    bundles_root = resources.bundles_dir(bundles_root)
    names = list(bundles) if bundles else available_bundles(bundles_root)
    if not names:
        raise FileNotFoundError(f"{bundles_root}: no bundle with configs/metadata.json and an inference config")
    for n in names:
        if n not in available_bundles(bundles_root):
            raise FileNotFoundError(f"{bundles_root / n}: not a bundle MONAI Label can load "
                                    "(configs/metadata.json and configs/inference.yaml needed)")
    weights = {k: Path(v) for k, v in (weights or {}).items()}
    for k, v in weights.items():
        if k not in names:
            raise ValueError(f"weights given for {k!r}, which is not among the app's bundles {names}")
        if not v.is_file():
            raise FileNotFoundError(f"{v}: weights file for {k} not found")
    stock = stock_app_dir(env)
    shutil.copytree(stock, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "model"))
    (out / "main.py").rename(out / "stock_main.py")
    (out / "main.py").write_text(APP_MAIN)
    without = []
    from medplugin.handlers.gate import model_companions
    for n in names:
        src, dst = bundles_root / n, out / "model" / n
        shutil.copytree(src / "configs", dst / "configs")
        for extra in ("docs", "LICENSE"):
            if (src / extra).is_dir():
                shutil.copytree(src / extra, dst / extra)
            elif (src / extra).is_file():
                shutil.copy2(src / extra, dst / extra)
        model_pt = weights.get(n, src / "models" / "model.pt")
        (dst / "models").mkdir(parents=True)
        if model_pt.is_file():
            for f in [model_pt, *model_companions(model_pt)]:  # model.json, and the OOD statistics it names
                shutil.copy2(f, dst / "models" / ("model.pt" if f == model_pt else f.name))
        else:
            without.append(n)
            logger.warning("%s: no trained weights at %s; MONAI Label can train it but not infer with it yet",
                           n, model_pt)
        for stem in ("train", "inference"):
            base = merged_config(src, stem)
            if base is None:
                continue
            settings = {**weights_settings(dst / "models" / "model.json", base), **(overrides or {})}
            config = merged_config(src, stem, settings)
            (dst / "configs" / f"{stem}.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"app_dir": str(out), "models": names, "without_weights": without}


def server_command(app_dir: Path | str, studies: Path | str, models: Sequence[str], host: str = "127.0.0.1",
                   port: int = 8000, executable: str = "monailabel", conf: dict | None = None) -> list[str]:
    """``monailabel start_server`` for an assembled app, offline (local bundles only, no SAM2 download).

    Args:
        app_dir: the app folder from :func:`assemble_app`.
        studies: the studies folder (images, and labels under ``labels/final``).
        models: bundle names to load from ``<app_dir>/model``.
        host: interface to listen on.
        port: TCP port.
        executable: the ``monailabel`` command (e.g. ``<env>/bin/monailabel``).
        conf: more ``--conf`` pairs, e.g. ``{"uncertainty_models": "all"}`` for the uncertainty strategies.
    """
    extra = [x for k, v in (conf or {}).items() for x in ("--conf", str(k), _conf_text(v))]
    return [executable, "start_server", "--app", str(app_dir), "--studies", str(studies), "--host", host,
            "--port", str(int(port)), "--conf", "models", ",".join(models), "--conf", "zoo_source", "github",
            "--conf", "sam2", "false", *extra]


def _conf_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def server_environment(env: Path | str | None = None, base: dict | None = None) -> dict:
    """Process environment for the server: ``env``'s ``bin`` first on PATH (``monailabel`` starts ``python``
    from PATH) and the datastore extensions of :data:`DATASTORE_FILE_EXT`."""
    base = dict(os.environ if base is None else base)
    base.pop("VIRTUAL_ENV", None)
    base["PATH"] = str(_env(env).resolve() / "bin") + os.pathsep + base.get("PATH", "")
    base["MONAI_LABEL_DATASTORE_FILE_EXT"] = json.dumps(list(DATASTORE_FILE_EXT))
    return base


def server_line(app_dir: Path | str, studies: Path | str, models: Sequence[str], host: str = "127.0.0.1",
                port: int = 8000, env: Path | str | None = None, conf: dict | None = None) -> str:
    """The shell line that starts the server for an assembled app (environment variables included); ``conf`` as in
    :func:`server_command`."""
    import shlex

    exts = shlex.quote(json.dumps(list(DATASTORE_FILE_EXT)))
    cmd = " ".join(shlex.quote(c) for c in server_command(app_dir, studies, models, host, port, conf=conf))
    return f"PATH={shlex.quote(str(_env(env).resolve() / 'bin'))}:$PATH MONAI_LABEL_DATASTORE_FILE_EXT={exts} {cmd}"
