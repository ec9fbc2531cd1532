"""MONAI Label 0.8.5 serving our bundles from a PACS: ``monailabel start_server --studies http://.../dicom-web``
against a real Orthanc holding a real chest radiograph (CR) and a sagittal MR series.

MONAI Label's DICOMweb datastore fetches a series with WADO-RS and converts it to NIfTI (SimpleITK) before the
bundle sees it; it needs dcmqi's ``itkimage2segimage`` at start (the MONAI Label environment installs the ``dcmqi``
wheel; otherwise MONAI Label downloads it from GitHub, which fails offline). What works: the chest classifier answers
with every finding's score, threshold and call, the knee segmenter with a DICOM SEG on the MR series (medplugin's SEG
writer, one frame per slice; a NIfTI mask on the series' grid when the request asks for ``result_extension``
``.nii.gz``), each equal to the bundle run on the NIfTI MONAI Label made. What differs: that NIfTI carries the stored
pixel values without the DICOM display handling our own DICOM reader applies (VOI LUT, photometric interpretation),
so the chest scores differ from the bundle's scores on the DICOM file itself (by up to about 0.01 on this radiograph
with a smoke model).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client")

from medplugin.io.dicomweb import DicomWeb  # noqa: E402
from medplugin.tools import monailabel  # noqa: E402
from medplugin.tools.review import free_port, running_server  # noqa: E402
from tests.bundles._runner import REPO, SMOKE, run_bundle  # noqa: E402
from tests.integration.test_monailabel import CHEST, KNEE_SEG, ML_ENV, _check_seg_answer, _expected  # noqa: E402
from tests.io._dicom_helpers import knee_series, sample_file, voxel_value, with_phi  # noqa: E402

pytestmark = pytest.mark.slow


def _infer(url: str, name: str, series: str, output: str, params: dict | None = None) -> bytes:
    """POST /infer/<name>; ``params`` go in the multipart form field MONAI Label reads them from."""
    body, headers = b"", {}
    if params is not None:
        boundary = "medplugin-params"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
                f"--{boundary}--\r\n").encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    req = urllib.request.Request(f"{url}/infer/{name}?image={series}&output={output}", data=body, method="POST",
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=600) as r:
        assert r.status == 200
        return r.read()


def test_monailabel_serves_the_bundles_from_an_orthanc_archive(orthanc, tmp_path):
    import nibabel as nib
    from pydicom.uid import generate_uid

    from medplugin.data.synthetic.chest_xray import make_chestxray14_demo
    from medplugin.data.synthetic.knee import make_knee_nifti_demo
    from medplugin.io.mrnet import _sagittal_permutation

    chest = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "src" / "chest" / "a.dcm")
    # the same radiograph as a lateral view in a series of its own: the input gate must flag it from its header
    lateral = with_phi(sample_file("RG1_UNCR.dcm"), tmp_path / "src" / "lateral" / "b.dcm", ViewPosition="LL",
                       SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    knee = knee_series(tmp_path / "src" / "knee", n=16)
    DicomWeb(orthanc.dicomweb_url).store([chest, lateral, *knee])
    series = {CHEST: str(pydicom.dcmread(chest, stop_before_pixels=True).SeriesInstanceUID),
              KNEE_SEG: str(pydicom.dcmread(knee[0], stop_before_pixels=True).SeriesInstanceUID)}
    lateral_series = str(pydicom.dcmread(lateral, stop_before_pixels=True).SeriesInstanceUID)

    m = tmp_path / "models"  # smoke-trained models
    cxr = make_chestxray14_demo(tmp_path / "cxr_demo" / "nih", n_patients=10, size=64, seed=0)["root"]
    run_bundle(CHEST, "train.yaml", SMOKE, dataset_dir=cxr, ckpt_dir=m / "chest", output_dir=tmp_path / "train_chest",
               val_fraction=0.3)
    knees = make_knee_nifti_demo(tmp_path / "knee_demo", n=6, shape=(16, 32, 32), seed=1)["root"]
    run_bundle(KNEE_SEG, "train.yaml", SMOKE, dataset_dir=knees, ckpt_dir=m / "knee",
               output_dir=tmp_path / "train_knee", patch_slices=16)

    py = monailabel.ensure_env(ML_ENV)
    app = tmp_path / "app"
    cli = [sys.executable, "-m", "medplugin.cli", "monailabel-app", "--out", str(app), "--bundles",
           f"{CHEST},{KNEE_SEG}", "--set", "num_workers=0", "--set", "batch_size=4", "--set", "cam_images=2",
           "--set", "gate=refuse",
           "--studies", orthanc.dicomweb_url, "--env", str(ML_ENV), "--bundles-dir", str(REPO / "bundles"),
           "--weights", f"{CHEST}={m / 'chest' / 'model.pt'}", "--weights", f"{KNEE_SEG}={m / 'knee' / 'model.pt'}"]
    proc = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"--studies {orthanc.dicomweb_url}" in proc.stdout.strip().splitlines()[-1]

    port, cache = free_port(), tmp_path / "dicomweb_cache"
    env = monailabel.server_environment(ML_ENV)
    env.update(OMP_NUM_THREADS="1", MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"),
               MONAI_LABEL_DICOMWEB_CACHE_PATH=str(cache))
    cmd = monailabel.server_command(app, orthanc.dicomweb_url, [CHEST, KNEE_SEG], port=port,
                                    executable=str(py.parent / "monailabel"))
    url = f"http://127.0.0.1:{port}"
    with running_server(cmd, f"{url}/info/", tmp_path / "server.log", cwd=tmp_path, env=env, timeout=300):
        answer = json.loads(_infer(url, CHEST, series[CHEST], "json"))
        lateral_answer = json.loads(_infer(url, CHEST, lateral_series, "json"))
        seg_bytes = _infer(url, KNEE_SEG, series[KNEE_SEG], "image")
        # MONAI Label's own result_extension parameter still gives its NIfTI answer
        mask_bytes = _infer(url, KNEE_SEG, series[KNEE_SEG], "image", {"result_extension": ".nii.gz"})

    # what MONAI Label gave the bundles: each series fetched from Orthanc and converted to NIfTI in its cache
    converted = {s: next(cache.rglob(f"{s}.nii.gz")) for s in series.values()}

    # the chest classifier: every finding's score, its operating point and the call made there; the scores are the
    # bundle's on that NIfTI, and near its scores on the DICOM file (see the module's note)
    pred = answer["prediction"]
    assert len(pred) == 14 and all(p["call"] == int(p["score"] >= p["threshold"]) for p in pred), pred
    scores = np.array([p["score"] for p in pred])
    np.testing.assert_allclose(scores, _expected(app, CHEST, converted[series[CHEST]], True).numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, _expected(app, CHEST, chest, True).numpy(), atol=0.05)
    # the input gate judged each radiograph as stored (its DICOM header), not MONAI Label's NIfTI of it: the PA view
    # is in scope, the lateral one flagged with the tag and, under the app's gate: refuse, not scored (gate: warn,
    # where it would be, is tested with the folder datastore in test_monailabel.py)
    assert answer["in_scope"] is True and answer["out_of_scope_reason"] == "" and not answer["refused"], answer
    assert lateral_answer["in_scope"] is False and lateral_answer["refused"] is True, lateral_answer
    assert lateral_answer["prediction"] == [], lateral_answer
    assert lateral_answer["out_of_scope_reason"].startswith("ViewPosition is LL, expected "), lateral_answer

    # the knee segmenter (issue 16): a binary multi-frame DICOM SEG on the MR series, one frame per slice, each
    # referencing its slice; its frames are the bundle's prediction on MONAI Label's NIfTI, put onto the series'
    # slices through the voxel values knee_series gives (each names its series voxel: no geometry involved)
    exam = nib.load(converted[series[KNEE_SEG]])
    perm = _sagittal_permutation(exam.affine)
    predicted = _expected(app, KNEE_SEG, converted[series[KNEE_SEG]]).argmax(0).numpy()  # the loader's layout
    on_nifti = predicted.transpose(np.argsort(perm))  # back to the NIfTI's voxel order
    values = np.asarray(exam.dataobj).astype(np.int64)
    assert sorted(values.ravel().tolist()) == list(range(16 * 40 * 36))  # every series voxel once
    k, rest = np.divmod(values, 40 * 36)
    rows, cols = np.divmod(rest, 36)
    on_series = np.zeros((16, 40, 36), np.uint8)
    on_series[k, rows, cols] = on_nifti
    assert voxel_value(3, 5, 7) == 3 * 40 * 36 + 5 * 36 + 7  # the layout decoded above
    frames = _check_seg_answer(seg_bytes, sorted(knee), tmp_path / "answer_seg.dcm", ["ACL region"], KNEE_SEG)
    assert frames.shape == (16, 40, 36) and set(np.unique(frames)) <= {0, 1}
    assert (frames == on_series).mean() >= 0.99
    seg = pydicom.dcmread(tmp_path / "answer_seg.dcm", stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == pydicom.dcmread(knee[0], stop_before_pixels=True).FrameOfReferenceUID

    # asked for a NIfTI: a uint8 NIfTI mask on the converted series' grid, the bundle's prediction there
    (tmp_path / "answer.nii.gz").write_bytes(mask_bytes)
    mask = nib.load(tmp_path / "answer.nii.gz")
    assert mask.shape == exam.shape and sorted(mask.shape) == [16, 36, 40]
    assert np.allclose(mask.affine, exam.affine, atol=1e-4) and mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    assert (data.transpose(perm) == predicted).mean() >= 0.99
    assert io.BytesIO(mask_bytes).read(2) == b"\x1f\x8b"  # gzip: a .nii.gz as MONAI Label writes it
