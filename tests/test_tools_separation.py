"""The library the bundles import never imports the tooling (``medplugin.tools``: environments, servers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.bundles._runner import REPO

# imports, in a fresh interpreter, every module a bundle config names and every library module of the package, then
# reports which medplugin.tools modules (and server packages) got imported on the way
PROBE = r"""
import importlib, json, pkgutil, sys
import medplugin

names = json.loads(sys.argv[1])
imported, failed = set(), {}
for name in names:  # "medplugin.transforms.FundusPreprocessd.out_channels": the longest module prefix
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:n]))
            imported.add(".".join(parts[:n]))
            break
        except ModuleNotFoundError:
            continue
library = []  # walk_packages imports every package it walks: the tools and the command are left out from the top
for top in pkgutil.iter_modules(medplugin.__path__, "medplugin."):
    if top.name in ("medplugin.tools", "medplugin.cli") or top.name.startswith("medplugin._"):
        continue
    library.append(top.name)
    if top.ispkg:
        package = importlib.import_module(top.name)
        library += [m.name for m in pkgutil.walk_packages(package.__path__, top.name + ".")]
for name in library:
    try:
        importlib.import_module(name)
        imported.add(name)
    except Exception as e:  # reported: a library module that cannot be imported is a failure of its own
        failed[name] = f"{type(e).__name__}: {e}"
print(json.dumps({"imported": sorted(imported), "failed": failed,
                  "tools": sorted(m for m in sys.modules if m.startswith("medplugin.tools")),
                  "servers": sorted(m for m in sys.modules if m.split(".")[0] in ("monailabel", "tensorboard")
                                    and m.startswith(("monailabel", "tensorboard.main", "tensorboard.program")))}))
"""


def _config_references() -> list[str]:
    names = set()
    for f in sorted(REPO.glob("bundles/*/configs/*")) + sorted(REPO.glob("configs/*.yaml")):
        if f.suffix in (".yaml", ".yml", ".json"):
            names.update(re.findall(r"\bmedplugin(?:\.[A-Za-z_]\w*)+", f.read_text()))
    return sorted(names)


@pytest.mark.integration  # a fresh interpreter, so that this session's imports do not count
def test_modules_bundles_import_never_import_the_tools():
    names = _config_references()
    assert len(names) > 20  # the configs name transforms, networks, handlers, metrics, data and utils
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["failed"]
    for package in ("transforms", "handlers", "networks", "data", "metrics", "io", "utils"):
        assert f"medplugin.{package}" in report["imported"]
    assert report["tools"] == [] and report["servers"] == []
