"""Review a training run in TensorBoard: the server command, a free local port, waiting until it serves."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["free_port", "tensorboard_command", "wait_for_http", "http_json", "stop_process", "running_server"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tensorboard_command(logdir: str | Path, host: str = "127.0.0.1", port: int = 6006,
                        python: str | None = None) -> list[str]:
    """The command that serves ``logdir`` (a run folder, or a folder of runs to compare) with TensorBoard.

    Args:
        logdir: folder searched recursively for event files.
        host: interface to listen on (loopback by default: nothing is exposed to the network).
        port: TCP port.
        python: interpreter with ``tensorboard`` installed (default: this one).
    """
    if not Path(logdir).is_dir():
        raise FileNotFoundError(f"{logdir}: no such run folder")
    return [python or sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
            "--port", str(int(port))]


def http_json(url: str, data: dict | None = None, timeout: float = 30.0):
    """GET ``url`` (or POST ``data`` as JSON) and decode the JSON answer."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0,
                  interval: float = 0.5) -> None:
    """Poll ``url`` until it answers 200; fail early with the server's output when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s (last error: {last})")


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate ``proc`` and its process group (started with ``start_new_session=True``), then reap it."""
    import os
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(timeout=timeout)


@contextmanager
def running_server(cmd: Sequence[str], ready_url: str, log_path: str | Path, cwd: str | Path | None = None,
                   env: dict | None = None, timeout: float = 300.0) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own process group, wait until ``ready_url`` answers 200, stop it (and its children) on exit.

    Its output goes to ``log_path``; a server that exits or does not answer in ``timeout`` seconds raises an
    ``AssertionError`` ending with the last 6,000 characters of that log, so the reason is in the message.
    """
    log_path = Path(log_path)
    with log_path.open("w") as log:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            try:
                wait_for_http(ready_url, proc, timeout=timeout)
            except (RuntimeError, TimeoutError) as e:
                log.flush()
                raise AssertionError(f"{e}\n{log_path.read_text()[-6000:]}") from e
            yield proc
        finally:
            stop_process(proc)


def serve(logdir: str | Path, host: str = "127.0.0.1", port: int | None = None, argv: Sequence[str] = ()) -> int:
    """Serve ``logdir`` with TensorBoard in the foreground until interrupted (the server is stopped with it)."""
    port = port or free_port(host)
    cmd = [*tensorboard_command(logdir, host, port), *argv]
    logger.info("TensorBoard for %s at http://%s:%d/", logdir, host, port)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
