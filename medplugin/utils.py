"""Small shared utilities: atomic writes, run folders, safe file names."""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["as_flag", "atomic_write", "write_json", "new_run_dir", "run_dir", "check_output_dir", "safe_name",
           "summary_writer", "guard_run", "check_trained_model", "default_workers", "drop_last_batch_of_one"]


def as_flag(value: Any, name: str = "value") -> bool:
    """A yes/no hyperparameter as a bool, whether it came from YAML (``false``) or the command line (``"false"``).

    ``python -m monai.bundle run --save_cams false`` passes the string ``"false"``, which ``bool()`` takes as true.

    Raises:
        ValueError: a string that is neither yes (``true``, ``yes``, ``1``, ``on``) nor no (``false``, ``no``, ``0``,
            ``off``, ``none``, ``null``, empty).
    """
    if value is None or isinstance(value, (bool, int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", "none", "null", ""):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def _umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], Any]) -> Path:
    """Write a file atomically: ``writer(tmp_path)`` fills a temporary file that is then renamed to ``path``.

    A crash while writing leaves any earlier ``path`` intact (never a truncated file in its place). The file gets
    the permissions of any file the user creates (``0666`` less the umask: ``0644`` under umask 022), not the
    ``0600`` of a temporary file.

    Args:
        path: the destination file.
        writer: called with the temporary file's path; it must write the whole content there.

    Returns:
        the destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        if os.path.exists(tmp):
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")

    return atomic_write(path, _w)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write a {type(o).__name__} to JSON: {o!r}")


def new_run_dir(base: str | os.PathLike, prefix: str) -> str:
    """Return a new, not yet existing folder ``base/<prefix>_<YYYYmmdd_HHMMSS>[_N]`` (it is not created).

    Used as the default ``output_dir`` of a bundle run, so a run never writes over an earlier one.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    candidate = Path(base) / f"{prefix}_{stamp}"
    n = 1
    while candidate.exists():
        candidate = Path(base) / f"{prefix}_{stamp}_{n}"
        n += 1
    return str(candidate)


def run_dir(base: str | os.PathLike, prefix: str, resume: Any = False, marker: str | None = None) -> str:
    """The ``output_dir`` of a bundle run: a new run folder, or the one to resume.

    Args:
        base: the folder holding the bundle's runs (``<bundle_root>/runs``).
        prefix: the run kind (``train``).
        resume: false/``None`` gives :func:`new_run_dir`; ``True`` (or ``"true"``) the newest ``base/<prefix>_*``
            folder that holds a training checkpoint; any other string is taken as the run folder to resume.
        marker: with ``resume`` true, the newest ``base/<prefix>_*`` folder holding this file instead (an
            inference run's ``predictions.csv``).

    Raises:
        BadInputError: resuming was asked for but there is no such run folder.
    """
    from medplugin.errors import BadInputError
    from medplugin.handlers.resume import latest_checkpoint, resume_requested

    if not resume_requested(resume):
        return new_run_dir(base, prefix)
    if marker and (isinstance(resume, bool) or str(resume).strip().lower() in ("true", "yes", "1")):
        runs = [p for p in Path(base).glob(f"{prefix}_*") if (p / marker).is_file()]
        if not runs:
            raise BadInputError(base, f"--resume true: no earlier '{prefix}_*' run with a {marker} here")
        return str(max(runs, key=lambda p: (p / marker).stat().st_mtime))
    if isinstance(resume, bool) or str(resume).strip().lower() in ("true", "yes", "1"):
        runs = [p for p in Path(base).glob(f"{prefix}_*") if p.is_dir() and latest_checkpoint(p) is not None]
        if not runs:
            raise BadInputError(base, f"--resume true: no earlier '{prefix}_*' run with a checkpoint here")
        return str(max(runs, key=lambda p: latest_checkpoint(p).stat().st_mtime))
    folder = Path(str(resume))
    if not folder.is_dir():
        raise BadInputError(folder, "--resume: no such run folder")
    return str(folder)


def check_output_dir(output_dir: str | os.PathLike, inputs: Any = (), resume: Any = False) -> str:
    """Refuse an ``output_dir`` that would overwrite something the user had; call it before a run writes anything.

    A run never writes into its input folders, nor into a folder holding an earlier run's outputs (unless it
    resumes that training run).

    Args:
        output_dir: the run's output folder.
        inputs: input folders or files (``dataset_dir``, ...); ``None`` entries are ignored.
        resume: the run resumes the training in ``output_dir`` (see ``medplugin.handlers.TrainingCheckpoint``).

    Returns:
        ``output_dir``.

    Raises:
        BadInputError: ``output_dir`` is inside an input folder, or already holds files and the run does not resume.
    """
    from medplugin.errors import BadInputError
    from medplugin.handlers.resume import resume_requested

    out = Path(output_dir).expanduser().resolve()
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs or ())
    for item in items:
        if item is None or str(item) == "":
            continue
        src = Path(item).expanduser().resolve()
        if out == src or src in out.parents:
            raise BadInputError(output_dir, f"is inside the input folder {src}: a run never writes into its input; "
                                            "choose another --output_dir")
    if out.is_dir() and not resume_requested(resume):
        # a failed run leaves only its log (run.log): a new run may use the folder (and appends to the log)
        entries = sorted(p.name for p in out.iterdir() if not _RUN_LOG.match(p.name))
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise BadInputError(output_dir, f"already holds the outputs of an earlier run ({shown}); choose a new "
                                            "--output_dir (or --resume true to continue a crashed training there)")
    elif out.exists() and not out.is_dir():
        raise BadInputError(output_dir, "is a file, not a folder")
    from medplugin import run_guard

    run_guard.log_to(output_dir)  # the folder is the run's own: its log (and a failure's traceback) goes there
    return str(output_dir)


_RUN_LOG = re.compile(r"^run(_rank\d+)?\.log$")


def guard_run() -> None:
    """The first item of every bundle config's ``initialize``: see :mod:`medplugin.run_guard` (unknown overrides
    stop the run; a failure ends with one line naming the problem, the traceback goes to ``output_dir/run.log``;
    Ctrl-C says how to resume)."""
    from medplugin import run_guard

    run_guard.start()


def check_trained_model(ckpt_dir: str | os.PathLike, expected: dict) -> bool:
    """The ``_requires_`` of ``network_def`` in inference configs: weights trained with other settings are refused
    with the overrides that fix it, also by MONAI's ``ckpt_export``/``onnx_export`` (see
    :func:`medplugin.export_check.check_trained_model`)."""
    from medplugin import export_check

    return export_check.check_trained_model(ckpt_dir, expected)


def default_workers(most: int = 4) -> int:
    """DataLoader worker processes: ``most``, but never more than the CPU cores this process may use (more only
    make PyTorch warn and the processes compete)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(int(most), cores))


def drop_last_batch_of_one(dataset: Any, batch_size: int) -> bool:
    """A training DataLoader's ``drop_last``: True only when the epoch's last batch would hold one sample.

    A batch of one stops batch norm in training ("Expected more than 1 value per channel", e.g. DenseNet-121's
    last 1x1 map); any other last batch is kept. Under ``torch.distributed`` each process counts its share
    (``DistributedSampler`` pads every rank to the same length). A data set smaller than a batch is left alone.

    Args:
        dataset: the training data set (anything with ``len``).
        batch_size: samples per batch.
    """
    import math

    import torch.distributed as dist

    n = len(dataset)
    if dist.is_available() and dist.is_initialized():
        n = math.ceil(n / dist.get_world_size())
    return n > int(batch_size) and n % int(batch_size) == 1


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, max_len: int = 150) -> str:
    """Turn ``name`` (a relative input path, a DICOM tag value) into one safe file-name component.

    Path separators, ``..``, control and other unusual characters become ``_``; the result never starts
    with a dot and is never empty.
    """
    text = str(name).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    cleaned = "__".join(_UNSAFE.sub("_", p) for p in parts)
    cleaned = cleaned.lstrip(".") or "unnamed"
    return cleaned[:max_len]


class _NullWriter:
    """Stands in for a ``SummaryWriter`` on ranks other than 0: every method does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str | os.PathLike):
    """A TensorBoard ``SummaryWriter`` on rank 0 (or outside distributed runs); a no-op writer elsewhere,
    so handlers can be listed once and only rank 0 writes event files."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return _NullWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def process_device():
    """This process's device under ``torchrun``: ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU.

    The local rank, not the global one: on the second of two 8-GPU nodes, global rank 9 owns that node's GPU 1
    (``cuda:9`` does not exist there). Every ``multi_gpu_*.yaml`` sets ``device`` with it.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0) or 0)}")
