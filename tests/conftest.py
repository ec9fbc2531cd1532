"""Shared fixtures (tiny synthetic datasets laid out like the real releases) and the test tiers.

Tiers: ``make test-fast`` runs ``-m "not slow and not integration"``, the in-process unit tests. A test that starts
another process (a bundle run, the ``medplugin`` command, a server, a virtual environment) or trains a bundle's
network is marked ``integration``: every test under tests/bundles and tests/integration, and every test using the
``oct_smoke_run`` fixture, gets the mark here; elsewhere it is written on the test. An unmarked test that starts a
Python process fails with a message saying so (:func:`_unit_tests_start_no_python`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medplugin import resources

REPO = Path(__file__).resolve().parent.parent

# threads: every process the tests start (bundle runs, the medplugin command, servers) inherits OMP_NUM_THREADS
# (at most 2, as CI's machine has) and OMP_WAIT_POLICY=PASSIVE: an OpenMP thread that waits sleeps instead of
# spinning. Under pytest-xdist two workers each running a 2-thread training on 2 cores otherwise take twice as long
# as two 1-thread trainings (two ResNet-18 trainings at once: 19 s against 9 s spinning, 8.7 s passive), while a
# training alone still gets both cores (4.7 s passive). Values the user set are kept. The test processes' own
# in-process work gets their share of the cores.
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, os.cpu_count() or 1))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1)))))

# the tests exercise this checkout's bundles and overlays: every `medplugin` command they start (and every
# in-process call) finds them through these variables, never an installed copy or another checkout's
os.environ[resources.BUNDLES_ENV] = str(REPO / "bundles")
os.environ[resources.OVERLAYS_ENV] = str(REPO / "configs")



@pytest.fixture(scope="session", autouse=True)
def _temporary_files_stay_in_the_test_session(tmp_path_factory):
    """Every process the tests start (torchrun's torchelastic_* folders, a failed run's medplugin-run-*.log, MONAI
    Label's logging configs) writes its temporary files under this session's pytest folder, which pytest prunes, not
    loose in /tmp."""
    import tempfile

    folder = tmp_path_factory.mktemp("tmp")
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    yield folder
    if saved is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved
    tempfile.tempdir = None


INTEGRATION_DIRS = (REPO / "tests" / "bundles", REPO / "tests" / "integration")
INTEGRATION_FIXTURES = {"oct_smoke_run"}  # a bundle training in a subprocess


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if any(path.is_relative_to(d) for d in INTEGRATION_DIRS) or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
    # the longest files first (their measured times, tests/durations.json; a file not there counts as the median):
    # under pytest-xdist (make test-integration, which keeps this order with --no-loadscope-reorder) the processes
    # take the long files first and the short ones fill in, so they end together rather than one running a demo job
    # alone at the end. The order of the tests within a file is kept.
    from tests import durations

    seconds = durations.read()
    default = sorted(seconds.values())[len(seconds) // 2] if seconds else 0.0

    def file_time(item) -> float:
        return seconds.get(Path(str(item.fspath)).resolve().relative_to(REPO).as_posix(), default)

    items.sort(key=lambda item: -file_time(item))


def _starts_python(args) -> bool:
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    if not argv:
        return False
    first = os.path.basename(os.fsdecode(argv[0]).split()[0]) if argv[0] else ""
    return (os.fsdecode(argv[0]) == sys.executable or first.startswith("python")
            or first in {"medplugin", "monailabel", "torchrun", "tensorboard", "pip"})


@pytest.fixture(autouse=True)
def _unit_tests_start_no_python(request, monkeypatch):
    """Keep the unit tier a unit tier: a test without the ``integration`` or ``slow`` mark that starts a Python
    process (a bundle, the ``medplugin`` command, a server) fails and is told to take the mark."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("slow"):
        return
    original = subprocess.Popen.__init__

    def guarded(self, args, *a, **k):
        if _starts_python(args):
            pytest.fail(f"{request.node.nodeid} starts a Python process ({args!r}): mark it "
                        "@pytest.mark.integration (make test-fast runs unit tests only)", pytrace=False)
        return original(self, args, *a, **k)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(scope="session")
def oct_demo(tmp_path_factory) -> Path:
    """A tiny OCT2017-layout dataset: 3 patients per class in train, 1 in test, 2 images each, 64x80."""
    from medplugin.data.synthetic.oct import make_oct2017_demo

    out = tmp_path_factory.mktemp("oct_demo")
    info = make_oct2017_demo(out, train_patients=3, test_patients=1, images_per_patient=2, size=(64, 80), seed=1)
    return Path(info["root"])


@pytest.fixture(scope="session")
def oct_smoke_run(oct_demo, tmp_path_factory) -> tuple[Path, Path]:
    """One smoke training run of the OCT bundle shared by the integration tests: (ckpt_dir, output_dir)."""
    from tests.bundles._runner import SMOKE, run_bundle

    tmp = tmp_path_factory.mktemp("oct_smoke_run")
    run_bundle("retina_oct_classification", "train.yaml", SMOKE, dataset_dir=oct_demo, ckpt_dir=tmp / "models",
               output_dir=tmp / "train")
    return tmp / "models", tmp / "train"
