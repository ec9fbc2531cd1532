"""``medplugin pacs``'s refusals, in-process: each is one error line naming what is wrong, exit status 2, and nothing
written. (The round trip itself, through a real Orthanc, is tests/integration/test_orthanc_dicomweb.py.)"""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("dicomweb_client")

from medplugin.cli import main  # noqa: E402


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def _args(tmp_path, url, *extra):
    return ["pacs", "chest_xray_classification", "--url", url, "--study", "1.2.3", "--ckpt_dir", str(tmp_path / "m"),
            "--out", str(tmp_path / "out"), *extra]


def test_an_archive_that_does_not_answer_is_named(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    assert main(_args(tmp_path, url)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url}:") and len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_a_folder_that_holds_files_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    assert main(_args(tmp_path, "http://127.0.0.1:1/dicom-web")) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("extra, message", [(["--set", "image_size"], "--set must be KEY=VALUE, got 'image_size'"),
                                            (["--header", "Bearer x"], "--header must be KEY:VALUE")])
def test_malformed_options_are_named(tmp_path, capsys, extra, message):
    assert main(_args(tmp_path, "http://127.0.0.1:1/dicom-web", *extra)) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_bundle_is_named(tmp_path, capsys):
    args = _args(tmp_path, "http://127.0.0.1:1/dicom-web")
    args[1] = "chest_xray_clasification"
    assert main(args) == 2
    assert "chest_xray_clasification" in capsys.readouterr().err
