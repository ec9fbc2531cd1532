"""medplugin.tools.review.running_server: a real server process started, awaited, and stopped with its children."""

from __future__ import annotations

import sys
import urllib.request

import pytest

from medplugin.tools.review import free_port, running_server

pytestmark = pytest.mark.integration


def test_running_server_serves_then_stops(tmp_path):
    (tmp_path / "hello.txt").write_text("hi")
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    url = f"http://127.0.0.1:{port}/"
    with running_server(cmd, url, tmp_path / "server.log", timeout=60) as proc:
        with urllib.request.urlopen(f"{url}hello.txt", timeout=10) as r:
            assert r.read() == b"hi"
        assert proc.poll() is None
    assert proc.poll() is not None
    assert "GET /hello.txt" in (tmp_path / "server.log").read_text()


def test_a_server_that_exits_fails_with_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('cannot bind: port taken'); sys.exit(3)"]
    with pytest.raises(AssertionError, match=r"(?s)server exited with 3 .*cannot bind: port taken"):
        with running_server(cmd, f"http://127.0.0.1:{free_port()}/", tmp_path / "server.log", timeout=60):
            pytest.fail("the body must not run when the server never answered")
