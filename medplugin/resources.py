"""Where the bundles and the configuration overlays are: shipped inside the package, or named explicitly.

A wheel (``pip install .``) carries every ``bundles/<name>/`` of the project (``configs/``, ``docs/``, ``LICENSE``;
never ``models/`` or ``runs/``) as ``medplugin/_bundles/<name>/``, and the root ``configs/*.yaml`` overlays
(``demo*.yaml``, ``smoke.yaml``, ``fast.yaml``) as ``medplugin/_overlays/``. ``setup.py`` maps those two folders
of the checkout into the package when the wheel is built; git holds them once, at the checkout's root.

A folder is taken from the first of:

1. an explicit folder (``medplugin ... --bundles-dir DIR``, or the ``root`` argument here);
2. the environment variable :data:`BUNDLES_ENV` (``MEDPLUGIN_BUNDLES``) or :data:`OVERLAYS_ENV`
   (``MEDPLUGIN_OVERLAYS``);
3. the copy inside the installed package (a wheel install);
4. for an editable install (``pip install -e``), the project folder pip recorded in the distribution's
   ``direct_url.json`` (PEP 610), provided the ``medplugin`` imported now is that project's own package.

Nothing here guesses a checkout from the location of this file.
"""

from __future__ import annotations

import json
import os
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["BUNDLES_ENV", "OVERLAYS_ENV", "bundles_dir", "overlays_dir", "bundle_dir", "overlay_file",
           "list_bundles", "editable_project"]

BUNDLES_ENV = "MEDPLUGIN_BUNDLES"
OVERLAYS_ENV = "MEDPLUGIN_OVERLAYS"
PACKAGED = {"bundles": "_bundles", "overlays": "_overlays"}  # folder names inside the installed package
PROJECT = {"bundles": "bundles", "overlays": "configs"}  # the same folders at the project's root


def editable_project() -> Path | None:
    """The project folder of an editable install of medplugin, when the imported package is that project's.

    pip records where an editable install came from in the distribution's ``direct_url.json`` (PEP 610). That
    folder is returned only if the ``medplugin`` package imported now lives in it (not, say, another checkout
    put first on ``PYTHONPATH``); otherwise, and for a non-editable install, ``None``.
    """
    import medplugin

    # every "medplugin" distribution on sys.path, not only the first: run from the checkout's root, the current
    # folder comes first and holds the build's leftover medplugin.egg-info, which has no direct_url.json
    text = next((t for d in metadata.distributions(name="medplugin") if (t := d.read_text("direct_url.json"))), None)
    if not text:
        return None
    info = json.loads(text)
    url = urlparse(info.get("url", ""))
    if not (info.get("dir_info") or {}).get("editable") or url.scheme != "file":
        return None
    project = Path(unquote(url.path))
    imported = Path(next(iter(medplugin.__path__))).resolve()
    return project if imported == (project / "medplugin").resolve() else None


def _find(kind: str, explicit: str | os.PathLike | None, env: str) -> Path:
    if explicit:
        path, source = Path(explicit), "the folder given"
    elif os.environ.get(env):
        path, source = Path(os.environ[env]), f"${env}"
    else:
        packaged = resources.files("medplugin") / PACKAGED[kind]
        if packaged.is_dir():
            return Path(str(packaged))
        project = editable_project()
        if project is None:
            option = "pass --bundles-dir DIR or " if kind == "bundles" else ""
            raise FileNotFoundError(
                f"{packaged}: no {kind} shipped with this medplugin (a source checkout run without installing "
                f"it?); {option}set {env} to the {PROJECT[kind]}/ folder of a medplugin checkout")
        path, source = project / PROJECT[kind], "the editable install's project"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder ({kind} folder from {source})")
    return path


def bundles_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the bundles (``<name>/configs/...``): ``root`` when given, else see the module doc."""
    return _find("bundles", root, BUNDLES_ENV)


def overlays_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of the configuration overlays (``demo.yaml``, ``smoke.yaml``, ...): ``root`` or the module doc's
    order."""
    return _find("overlays", root, OVERLAYS_ENV)


def list_bundles(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the bundles (folders with ``configs/metadata.json``) in :func:`bundles_dir` ``(root)``."""
    return sorted(p.parent.parent.name for p in bundles_dir(root).glob("*/configs/metadata.json"))


def bundle_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of bundle ``name`` in :func:`bundles_dir` ``(root)``; an error lists the bundles there."""
    base = bundles_dir(root)
    path = base / name
    if not (path / "configs").is_dir():
        raise FileNotFoundError(f"{path}: no such bundle (bundles there: {', '.join(list_bundles(base)) or 'none'})")
    return path


def overlay_file(name: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """An overlay given by name (``smoke`` or ``smoke.yaml``: a file of :func:`overlays_dir` ``(root)``) or by
    path (anything with a folder in it, e.g. ``./my.yaml``)."""
    text = str(name)
    if os.sep in text or (os.altsep and os.altsep in text):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such overlay file")
        return path
    base = overlays_dir(root)
    path = base / (text if text.endswith((".yaml", ".yml", ".json")) else f"{text}.yaml")
    if not path.is_file():
        names = sorted(p.stem for p in base.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such overlay (overlays there: {', '.join(names) or 'none'}; "
                                "a file of your own is given by its path, e.g. ./my_overlay.yaml)")
    return path
