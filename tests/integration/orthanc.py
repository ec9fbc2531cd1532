"""A throwaway Orthanc PACS with its DICOMweb plugin on 127.0.0.1, for tests (Debian packages ``orthanc`` and
``orthanc-dicomweb``). Free ports, storage in a given folder, no authentication, no DICOM (DIMSE) listener.

    with OrthancServer(tmp_path / "orthanc") as pacs:
        client = DicomWeb(pacs.dicomweb_url)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrthancServer:
    """Start Orthanc in ``root`` (config, storage, log), stop it and remove nothing (the caller owns ``root``).

    Args:
        root: a folder for this server only.
        executable: the Orthanc program.
        plugin: the DICOMweb plugin library.
    """

    def __init__(self, root: Path, executable: str = "Orthanc", plugin: Path = DICOMWEB_PLUGIN) -> None:
        self.root = Path(root)
        self.executable = shutil.which(executable) or shutil.which(executable, path="/usr/sbin")
        self.plugin = Path(plugin)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @classmethod
    def missing(cls, executable: str = "Orthanc", plugin: Path = DICOMWEB_PLUGIN) -> str | None:
        """Why a server cannot start here (``None`` when it can)."""
        if not (shutil.which(executable) or shutil.which(executable, path="/usr/sbin")):
            return "Orthanc not found (apt-get install orthanc)"
        if not Path(plugin).is_file():
            return f"{plugin} not found (apt-get install orthanc-dicomweb)"
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log(self) -> str:
        path = self.root / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> Path:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medplugin-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": _free_port(),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpThreadsCount": 4,
            "ConcurrentJobs": 1, "SaveJobs": False, "StableAge": 1, "StorageCompression": False,
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 60.0) -> OrthancServer:
        """Start and wait until DICOMweb answers; on failure raise with the end of Orthanc's log."""
        reason = self.missing()
        if reason:
            raise RuntimeError(reason)
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken by someone else between choosing and binding it
            self.port = _free_port()
            config = self._config()
            with open(self.root / "orthanc.log", "wb") as log:
                self.process = subprocess.Popen([self.executable, str(config)], cwd=self.root, stdout=log,
                                                stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.dicomweb_url}/studies", timeout=2) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.2)
            self.stop()
        raise RuntimeError(f"Orthanc did not start; its log ends:\n{self.log[-3000:]}")

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 20 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def orthanc_required() -> bool:
    """CI sets ``MEDPLUGIN_REQUIRE_DICOM_TOOLS``: a missing Orthanc then fails instead of skipping."""
    return bool(os.environ.get("MEDPLUGIN_REQUIRE_DICOM_TOOLS"))
