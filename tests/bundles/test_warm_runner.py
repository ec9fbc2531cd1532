"""The warm bundle runner the integration tests use (tests/bundles/_warm.py) behaves as ``python -m monai.bundle``
started afresh: the same output and exit code, the caller's environment and folder, fresh random seeds, a normal
exit (atexit handlers run, output flushed), a traceback and exit 1 on an error, and a time limit."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.bundles._runner import REPO
from tests.bundles._warm import COLD_ENV, run_monai_bundle

PROBE = ("$print('probe', __import__('os').environ.get('WARM_PROBE'), __import__('os').getcwd(), "
         "__import__('random').random(), __import__('numpy').random.rand(), __import__('sys').path[0]) or "
         "__import__('atexit').register(print, 'atexit ran')")


def _run(tmp_path, config: dict, cold: bool, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(config))
    e = {**os.environ, "PYTHONWARNINGS": "ignore", COLD_ENV: "1" if cold else "0", **env}
    return run_monai_bundle(["run", "--config_file", str(path)], str(REPO), e, timeout)


def _probe(proc: subprocess.CompletedProcess) -> list[str]:
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("probe ")]
    return line.split()[1:]


def test_a_warm_run_is_a_fresh_python_m_monai_bundle(tmp_path):
    runs = {name: _run(tmp_path, {"run": [PROBE]}, cold=name == "cold", WARM_PROBE=name)
            for name in ("cold", "warm1", "warm2")}
    for name, proc in runs.items():
        assert proc.returncode == 0, proc.stderr[-2000:]
        env, cwd, _, _, path0 = _probe(proc)
        assert env == name and cwd == str(REPO) and path0 == str(REPO)
        assert proc.stdout.rstrip().endswith("atexit ran")  # a normal interpreter exit
        assert proc.args[1:3] == ["-m", "monai.bundle"]
    # each run draws its own seeds, as a new process does (children of one fork would share them)
    draws = [tuple(_probe(p)[2:4]) for p in runs.values()]
    assert len(set(draws)) == 3

    failed = {cold: _run(tmp_path, {"run": ["$1 / 0"]}, cold=cold) for cold in (True, False)}
    for proc in failed.values():
        assert proc.returncode == 1 and "ZeroDivisionError" in proc.stderr
    assert failed[True].stderr.strip().splitlines()[-1] == failed[False].stderr.strip().splitlines()[-1]
    # an uncaught exception goes to the run's own sys.excepthook (medplugin's run guard installs one)
    hook = ("$setattr(__import__('sys'), 'excepthook', lambda t, e, tb: print('hooked', t.__name__, "
            "file=__import__('sys').stderr))")
    hooked = {cold: _run(tmp_path, {"run": [hook, "$1 / 0"]}, cold=cold) for cold in (True, False)}
    for proc in hooked.values():  # MONAI raises the expression's error as a RuntimeError
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == "hooked RuntimeError"

    with pytest.raises(subprocess.TimeoutExpired):
        _run(tmp_path, {"run": ["$__import__('time').sleep(60)"]}, cold=False, timeout=3)
    after = _run(tmp_path, {"run": [PROBE]}, cold=False, WARM_PROBE="after")  # the runner still serves
    assert after.returncode == 0 and _probe(after)[0] == "after"
