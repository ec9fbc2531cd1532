"""The DICOM result writers on pydicom 2 with highdicom 0.22 (the last release on pydicom 2, what MONAI Label's
environment can take), checked here with pydicom 3, highdicom 0.28 and dciodvfy.

The environment is a throwaway venv with only ``pydicom<3``, ``highdicom==0.22.*``, NumPy 1, Pillow and the
pylibjpeg plugins (or the Python named by ``MEDPLUGIN_PYDICOM2_PYTHON``). It has no MONAI, so the script loads
``medplugin.io.dicom_results`` without running ``medplugin/io/__init__.py`` (which imports the MONAI-based
reader); the writer modules themselves run unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from medplugin.io.dicom_results import read_classification_sr, read_segmentation_mask  # noqa: E402
from tests.io._dicom_helpers import COPIED, NOT_COPIED, dciodvfy, knee_series, sample_file, with_phi  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = ["pydicom<3", "highdicom==0.22.*", "numpy<2", "pillow", "pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1",
                "pylibjpeg-openjpeg>=2.3"]

WRITE_ALL = r"""
import json, sys, types
import numpy as np
repo, job = sys.argv[1], json.load(open(sys.argv[2]))
sys.path.insert(0, repo)
import medplugin  # noqa: F401  (medplugin/__init__ imports only its errors)
io = types.ModuleType("medplugin.io"); io.__path__ = [repo + "/medplugin/io"]; sys.modules["medplugin.io"] = io
import highdicom, pydicom
from medplugin.io import dicom_results as dr
out, done = job["out"], {"pydicom": pydicom.__version__, "highdicom": highdicom.__version__}
chest = dr.ModelInfo("chest_xray_classification", "0.4.0", operating_points={"Effusion": {"threshold": 0.2}})
lung, knee_model = dr.ModelInfo("lung_xray_segmentation", "0.3.0"), dr.ModelInfo("knee_mri_segmentation", "0.2.0")
for n, path in enumerate(job["chest"]):
    images = [dr.ImageClassification(path, job["probs"]),
              dr.ImageClassification(path, None, in_scope=False,
                                     out_of_scope_reason="ViewPosition is LL, expected PA or AP")]
    done[f"sr{n}"] = str(dr.write_classification_sr(images[:1], chest, out))
    done[f"refused{n}"] = str(dr.write_classification_sr(images[1:], chest, out))
    rgb = np.zeros((64, 48, 3), np.uint8); rgb[10:30, 5:25, 0] = 255
    done[f"sc{n}"] = str(dr.write_cam_secondary_capture(path, rgb, "Effusion", chest, out, probability=0.3))
    mask = np.load(job["lungs"])
    done[f"seg{n}"] = str(dr.write_segmentation(path, mask, [dr.LUNGS], lung, out))
knee = np.load(job["knee_mask"])
done["knee"] = str(dr.write_segmentation(job["knee"], knee, [dr.ACL_REGION], knee_model, out))
json.dump(done, open(job["result"], "w"))
"""


@pytest.fixture(scope="module")
def pydicom2_python(tmp_path_factory) -> str:
    """A Python with pydicom 2 and highdicom 0.22: ``MEDPLUGIN_PYDICOM2_PYTHON``, or a new venv (about a minute)."""
    given = os.environ.get("MEDPLUGIN_PYDICOM2_PYTHON")
    if given:
        return given
    venv = tmp_path_factory.mktemp("pydicom2") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return py


@pytest.mark.slow  # creates a venv
def test_writers_on_pydicom2_and_highdicom_022(pydicom2_python, tmp_path):
    chest = [with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "in" / "a.dcm", PatientName="Müller^Jörg"),
             with_phi(sample_file("RG1_J2KR.dcm"), tmp_path / "in" / "b.dcm", PatientName="Müller^Jörg")]
    knee = knee_series(tmp_path / "knee")
    lungs = np.zeros((1955, 1841), np.uint8)
    lungs[300:1400, 250:800] = 1
    lungs[400:1300, 1100:1600] = 1
    knee_mask = np.zeros((6, 40, 36), np.uint8)
    knee_mask[2:5, 8:20, 3:9] = 1
    np.save(tmp_path / "lungs.npy", lungs)
    np.save(tmp_path / "knee.npy", knee_mask)
    probs = {"Effusion": 0.25, "Mass": 0.61, "Pleural_Thickening": 0.05}
    job = {"out": str(tmp_path / "out"), "chest": [str(p) for p in chest], "knee": [str(p) for p in knee],
           "probs": probs, "lungs": str(tmp_path / "lungs.npy"), "knee_mask": str(tmp_path / "knee.npy"),
           "result": str(tmp_path / "done.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "write_all.py").write_text(WRITE_ALL)
    proc = subprocess.run([pydicom2_python, str(tmp_path / "write_all.py"), str(REPO), str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = json.loads((tmp_path / "done.json").read_text())
    assert done.pop("pydicom").startswith("2.") and done.pop("highdicom").startswith("0.22.")

    for key, path in done.items():
        errors, _ = dciodvfy(Path(path))
        assert errors == [], (key, errors)
        ds = pydicom.dcmread(path)
        if key != "knee":  # the radiographs' Latin-1 name keeps its character set (highdicom 0.22 sets none)
            assert str(ds.PatientName) == "Müller^Jörg" and ds.SpecificCharacterSet == "ISO_IR 100", key
        else:
            assert str(ds.PatientName) == COPIED[0]
        raw = Path(path).read_bytes()
        assert all(v.encode() in raw for v in COPIED[1:]) and not any(v.encode() in raw for v in NOT_COPIED), key
    for n, source in enumerate(chest):
        uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        (image,) = read_classification_sr(done[f"sr{n}"])
        assert image["sop_instance_uid"] == uid
        assert {c: v["probability"] for c, v in image["findings"].items()} == pytest.approx(probs)
        assert {c: v["call"] for c, v in image["findings"].items()} == {"Effusion": True, "Mass": True,
                                                                         "Pleural_Thickening": False}
        groups = hd.sr.srread(done[f"sr{n}"]).content.get_image_measurement_groups()  # highdicom 0.28 reads 0.22's
        assert len(groups) == 1 + len(probs)
        (refused,) = read_classification_sr(done[f"refused{n}"])
        assert refused["in_scope"] is False and refused["findings"] == {}
        assert refused["out_of_scope_reason"] == "ViewPosition is LL, expected PA or AP"
        sc = pydicom.dcmread(done[f"sc{n}"])
        assert sc.pixel_array.shape == (64, 48, 3) and int(sc.pixel_array[15, 10, 0]) == 255
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
        assert np.array_equal(read_segmentation_mask(done[f"seg{n}"], source), lungs)
        seg = hd.seg.segread(done[f"seg{n}"])
        assert np.array_equal(seg.get_pixels_by_source_instance([uid], segment_numbers=[1])[0, :, :, 0], lungs)
    assert np.array_equal(read_segmentation_mask(done["knee"], knee), knee_mask)
