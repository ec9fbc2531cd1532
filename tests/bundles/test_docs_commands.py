"""The evaluate commands the README and every bundle's docs show: each merges train.yaml, then the evaluate.yaml
overlay (then, for several processes, multi_gpu_evaluate.yaml), and the README's OCT evaluation runs as written."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundles._runner import REPO, quiet_env

DOCS = [REPO / "README.md", *sorted((REPO / "bundles").glob("*/docs/README.md"))]


def _commands(path: Path) -> list[str]:
    """Shell commands of a Markdown file: the lines of its code blocks (``\\`` continuations joined) and its inline
    code that runs ``monai.bundle``."""
    text = path.read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    cmds = [line.strip() for b in blocks for line in re.sub(r"\\\n\s*", " ", b).splitlines() if line.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    cmds += [" ".join(c.split()) for c in re.findall(r"`([^`]*monai\.bundle[^`]*)`", prose)]
    return cmds


def _config_files(cmd: str) -> list[str]:
    """The file names a command's ``--config_file`` merges, in order; a recipe overlay (``configs/recipes/``, merged
    between train.yaml and evaluate.yaml) is left out."""
    args = shlex.split(cmd, comments=True)
    value = args[args.index("--config_file") + 1]
    files = ast.literal_eval(value) if value.startswith("[") else [value]
    return [Path(f).name for f in files if "/configs/recipes/" not in f]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_evaluate_commands_merge_train_then_evaluate(doc):
    cmds = [c for c in _commands(doc) if "evaluate.yaml" in c]
    assert cmds, f"{doc} shows no evaluate command"
    for c in cmds:
        files = _config_files(c)
        assert files[:2] == ["train.yaml", "evaluate.yaml"], c
        if "torchrun" in c:
            assert files[2] == "multi_gpu_evaluate.yaml", c


def test_the_readme_oct_evaluation_runs_as_written(oct_demo, oct_smoke_run, tmp_path):
    """The README's OCT lines (``B=...`` and the evaluate command) in bash, with the demo data as dataset_dir and the
    smoke-trained model's folder and size appended."""
    ckpt, _ = oct_smoke_run
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    block = next(b for b in blocks if "B=bundles/retina_oct_classification" in b)
    lines = block.splitlines()
    setup = next(line for line in lines if line.startswith("B="))
    cmd = next(line for line in lines if "evaluate.yaml" in line)
    assert cmd.startswith("python -m monai.bundle run") and "/data/OCT2017" in cmd
    out = tmp_path / "eval"
    script = "\n".join([setup, cmd.replace("python ", shlex.quote(sys.executable) + " ", 1).replace(
        "/data/OCT2017", shlex.quote(str(oct_demo))) + f" --ckpt_dir {shlex.quote(str(ckpt))} --output_dir "
        f"{shlex.quote(str(out))} --image_size 32 --batch_size 4 --num_workers 0"])
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=quiet_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 8 and set(m["per_class"]) == {"CNV", "DME", "DRUSEN", "NORMAL"}
