"""Checks every bundle passes, run the way users run them (``python -m monai.bundle ...``, ``torchrun``).

``tests/bundles/test_contract.py`` runs the checks every bundle shares (metadata schema, network in/out,
workflow properties of train, inference and the evaluate overlay) over all bundles; each
``tests/bundles/test_<bundle>.py`` calls the others (TorchScript/ONNX export, multi-process training) with its
own data and network, so the bundle contract is checked the same way everywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tests.bundles._runner import (
    EVALUATE,
    MULTI_GPU_EVALUATE,
    REPO,
    SMOKE,
    monai_bundle,
    run_bundle,
    torchrun_bundle,
)

SCHEMA = REPO / "schemas" / "meta_schema_20240725.json"


def verify_metadata(bundle: Path) -> dict:
    """``verify_metadata`` against the shipped schema (offline); returns the metadata."""
    meta_file = bundle / "configs" / "metadata.json"
    proc = monai_bundle("verify_metadata", "--meta_file", str(meta_file), "--filepath", str(SCHEMA))
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    return meta


def verify_net_in_out(bundle: Path) -> None:
    """``verify_net_in_out``: the inference config's network takes and gives the shapes metadata.json says."""
    proc = monai_bundle("verify_net_in_out", "network_def", "--meta_file", str(bundle / "configs" / "metadata.json"),
                        "--config_file", str(bundle / "configs" / "inference.yaml"), "--bundle_root", str(bundle))
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def check_workflow_properties(bundle: Path, config: str | Sequence[str], workflow: str, dataset_dir: Path,
                              output_dir: Path) -> None:
    """MONAI's ``ConfigWorkflow(...).check_properties()`` finds every required property of ``workflow`` in
    ``config`` (one file, or several merged in order, e.g. train.yaml then evaluate.yaml)."""
    from monai.bundle import ConfigWorkflow

    c = bundle / "configs"
    files = [str(c / config)] if isinstance(config, str) else [str(c / f) for f in config]
    # the classification bundles start training from ImageNet weights by default, which these offline machines
    # do not have: the properties do not depend on the starting weights (pretrained: none, as the smoke overlay)
    offline = {"pretrained": "none"} if workflow == "train" else {}
    wf = ConfigWorkflow(config_file=files, meta_file=str(c / "metadata.json"),
                        logging_file=str(c / "logging.conf"), workflow_type=workflow, bundle_root=str(bundle),
                        dataset_dir=str(dataset_dir), output_dir=str(output_dir), **offline)
    wf.initialize()
    assert wf.check_properties() == []


# as in the README's export command: use_trace passes converter_kwargs on to torch.onnx.export
ONNX_EXPORT_FLAGS = ("--use_trace", "True", "--converter_kwargs", "{'external_data': False}")


def check_exports(bundle: Path, model_pt: Path, net: torch.nn.Module, x: torch.Tensor, out_dir: Path,
                  *overrides: str) -> np.ndarray:
    """``ckpt_export`` (TorchScript) and ``onnx_export`` of ``network_def`` give ``net``'s outputs within 1e-4.

    ``net`` holds ``model_pt``'s weights; ``x`` is a batch of two inputs (ONNX is exported for batch 1 and run on
    each); ``overrides`` are extra config overrides (``--image_size``, ...). Returns PyTorch's outputs.
    """
    import onnxruntime as ort

    net.eval()
    with torch.no_grad():
        expected = net(x).numpy()
    common = ["--meta_file", str(bundle / "configs" / "metadata.json"), "--config_file",
              str(bundle / "configs" / "inference.yaml"), "--bundle_root", str(bundle), "--ckpt_file", str(model_pt),
              *overrides]
    ts = out_dir / "model.ts"
    monai_bundle("ckpt_export", "network_def", "--filepath", str(ts), *common)
    np.testing.assert_allclose(torch.jit.load(str(ts))(x).detach().numpy(), expected, atol=1e-4)

    # the README's command: MONAI exports through a temporary file, and torch's exporter writes the weights
    # beside it (model-size files MONAI never deletes) unless external_data is off. Nothing may stay behind.
    onnx_path, tmpdir = out_dir / "model.onnx", out_dir / "tmp"
    tmpdir.mkdir()
    monai_bundle("onnx_export", "network_def", "--filepath", str(onnx_path), "--input_shape",
                 json.dumps([1, *x.shape[1:]]), *ONNX_EXPORT_FLAGS, *common,
                 env={"TMPDIR": str(tmpdir)})
    left = sorted(p.name for p in tmpdir.iterdir())
    assert left == [], f"onnx_export left {left} in its temp folder"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = np.concatenate([sess.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    return expected


def check_torchrun(bundle: Path, dataset_dir: Path, tmp_path: Path, evaluate: bool = True, **overrides) -> None:
    """``torchrun --nproc_per_node=2`` with the bundle's multi_gpu_train.yaml (gloo on the CPU, smoke overlay):
    the run ends well and only rank 0 writes the checkpoint and TensorBoard events. With ``evaluate``, the model it
    trained is then evaluated in one process and in two (:func:`check_torchrun_evaluation`)."""
    ckpt, out = tmp_path / "models", tmp_path / "ddp"
    files = json.dumps([str(bundle / "configs" / "train.yaml"), str(bundle / "configs" / "multi_gpu_train.yaml"),
                        str(SMOKE)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--bundle_root", str(bundle), "--config_file", files, "--dataset_dir", str(dataset_dir), "--ckpt_dir",
           str(ckpt), "--output_dir", str(out)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (ckpt / "model.pt").is_file()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    if evaluate:
        check_torchrun_evaluation(bundle, dataset_dir, ckpt, tmp_path, **overrides)


def check_torchrun_evaluation(bundle: Path, dataset_dir: Path, ckpt: Path, tmp_path: Path, **overrides) -> None:
    """Evaluation of the model in ``ckpt`` in one process, then under ``torchrun --nproc_per_node=2`` with
    multi_gpu_evaluate.yaml (gloo): the same ``metrics.json`` (every figure, intervals included), the same files,
    and a predictions CSV with every test input exactly once, as the one-process run writes it."""
    import csv

    one, two = tmp_path / "evaluate_1", tmp_path / "evaluate_2"
    common = {"dataset_dir": dataset_dir, "ckpt_dir": ckpt, **overrides}
    run_bundle(bundle.name, EVALUATE, SMOKE, output_dir=one, **common)
    torchrun_bundle(bundle.name, MULTI_GPU_EVALUATE, SMOKE, output_dir=two, **common)
    # float32 forward passes over other batch compositions may differ in the last bit (1e-8 in an ECE seen here)
    same_report(json.loads((two / "metrics.json").read_text()), json.loads((one / "metrics.json").read_text()),
                rel_tol=1e-6)

    def written(run: Path) -> list[str]:  # TensorBoard's event files are named by time and process id
        return [re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", f) for f in files_under(run)]

    assert written(two) == written(one)
    test = json.loads((one / "datalist.json").read_text())["test"]
    assert len(test) >= 2  # both processes had a share
    for table in sorted(p.relative_to(one) for p in one.glob("predictions*.csv")):
        rows = [list(csv.reader((run / table).open())) for run in (one, two)]
        assert len(rows[0]) - 1 == len(test) and len({r[0] for r in rows[0][1:]}) == len(test)  # each input once
        assert len(rows[1]) == len(rows[0]), table
        for r2, r1 in zip(rows[1], rows[0]):  # the same rows in the same (input) order; probabilities written with
            assert len(r2) == len(r1) and all(_same_cell(x, y) for x, y in zip(r2, r1)), (r2, r1)  # 6 decimals


def _same_cell(a: str, b: str) -> bool:
    """Two CSV cells agree: equal text, or numbers 1e-6 apart (a float32 forward pass over another batch
    composition can move the 6th decimal)."""
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), abs_tol=2e-6)
    except ValueError:
        return False


def same_report(a, b, path: str = "", rel_tol: float = 1e-6) -> None:
    """Two parsed ``metrics.json`` reports agree: the same keys, lists and strings, numbers within ``rel_tol``
    (NaN where the other has NaN). Raises ``AssertionError`` naming the first difference. The default tolerance is
    float32's: figures computed in float32 (MONAI's calibration error) over predictions gathered from two processes
    are summed in another order (the OCT smoke model's ECE differed by 2e-7 relative, 0.31823078 vs 0.31823072)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            same_report(a[k], b[k], f"{path}/{k}", rel_tol)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            same_report(x, y, f"{path}[{i}]", rel_tol)
    elif isinstance(a, float) and not isinstance(b, (bool, str, type(None))):
        assert (a != a and b != b) or math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def files_under(folder: Path) -> list[str]:
    """The files below ``folder``, as sorted relative paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---- patient data: DICOM files whose patient tags carry distinctive values, and a search for them -------------

PHI = {"PatientName": "Qzyxwvut^Jovankamil", "PatientID": "PHI7319842", "PatientBirthDate": "19010203",
       "OtherPatientIDs": "ALTID55731", "InstitutionName": "Quuxbridge Infirmary"}
PHI_NEEDLES = ["qzyxwvut", "jovankamil", "phi7319842", "19010203", "1901-02-03", "altid55731", "quuxbridge"]


def with_phi(source: str | Path, dest: Path) -> Path:
    """Copy the DICOM file ``source`` to ``dest`` with :data:`PHI` in its patient tags."""
    import pydicom

    ds = pydicom.dcmread(str(source))
    for k, v in PHI.items():
        setattr(ds, k, v)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def phi_leaks(folder: Path, log: str = "", needles=PHI_NEEDLES, dicom_results: str | None = "dicom") -> list[str]:
    """Where a :data:`PHI` value appears: in a file or folder name, a file's bytes, or the run's ``log``.

    The DICOM result objects (``.dcm`` files in a ``dicom_results`` folder of any run under ``folder``) must carry
    the source's patient module to file with its study (issue 16), so only their names are searched; every other
    file's bytes are.
    """
    found = []
    for p in folder.rglob("*"):
        low_name = str(p.relative_to(folder)).lower()
        found += [f"name {p}: {n}" for n in needles if n in low_name]
        if dicom_results and p.suffix == ".dcm" and p.parent.name == dicom_results:
            continue
        if p.is_file():
            data = p.read_bytes().lower()
            found += [f"content {p}: {n}" for n in needles if n.encode() in data]
    found += [f"log: {n}" for n in needles if n in log.lower()]
    return found


def write_dicom_series(folder: Path, n: int = 6, rows: int = 40, cols: int = 36, patient: dict | None = None) -> Path:
    """A sagittal MR series of a synthetic knee written with pydicom (one file per slice, shuffled file order).

    ``patient`` sets patient tags (e.g. :data:`PHI`) on every slice; by default only ``PatientID`` is set.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from medplugin.data.synthetic.knee import synthetic_knee

    folder.mkdir(parents=True)
    vol = synthetic_knee((n, rows, cols), condition=3, rng=1)["volume"]
    series, study = generate_uid(), generate_uid()
    for file_no, k in enumerate(np.random.default_rng(0).permutation(n)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "MR", "knee01", 1, int(k) + 1
        for key, value in (patient or {}).items():
            setattr(ds, key, value)
        ds.ImageOrientationPatient = [0, -1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float(k) * 3.0, 10.0, 40.0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 3.0
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (vol[k] * 1000).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{file_no:04d}.dcm", enforce_file_format=True)
    return folder
