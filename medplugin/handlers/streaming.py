"""Resumable batch inference: result tables streamed to disk as they are made, and a run that continues a killed one.

A hospital archive is scored in one long run; a crash at 90% must not start again from zero, and memory must not
grow with the number of files. :class:`StreamingPredictions` appends each batch's rows to the writer's table
(``predictions.csv`` of a classifier, ``lung_boxes.csv`` of the lung segmenter, ...; it keeps none), after every
other handler of that iteration has finished (so a row on disk means the input's other outputs, CAM overlay or mask,
are on disk too); :func:`pending_inputs` drops the inputs a ``--resume true`` run finds complete there.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ignite.engine import Engine, Events

from medplugin.errors import BadInputError
from medplugin.handlers.resume import resume_requested

__all__ = ["InferenceProgress", "StreamingPredictions", "completed_inputs", "pending_inputs"]

logger = logging.getLogger(__name__)

LINE_END = "\r\n"  # the csv module's default, as PredictionWriter writes


def _complete_lines(path: Path) -> list[list[str]]:
    """The rows of ``path`` that were written whole; a torn last line (a kill during a write) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(LINE_END.encode()) + len(LINE_END) if LINE_END.encode() in data else 0
    if end != len(data):
        logger.warning("%s: dropping %d bytes of a row cut off by the previous run's end", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return list(csv.reader(io.StringIO(data[:end].decode("utf-8"), newline="")))


def completed_inputs(path: str | os.PathLike) -> set[str]:
    """The ``file`` column of every complete row of a predictions CSV (error rows included: a bad file stays bad).

    A torn last line is removed from the file, so appending after it gives well-formed rows.
    """
    rows = _complete_lines(Path(path))
    return {r[0] for r in rows[1:] if r}


def pending_inputs(entries: Sequence[dict], output_dir: str | os.PathLike, resume=False,
                   filename: str = "predictions.csv", path_key: str = "path") -> list[dict]:
    """The inference entries still to do: all of them, or with ``resume`` those without a complete row in
    ``output_dir/filename``. Order is kept, so an appended run still lists the files in input order. The part files
    of a killed multi-process run (``<name>.rank<N>.csv``) are first joined into the file, in input order (rows
    appended after them may then follow rows of later inputs). The temporary files of writes a kill interrupted
    (:func:`medplugin.utils.atomic_write`) are removed.

    Args:
        entries: datalist entries (``medplugin.data.index_images``), each with ``path_key``.
        output_dir: the run folder being resumed.
        resume: the bundle's ``resume`` hyperparameter (``true``/``false``, a string from the command line too).
        filename: the predictions file.
        path_key: entry key written in the ``file`` column.
    """
    if not resume_requested(resume):
        return list(entries)
    path = Path(output_dir) / filename
    for tmp in path.parent.rglob(".*.tmp"):  # what a kill in medplugin.utils.atomic_write left: never a result
        if tmp.is_file():
            tmp.unlink()
    if _parts(path):  # a killed multi-process run: join its parts
        _join_parts(path, {str(e.get(path_key, "")): i for i, e in enumerate(entries)})
    done = completed_inputs(path)
    todo = [e for e in entries if str(e[path_key]) not in done]
    logger.info("resuming %s: %d of %d input(s) already done, %d to go", output_dir, len(entries) - len(todo),
                len(entries), len(todo))
    return todo


class StreamingPredictions:
    """Stream a result writer's rows to its CSV batch by batch instead of writing them all at the end.

    Each batch's rows are appended in one write, flushed and synced to disk after every other handler of the
    iteration (CAM overlays, masks included) has run, so after a kill at any moment every row in the file is whole
    and its outputs exist; nothing is kept in memory. Appends to an existing file (a resumed run) after checking its
    columns are this run's. Under several processes (``torchrun``) each rank streams to ``<name>.rank<N>.csv`` and
    at the end rank 0 joins them into one file in input order (resuming then needs one process).

    A writer may also give ``side_tables``: further tables with rows per input (``file`` first; e.g. the DICOM
    objects of :class:`medplugin.handlers.DicomSegmentationWriter`), streamed the same way just before the main
    table, and joined in its order. A resumed run drops their rows of inputs without a main row (those run again).
    When the main table is complete (after the join), rank 0 calls the writer's ``write_summary()``, if it has one.

    Args:
        writer: a :class:`medplugin.handlers.PredictionWriter` (or subclass), a
            :class:`medplugin.handlers.SegmentationWriter`, or any writer whose ``collect`` fills ``rows`` (lists,
            the input's path first) and with ``path`` and ``header()``. Do not attach it too.
    """

    def __init__(self, writer) -> None:
        self.writer = writer
        self.path = Path(writer.path)
        self.written = 0

    def header(self) -> list[str]:
        """The CSV's columns: as the writer writes them."""
        return self.writer.header()

    def _tables(self) -> list:
        """The side tables, then the main one: the order their rows go to disk."""
        return [*getattr(self.writer, "side_tables", ()), self.writer]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.writer.collect)
        engine.add_event_handler(Events.COMPLETED, self._done)

    def _start(self, engine: Engine) -> None:
        if callable(getattr(self.writer, "reset", None)):
            self.writer.reset(engine)
        for t in self._tables():
            t.rows.clear()
        self.written = 0
        self.rank, self.world = _rank_world()
        rows = _complete_lines(self.path)
        if rows and rows[0] != self.header():
            raise BadInputError(self.path, f"its columns {rows[0]} are not this run's {self.header()}: resume with "
                                           "the same model and class names, or choose a new --output_dir")
        if self.world > 1:
            if len(rows) > 1:
                raise BadInputError(self.path, "resuming under several processes is not supported: resume the run "
                                               "in one process (python -m monai.bundle run ... --resume true)")
            self.out = {Path(t.path): _part(Path(t.path), self.rank) for t in self._tables()}
            for part in self.out.values():
                part.unlink(missing_ok=True)
        else:
            self.out = {Path(t.path): Path(t.path) for t in self._tables()}
            done = {r[0]: i for i, r in enumerate(rows[1:]) if r}
            for t in self._tables()[:-1]:  # rows of inputs without a main row (a kill in between) are dropped
                _join_parts(Path(t.path), done, keep_unknown=False)
        self.out[self.path].parent.mkdir(parents=True, exist_ok=True)
        _append(self.out[self.path], [], self.header())  # the header, if the file has none yet
        if not engine.has_event_handler(self.flush, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.flush)  # registered last: runs after the rest

    def flush(self, engine: Engine | None = None) -> None:
        """Append the rows collected since the last flush: the side tables' first, the main table's last."""
        for t in self._tables():
            if t.rows:
                _append(self.out[Path(t.path)], t.rows, t.header())
                if t is self.writer:
                    self.written += len(t.rows)
                t.rows.clear()

    def _done(self, engine: Engine) -> None:
        self.flush()
        logger.info("appended %d result(s) to %s", self.written, self.out[self.path])
        if self.world > 1:
            self._merge(engine)
        elif callable(getattr(self.writer, "write_summary", None)):
            self.writer.write_summary()

    def _merge(self, engine: Engine) -> None:
        """Several processes: rank 0 joins every rank's part files into one CSV each, in input order, then removes
        them."""
        import torch.distributed as dist

        dist.barrier()  # every rank's part is complete
        if self.rank == 0:
            data = getattr(getattr(engine.state.dataloader, "dataset", None), "data", None) or []
            order = {str(e.get("path", "")): i for i, e in enumerate(data) if isinstance(e, dict)}
            n = _join_parts(self.path, order)
            order = {r[0]: i for i, r in enumerate(_complete_lines(self.path)[1:]) if r}
            for t in self._tables()[:-1]:
                _join_parts(Path(t.path), order)
            logger.info("wrote %d result(s) of %d processes to %s", n, self.world, self.path)
            if callable(getattr(self.writer, "write_summary", None)):
                self.writer.write_summary()
        dist.barrier()


def _append(path: Path, rows: list[list], header: list[str]) -> None:
    """Append ``rows`` to ``path`` in one synced write, after ``header`` if the file has none yet."""
    if not path.is_file() or path.stat().st_size == 0:
        rows = [header, *rows]
    if not rows:
        return
    buf = io.StringIO()
    csv.writer(buf, lineterminator=LINE_END).writerows(rows)
    with open(path, "a", newline="", encoding="utf-8") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _part(path: Path, rank: int) -> Path:
    """The file rank ``rank`` streams to under several processes."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _parts(path: Path) -> list[Path]:
    """The part files of ``path`` that the ranks of a multi-process run wrote."""
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))


def _join_parts(path: Path, order: Mapping[str, int], keep_unknown: bool = True) -> int:
    """Join ``path`` (if any) and the ranks' part files (each with the header) into ``path``, its rows ordered by
    their first column's place in ``order`` (rows of one input keep their order); remove the parts. With
    ``keep_unknown`` false, rows of inputs not in ``order`` are dropped. Returns the number of rows."""
    from medplugin.utils import atomic_write

    files = [path, *_parts(path)]
    header, rows = None, []
    for f in files:
        lines = _complete_lines(f)
        if lines:
            header = header or lines[0]
            rows += [r for r in lines[1:] if r and (keep_unknown or r[0] in order)]
    if header is not None:
        rows.sort(key=lambda r: order.get(r[0], len(order)))
        buf = io.StringIO()
        csv.writer(buf, lineterminator=LINE_END).writerows([header, *rows])
        atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8", newline=""))
    for f in files[1:]:
        f.unlink()
    return len(rows)


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class InferenceProgress:
    """Log files done, files/s and the time left every ``interval`` seconds of a batch-inference run.

    Args:
        interval: seconds between two log lines.
        batch_key: a batch key whose length is the number of files in the batch.
    """

    def __init__(self, interval: float = 30.0, batch_key: str = "image") -> None:
        if float(interval) <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}.")
        self.interval, self.batch_key = float(interval), batch_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, lambda e: self.log(e, final=True))

    def _start(self, engine: Engine) -> None:
        self.files, self.t0, self.last = 0, time.perf_counter(), time.perf_counter()
        loader = engine.state.dataloader
        self.total = len(loader.dataset) if hasattr(loader, "dataset") else None

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        self.files += len(batch[self.batch_key]) if isinstance(batch, dict) else len(batch)
        if time.perf_counter() - self.last >= self.interval:
            self.log(engine)

    def log(self, engine: Engine, final: bool = False) -> str:
        """Log (and return) one progress line."""
        self.last = time.perf_counter()
        rate = self.files / max(self.last - self.t0, 1e-9)
        left = "" if final or not self.total or not rate else f", {(self.total - self.files) / rate:.0f} s left"
        line = f"{self.files}/{self.total or '?'} files, {rate:.2f} files/s{left}"
        logger.info(line)
        return line
