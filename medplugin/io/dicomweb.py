"""A small DICOMweb client on ``dicomweb-client``: retrieve a study (WADO-RS), store results (STOW-RS), search
(QIDO-RS). Bundles never import it; it is for inference scripts and tests that talk to a PACS.

Instances are retrieved as stored (``application/dicom; transfer-syntax=*``): asking for the default (Explicit
VR Little Endian) makes a server transcode, which Orthanc's Debian build cannot do for JPEG 2000 (HTTP 500).
``medplugin pacs`` (:mod:`medplugin.pacs_cli`) uses it to run a bundle on a study of a PACS.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from monai.utils import optional_import

from medplugin.errors import BadInputError
from medplugin.utils import atomic_write

DICOMwebClient, _HAS_DICOMWEB = optional_import("dicomweb_client.api", name="DICOMwebClient")
pydicom, _ = optional_import("pydicom")

__all__ = ["DicomWeb"]

logger = logging.getLogger(__name__)

AS_STORED = (("application/dicom", "*"),)
_INSTANCE_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                    "SeriesNumber", "InstanceNumber")


class DicomWeb:
    """A DICOMweb service (e.g. ``http://127.0.0.1:8042/dicom-web``).

    Args:
        url: the service root (QIDO-RS, WADO-RS and STOW-RS below it).
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
        timeout: seconds per request.
        attempts: tries per request when the server is busy or unreachable, waiting 2 s, 4 s, ... between them
            (dicomweb-client's default of 5 keeps a user waiting half a minute for an archive that is down).
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 60.0,
                 attempts: int = 3) -> None:
        if not _HAS_DICOMWEB:
            raise ImportError("the DICOMweb client needs dicomweb-client: pip install 'medplugin[dicomweb]'")
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(self.url, headers=headers, timeout=timeout)
        self.client.set_http_retry_params(retry=attempts > 1, max_attempts=max(1, int(attempts)))

    def search_instances(self, study_uid: str | None = None, series_uid: str | None = None,
                         modality: str | None = None) -> list[dict[str, Any]]:
        """QIDO-RS: the instances of a study (or series, or all), optionally of one modality.

        Returns:
            one dict per instance with ``StudyInstanceUID``, ``SeriesInstanceUID``, ``SOPInstanceUID``,
            ``SOPClassUID``, ``Modality``, ``SeriesNumber``, ``InstanceNumber`` (``None`` where the server has none).
        """
        filters = {"Modality": modality} if modality else None
        found = self.client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid,
                                                 fields=list(_INSTANCE_FIELDS), search_filters=filters,
                                                 get_remaining=True)
        out = []
        for item in found:
            ds = pydicom.Dataset.from_json(item)
            out.append({k: (str(ds.get(k)) if ds.get(k) is not None else None) for k in _INSTANCE_FIELDS})
        logger.info("QIDO-RS: %d instance(s)", len(out))
        return out

    def retrieve_study(self, study_uid: str, folder: str | os.PathLike) -> list[Path]:
        """WADO-RS: write every instance of a study, as stored, to ``folder/<SOP Instance UID>.dcm``.

        Raises:
            BadInputError: the server has no such study (naming the URL).
        """
        folder = Path(folder)
        paths = []
        for ds in self.client.iter_study(study_uid, media_types=AS_STORED):
            paths.append(self._write(ds, folder))
        if not paths:
            raise BadInputError(f"{self.url}/studies/{study_uid}", "no instances retrieved")
        logger.info("WADO-RS: %d instance(s) of one study written to %s", len(paths), folder)
        return paths

    def search_series(self, study_uid: str) -> list[dict[str, Any]]:
        """QIDO-RS: the series of a study, each a dict with ``SeriesInstanceUID``, ``Modality``, ``SeriesNumber``
        and ``NumberOfSeriesRelatedInstances`` (``None`` where the server has none)."""
        fields = ["SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"]
        found = self.client.search_for_series(study_instance_uid=study_uid, fields=fields, get_remaining=True)
        out = []
        for item in found:
            ds = pydicom.Dataset.from_json(item)
            out.append({k: (str(ds.get(k)) if ds.get(k) is not None else None) for k in fields})
        return out

    def retrieve_series(self, study_uid: str, series_uid: str, folder: str | os.PathLike) -> list[Path]:
        """WADO-RS: write every instance of one series, as stored, to ``folder/<SOP Instance UID>.dcm``.

        Raises:
            BadInputError: the server has no such series (naming the URL).
        """
        paths = [self._write(ds, Path(folder)) for ds in self.client.iter_series(study_uid, series_uid,
                                                                                 media_types=AS_STORED)]
        if not paths:
            raise BadInputError(f"{self.url}/studies/{study_uid}/series/{series_uid}", "no instances retrieved")
        logger.info("WADO-RS: %d instance(s) of one series written to %s", len(paths), folder)
        return paths

    @staticmethod
    def _write(ds: Any, folder: Path) -> Path:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        atomic_write(path, lambda tmp: _save(ds, tmp))
        return path

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        """WADO-RS: one instance, as stored, as a pydicom dataset."""
        return self.client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=AS_STORED)

    def store(self, files: Iterable[str | os.PathLike]) -> list[str]:
        """STOW-RS: store DICOM files; return their SOP Instance UIDs.

        Raises:
            RuntimeError: the server refused some instances (their UIDs and failure reasons in the message).
        """
        datasets = [pydicom.dcmread(f) for f in files]
        if not datasets:
            return []
        response = self.client.store_instances(datasets)
        failed = response.get("FailedSOPSequence") or []
        if failed:
            reasons = [f"{i.get('ReferencedSOPInstanceUID')} (reason {i.get('FailureReason')})" for i in failed]
            raise RuntimeError(f"{self.url}: STOW-RS refused {len(failed)} of {len(datasets)} instance(s): "
                               f"{', '.join(reasons)}")
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        logger.info("STOW-RS: stored %d instance(s)", len(uids))
        return uids


def _save(ds: Any, path: str) -> None:
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2
        ds.save_as(path, write_like_original=False)
