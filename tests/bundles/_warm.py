"""``python -m monai.bundle`` without paying for its imports each time: runs forked from a warm interpreter.

A bundle run spends about 7 s of CPU importing torch, MONAI (which imports matplotlib, pandas, scikit-learn,
scikit-image, ITK, SciPy and TensorBoard) and medplugin before its first line of work; the integration tier starts
a few hundred of them on 2 cores. Here one interpreter per test process (the "zygote") imports them once and forks
a child for each run. The child is the run ``python -m monai.bundle ARGS`` would be: MONAI's own ``__main__``
(``runpy``, as ``-m`` does) with that ``sys.argv``, the caller's working folder (first on ``sys.path``, as ``-m``
puts it) and environment, standard output and error to their own files, fresh seeds for Python's and NumPy's
global generators (a new process would draw them from the OS), and a normal interpreter exit (atexit handlers,
threads joined, files flushed; an uncaught exception goes to ``sys.excepthook``, which medplugin's run guard
replaces). Only the imports are shared, made before any of the run's code.

A run goes cold (a real ``python -m monai.bundle`` process) when its environment differs from the zygote's in a
variable read at start-up (``PYTHON*``, ``OMP_*``, ``MKL_*``, ``KMP_*``, ``LD_*``, ``CUDA*``, ``TORCH*``), when
``MEDPLUGIN_TEST_COLD_RUNS=1`` is set, or where ``os.fork`` does not exist. The commands the README and the bundle
docs show, the ``medplugin`` command, ``torchrun`` and the runs a test kills still start real processes.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

COLD_ENV = "MEDPLUGIN_TEST_COLD_RUNS"
_STARTUP_PREFIXES = ("PYTHON", "OMP_", "MKL_", "KMP_", "LD_", "CUDA", "TORCH")

# the zygote: import, then for each request line fork a child that runs monai.bundle's __main__; answer with the
# child's pid at once and its wait status when it ends
_ZYGOTE = r'''
import json, os, sys
import torch, torchvision, ignite.engine, fire  # noqa: F401
import monai, monai.bundle, monai.bundle.scripts, monai.engines, monai.handlers, monai.transforms, monai.data  # noqa
import monai.networks.nets, monai.inferers, monai.metrics  # noqa: F401
import medplugin, medplugin.handlers, medplugin.transforms, medplugin.networks, medplugin.gate, medplugin.io  # noqa
import medplugin.metrics, medplugin.data  # noqa: F401
requests, answers = os.fdopen(0, "r"), os.fdopen(os.dup(1), "w")
answers.write("ready\n"); answers.flush()
for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        requests.close(); answers.close()
        null = os.open(os.devnull, os.O_RDONLY)  # fd 0 was closed with requests: it may get 0 itself
        if null != 0:
            os.dup2(null, 0); os.close(null)
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600); os.dup2(f, fd); os.close(f)
        os.chdir(req["cwd"])
        os.environ.clear(); os.environ.update(req["env"])
        import random, runpy
        import numpy as np
        random.seed(); np.random.seed()
        sys.path[0] = req["cwd"]
        sys.argv = ["-m", *req["args"]]
        try:
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException:  # as the interpreter does with an uncaught exception: the (run's own) excepthook
            sys.excepthook(*sys.exc_info())
            code = 1
        sys.exit(code)  # a normal exit of this interpreter: atexit, threads, flushes
    answers.write(json.dumps({"pid": pid}) + "\n"); answers.flush()
    _, status = os.waitpid(pid, 0)
    answers.write(json.dumps({"status": status}) + "\n"); answers.flush()
'''


def _startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_STARTUP_PREFIXES)}


class _Zygote:
    def __init__(self, env: Mapping[str, str], cwd: str) -> None:
        self.env = dict(env)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], cwd=cwd, env=self.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buf = b""
        if self._line(None) != b"ready":
            raise RuntimeError(f"the warm bundle runner did not start (exit {self.proc.poll()})")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _line(self, deadline: float | None) -> bytes | None:
        """The zygote's next answer line (``None``: none before ``deadline``), read unbuffered from its pipe."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the warm bundle runner ended")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _answer(self, deadline: float | None) -> dict | None:
        line = self._line(deadline)
        return None if line is None else json.loads(line)

    def run(self, args: Sequence[str], cwd: str, env: Mapping[str, str], timeout: float | None
            ) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="warm_run_") as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            self.proc.stdin.write((json.dumps({"args": list(args), "cwd": cwd, "env": dict(env), "stdout": out,
                                               "stderr": err}) + "\n").encode())
            self.proc.stdin.flush()
            pid = self._answer(None)["pid"]
            deadline = None if timeout is None else time.monotonic() + timeout
            answer = self._answer(deadline)
            timed_out = answer is None
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                answer = self._answer(None)
            status = answer["status"]
            code = os.waitstatus_to_exitcode(status)
            cmd = [sys.executable, "-m", "monai.bundle", *args]
            with open(out, errors="replace") as f, open(err, errors="replace") as g:
                stdout, stderr = f.read(), g.read()
            if timed_out:
                raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
            return subprocess.CompletedProcess(cmd, code, stdout, stderr)

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_zygote: _Zygote | None = None


def _close() -> None:
    if _zygote is not None:
        _zygote.close()


atexit.register(_close)


def run_monai_bundle(args: Sequence[str], cwd: str, env: Mapping[str, str], timeout: float | None = None
                     ) -> subprocess.CompletedProcess:
    """``python -m monai.bundle *args`` in ``cwd`` with exactly ``env``, as :func:`subprocess.run` with
    ``capture_output=True, text=True`` gives it: forked from the warm interpreter when its start-up environment
    matches, else a new process."""
    global _zygote
    if env.get(COLD_ENV) == "1" or not hasattr(os, "fork"):
        return _cold(args, cwd, env, timeout)
    if _zygote is None or not _zygote.alive() or _startup_env(_zygote.env) != _startup_env(env):
        if _zygote is not None:
            _zygote.close()
        _zygote = _Zygote(env, cwd)
    return _zygote.run(args, cwd, env, timeout)


def _cold(args: Sequence[str], cwd: str, env: Mapping[str, str], timeout: float | None
          ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=dict(env), text=True,
                          capture_output=True, timeout=timeout)
