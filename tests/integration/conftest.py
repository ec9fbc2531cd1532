"""Fixtures of the integration tests that start servers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.integration.orthanc import OrthancServer, orthanc_required


@pytest.fixture
def orthanc(tmp_path_factory) -> Iterator[OrthancServer]:
    """A fresh Orthanc with DICOMweb on 127.0.0.1 (free port, empty storage, no auth); stopped and its folder
    deleted afterwards. Skips where Orthanc is not installed, fails there under ``MEDPLUGIN_REQUIRE_DICOM_TOOLS``."""
    reason = OrthancServer.missing()
    if reason:
        if orthanc_required():
            pytest.fail(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("orthanc")
    server = OrthancServer(root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
