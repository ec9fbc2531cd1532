"""Several bundle runs (and ``medplugin`` commands) in one Python process, each as its command does it.

``python -m tests.bundles._batch_runner CASES.json`` runs the JSON list's cases in order. A bundle case
(:func:`bundle_case`, or :func:`monai_case` for other commands) calls ``monai.bundle.scripts.run``, the
function ``python -m monai.bundle run`` calls
(configs merged in order, ``--key value`` overrides, the bundle's metadata.json and logging.conf); a command
case (:func:`cli_case`) calls ``medplugin.cli.main(argv)``, what the ``medplugin`` command calls. Each case sets
its own environment variables, writes its stdout and stderr (file descriptors 1 and 2: log handlers, progress
bars and native code alike) to its ``log`` file and its exit status to ``<log>.rc``: the command's, or 1 after
printing the traceback the command would print. A failing case does not stop the others. Interpreter start-up
and imports, most of a smoke run's seconds, are paid once: tests/bundles/test_pretrained.py and
test_recipes.py run their cases through :func:`run_cases`. Override values are given typed (numbers, lists,
``None``), as the command line's parser would give them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env(env: dict | None) -> dict:
    return {k: None if v is None else str(v) for k, v in (env or {}).items()}


def monai_case(command: str, env: dict | None = None, **kwargs) -> dict:
    """A ``python -m monai.bundle COMMAND --key value ...`` case (``run``, ``ckpt_export``, ``verify_net_in_out``)."""
    return {"call": "monai", "command": command, "env": _env(env),
            "kwargs": {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}}


def bundle_case(bundle_root: Path, config_file: list, env: dict | None = None, **overrides) -> dict:
    """A ``python -m monai.bundle run --bundle_root ... --config_file [...] --key value ...`` case."""
    return monai_case("run", env, bundle_root=bundle_root, config_file=[str(c) for c in config_file], **overrides)


def cli_case(*argv: str, env: dict | None = None) -> dict:
    """A ``medplugin ARGV...`` case."""
    return {"call": "cli", "args": [str(a) for a in argv], "env": _env(env)}


def _call(case: dict) -> int:
    if case["call"] == "cli":
        from medplugin.cli import main

        return int(main(case["args"]) or 0)
    from monai.bundle import scripts

    getattr(scripts, case["command"])(**case["kwargs"])
    return 0


def _set_env(env: dict) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = str(v)


def _run_one(case: dict) -> int:
    before = {k: os.environ.get(k) for k in case.get("env", {})}
    _set_env(case.get("env", {}))
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    rc = 0
    try:
        with open(case["log"], "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                rc = _call(case)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except Exception:
                traceback.print_exc()
                rc = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        _set_env(before)
    return rc


def run_cases(cases: list[dict], env: dict, workdir: Path, timeout: int = 1200) -> list[tuple[int, str]]:
    """Run ``cases`` in one subprocess with environment ``env``; returns ``(exit status, log text)`` per case
    (status -1 when the process died before the case ended)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        case.setdefault("log", str(workdir / f"case{i}.log"))
    spec = workdir / "cases.json"
    spec.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-m", "tests.bundles._batch_runner", str(spec)], cwd=REPO, env=env,
                          text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        print(f"the batch runner ended with {proc.returncode}:\n{proc.stderr[-4000:]}", file=sys.stderr)
    out = []
    for c in cases:
        rc, log = Path(c["log"] + ".rc"), Path(c["log"])
        out.append((int(rc.read_text()) if rc.is_file() else -1, log.read_text() if log.is_file() else ""))
    return out


def main(spec: str) -> None:
    for case in json.loads(Path(spec).read_text()):
        rc = _run_one(case)
        Path(case["log"] + ".rc").write_text(str(rc))


if __name__ == "__main__":
    main(sys.argv[1])
