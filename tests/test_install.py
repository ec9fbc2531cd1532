"""``pip install .`` into a fresh virtual environment, then ``medplugin demo ... --run`` from a folder outside the
checkout: the bundles and overlays travel inside the wheel, and the run writes only under ``--out``.

To stay affordable on 2 cores, the new environment does not download torch and MONAI again: it gets links to the
distributions this environment has for exactly the dependency closure of pyproject.toml's ``dependencies`` (a
``.pth`` file puts the folder of links on its ``sys.path``). So a dependency missing from pyproject.toml is missing
there too, and medplugin itself is only what pip installs from the wheel it builds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from tests.bundles._runner import REPO

pytestmark = pytest.mark.integration

CLEAN = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MEDPLUGIN_BUNDLES", "MEDPLUGIN_OVERLAYS")


def _clean_env(**extra) -> dict:
    """This process's environment without what would point the new one at the checkout (or at this environment)."""
    return {**{k: v for k, v in os.environ.items() if k not in CLEAN}, "PYTHONWARNINGS": "ignore", **extra}


def _source_copy(dst: Path) -> Path:
    """The working tree's files as git sees them (tracked, and new files git does not ignore) in ``dst``: a clean
    source tree, without build/, models/, runs/ or caches of the checkout."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def _dependency_closure(pyproject: Path) -> list[metadata.Distribution]:
    """The installed distributions that ``pyproject``'s dependencies need (extras and markers honoured)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    seen, out = set(), []
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)  # not installed here: this test cannot stand in for a download
        if key[0] not in {canonicalize_name(d.metadata["Name"]) for d in out}:
            out.append(dist)
        for text in dist.requires or []:
            r = Requirement(text)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (*req.extras, "")):
                todo.append(r)
    return out


def _venv(path: Path, dists: list[metadata.Distribution] = ()) -> tuple[Path, Path]:
    """A new virtual environment (no pip: this environment's pip installs into it) whose ``sys.path`` ends with
    links to ``dists``. Returns (python, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
    py = path / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    if dists:
        layer = path / "dependency-links"
        layer.mkdir()
        for dist in dists:
            root = Path(dist.locate_file(""))
            for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
                if (root / top).exists() and not (layer / top).exists():
                    (layer / top).symlink_to(root / top, target_is_directory=(root / top).is_dir())
        (site / "dependency-links.pth").write_text(f"{layer}\n")
    return py, site


def _pip_install(py: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-v", *args],
                          capture_output=True, text=True, timeout=900, env=_clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_install_runs_the_demo_from_outside_the_checkout(tmp_path):
    src = _source_copy(tmp_path / "src")
    py, site = _venv(tmp_path / "venv", _dependency_closure(src / "pyproject.toml"))
    build = _pip_install(py, str(src))
    assert "as a TOML table is deprecated" not in build.stdout + build.stderr  # project.license is an SPDX string
    assert "Installing 'medplugin." not in build.stdout + build.stderr  # no package-data-as-data warnings

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import medplugin, medplugin.resources as r; "
                            "print(medplugin.__file__); print(r.bundles_dir()); print(r.overlays_dir())"],
                           cwd=work, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    module, bundles, overlays = (Path(line) for line in where.stdout.split())
    package = site / "medplugin"
    assert module == package / "__init__.py"  # the wheel's medplugin, not the checkout's (nor its copy's)
    assert (bundles, overlays) == (package / "_bundles", package / "_overlays")
    shipped = _files(package / "_bundles" / "retina_oct_classification")
    assert {"LICENSE", "configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml",
            "configs/metadata.json", "configs/logging.conf", "docs/README.md"} <= shipped
    assert not [f for f in _files(package / "_bundles") if f.split("/")[1:2] in (["models"], ["runs"])]
    assert {"demo.yaml", "smoke.yaml", "fast.yaml"} <= _files(package / "_overlays")
    before = _files(package)

    out = tmp_path / "demo out"  # a space in the path, as users' folders have
    demo = subprocess.run([str(py.parent / "medplugin"), "demo", "retina_oct_classification", "--out", str(out),
                           "--run", "--overlay", "smoke"], cwd=work, env=_clean_env(),
                          capture_output=True, text=True, timeout=1500)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-5000:]
    assert "demo finished: test accuracy" in demo.stdout
    assert f"--bundle_root {package / '_bundles' / 'retina_oct_classification'} " in demo.stdout
    assert str(package / "_overlays" / "smoke.yaml") in demo.stdout
    metrics = json.loads((out / "runs" / "evaluate" / "metrics.json").read_text())
    assert metrics["n"] == 64  # the demo's test split: 4 classes x 4 patients x 4 images
    assert (out / "models" / "model.pt").is_file()
    assert (out / "runs" / "inference" / "predictions.csv").is_file()
    assert _files(package) == before  # nothing written into site-packages (models, runs, caches)
    assert not list(work.iterdir())  # nor into the current folder


def test_editable_install_finds_its_projects_bundles(tmp_path):
    """``pip install -e``: no copy in the package; the project folder pip recorded gives bundles/ and configs/."""
    src = _source_copy(tmp_path / "src")
    py, _ = _venv(tmp_path / "venv")
    _pip_install(py, "--no-deps", "-e", str(src))
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import medplugin.resources as r; "
            "print(r.editable_project()); print(r.bundles_dir()); print(r.overlays_dir())")
    where = subprocess.run([str(py), "-c", code], cwd=work, env=_clean_env(), capture_output=True, text=True,
                           timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    assert [Path(line) for line in where.stdout.split()] == [src, src / "bundles", src / "configs"]
