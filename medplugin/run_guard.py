"""The run guard: the first item of every bundle config's ``initialize``.

``"$medplugin.utils.guard_run()"`` makes a ``python -m monai.bundle run`` behave as a user expects:

- **Unknown overrides stop the run.** Every ``--key value`` given to ``python -m monai.bundle run`` must name an id
  defined in the config files named by ``--config_file`` (a ``#``-path such as ``validate#dataset#data`` too,
  or a new argument of a component that has a ``_target_``); otherwise the run stops before any work with
  ``unknown key 'num_epoch'; did you mean 'num_epochs'?``. MONAI merges an override it does not know into the
  config as a new id and ignores it, so a misspelled ``--num_epoch 3`` would train the default 10 epochs.
- **One line on failure.** An exception ends the run with one plain line on stderr that names the problem (for a
  :class:`~medplugin.errors.BadInputError`, the file and the reason, found inside MONAI's ``Failed to evaluate
  ConfigExpression`` wrapper) and what to do; the full traceback goes to the run's log file
  (``<output_dir>/run.log``, which also holds the run's whole log), and to the terminal only with
  ``--debug true`` or ``MEDPLUGIN_DEBUG=1``.
- **Ctrl-C ends with one line**: the last training checkpoint written and the ``--resume`` command that continues.
- ignite's "Engine run resuming from iteration 0, epoch N" (logged at the start of every fresh run, because
  MONAI's engines set ``max_epochs`` before running, and by the validator at every validation after the first) is
  dropped; a real resume (from iteration > 0) still logs it.

How it sees the command line: MONAI turns ``--key value`` into config ids; the guard finds the running
``ConfigWorkflow`` and ``monai.bundle.scripts.create_workflow`` on the call stack and compares the overrides
passed there with the ids of the config files it was given (read again here), never ``sys.argv``.

The excepthook, the SIGINT handler, the log file and the log filter are process-wide, so they are installed only
in a ``python -m monai.bundle`` process (also under ``torchrun``); a bundle run inside another program (MONAI
Label's in-process training, a test) gets the override check only.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from medplugin.errors import BadInputError

__all__ = ["UnknownKeyError", "GUARD_KEYS", "DEBUG_ENV", "LOG_NAME", "unknown_keys", "check_overrides", "start",
           "install", "log_to", "error_line", "resume_command"]

logger = logging.getLogger(__name__)

GUARD_KEYS = {"debug": "true: print the full traceback of a failure on the terminal too"}
"""Keys the guard itself reads from the config (``--debug true``); known in every bundle."""
DEBUG_ENV = "MEDPLUGIN_DEBUG"
LOG_NAME = "run.log"
# arguments of `python -m monai.bundle run` (named in suggestions: `--config_files` means `--config_file`)
RUN_ARGS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
            "workflow_name", "workflow_type", "properties_path")
_FRESH_START = "Engine run resuming from iteration 0, "  # nothing done yet: not a resume


class UnknownKeyError(ValueError):
    """An override names no setting of the bundle's configs (a misspelling, or a key of another bundle)."""


def _config_ids(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        return [str(k) for k in node if k != "_meta_"]
    if isinstance(node, list):
        return [str(i) for i in range(len(node))]
    return []


def _lookup(config: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    node = config
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def unknown_keys(overrides: Iterable[str], config: Mapping) -> list[str]:
    """What is wrong with each override id that ``config`` does not define, with the closest known id.

    An id is known when it exists in ``config`` (``#`` or ``::`` separate levels), when it is one of
    :data:`GUARD_KEYS`, or when it adds an argument to a component (a dict with ``_target_``).

    Args:
        overrides: the ids given on the command line (``num_epochs``, ``validate#dataset#data``, ...).
        config: the merged content of the config files.

    Returns:
        one message per unknown id, e.g. ``"unknown key 'num_epoch'; did you mean 'num_epochs'?"``.
    """
    messages = []
    for key in overrides:
        parts = str(key).replace("::", "#").split("#")
        found, _ = _lookup(config, parts)
        if found or (len(parts) == 1 and parts[0] in GUARD_KEYS):
            continue
        parent_found, parent = _lookup(config, parts[:-1])
        if len(parts) > 1 and parent_found and isinstance(parent, dict) and "_target_" in parent:
            continue  # a new argument of a component: its own signature checks it when it is built
        # the first level that does not exist is the misspelled one
        depth = next(i for i in range(1, len(parts) + 1) if not _lookup(config, parts[:i])[0]) - 1
        _, node = _lookup(config, parts[:depth])
        candidates = list(_config_ids(node)) + (list(GUARD_KEYS) + list(RUN_ARGS) if depth == 0 else [])
        prefix = "#".join(parts[:depth])
        close = difflib.get_close_matches(parts[depth], candidates, n=1, cutoff=0.6)
        name = "#".join(parts)
        if close:
            meant = parts[:depth] + [close[0]] + parts[depth + 1:]
            meant = meant if _lookup(config, meant)[0] else parts[:depth] + [close[0]]
            messages.append(f"unknown key '{name}'; did you mean '{'#'.join(meant)}'?")
        elif depth:
            messages.append(f"unknown key '{name}': '{prefix}' has no '{parts[depth]}'")
        else:
            messages.append(f"unknown key '{name}'")
    return messages


def check_overrides(overrides: Iterable[str], config_files: Any) -> None:
    """Raise :class:`UnknownKeyError` when an override names no id of ``config_files`` (see :func:`unknown_keys`).

    Args:
        overrides: the override ids.
        config_files: what ``--config_file`` gave (a file, a list of files merged in order, a comma-separated string).
    """
    from monai.bundle import ConfigParser

    overrides = list(overrides)
    if not overrides:
        return
    messages = unknown_keys(overrides, ConfigParser.load_config_files(config_files))
    if messages:
        files = [str(f) for f in (config_files if isinstance(config_files, (list, tuple)) else [config_files])]
        raise UnknownKeyError("; ".join(messages) + f" (the settings are at the top of {files[0]}; check the "
                              "spelling, or drop the option)")


# ---- finding the running workflow ------------------------------------------------------------------------------

def _run_context(frame: FrameType | None) -> tuple[Any, Any, dict | None]:
    """(the running ``BundleWorkflow``'s parser, ``config_file``, the ``run`` arguments) from the call stack."""
    from monai.bundle import BundleWorkflow, ConfigParser

    parser = config_file = args = None
    while frame is not None:
        local = frame.f_locals
        me = local.get("self")
        if parser is None and isinstance(me, BundleWorkflow) and isinstance(getattr(me, "parser", None), ConfigParser):
            parser = me.parser
        if frame.f_code.co_name == "create_workflow" and isinstance(local.get("_args"), dict):
            config_file, args = local.get("config_file"), local["_args"]
            break
        frame = frame.f_back
    return parser, config_file, args


def _override_ids(args: dict) -> list[str]:
    """The config ids among ``run``'s keyword arguments (the rest are MONAI's own: ``meta_file``, ``run_id``, ...)."""
    import inspect

    from monai.bundle import ConfigWorkflow

    own = set(inspect.signature(ConfigWorkflow.__init__).parameters) | set(RUN_ARGS)
    try:  # MONAI's experiment tracking settings (``--tracking mlflow --tracking_uri ...``)
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        if args.get("tracking"):
            for settings in DEFAULT_EXP_MGMT_SETTINGS.values():
                own |= set(settings.get("configs", {}))
    except ImportError:  # pragma: no cover - older MONAI
        pass
    return [k for k in args if k not in own]


def _is_bundle_cli() -> bool:
    """Whether this process is ``python -m monai.bundle`` (directly or a ``torchrun`` worker)."""
    return Path(sys.argv[0] if sys.argv else "").parts[-3:] == ("monai", "bundle", "__main__.py")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


# ---- the one line -----------------------------------------------------------------------------------------------

def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return out


def _worker_error(exc: BaseException) -> str | None:
    """The ``BadInputError`` message inside a DataLoader worker's error (torch re-raises it as text)."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return None
    for line in reversed(text.strip().splitlines()):
        for name in ("medplugin.errors.BadInputError: ", "BadInputError: "):
            if line.startswith(name):
                return line[len(name):]
    return None


def error_line(exc: BaseException, log_path: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """What the guard prints for ``exc``: (context lines, the final line naming the problem and what to do).

    A :class:`BadInputError` (also inside MONAI's ``Failed to evaluate ConfigExpression`` or a DataLoader worker's
    error) gives its ``path: reason`` and its ``hint`` (what to do); a multi-line message (a list of bad files)
    puts the listing in the context lines, printed above. Other errors give their type and first line.

    Args:
        exc: the exception that ended the run.
        log_path: the log file holding the traceback, named in the line.
    """
    chain = _chain(exc)
    chosen = next((e for e in chain if isinstance(e, (BadInputError, UnknownKeyError))), None)
    text = str(chosen) if chosen is not None else next((m for e in chain if (m := _worker_error(e))), None)
    context: list[str] = []
    if text is not None:
        lines = [line for line in text.strip().splitlines() if line.strip()] or [type(chosen).__name__]
        head = lines[0].rstrip(":")
        if len(lines) > 1:  # a listing of bad items: the items above, the summary last
            context = lines[1:]
        what = getattr(chosen, "hint", None)
        if what and not ("--on_bad_input" in text and "--on_bad_input" in what):
            head = f"{head}; {what}"
        hint = f" (full log: {log_path})" if log_path else ""
    else:
        root = chain[-1]
        message = (str(root).strip().splitlines() or [""])[0]
        head = f"{type(root).__name__}: {message}" if message else type(root).__name__
        hint = (f" (the full traceback is in {log_path}; --debug true prints it here)" if log_path
                else " (run again with --debug true for the traceback)")
    return context, f"error: {head}{hint}"


def resume_command(output_dir: str, argv: Sequence[str] | None = None) -> str:
    """The command that continues the training in ``output_dir``: this run's command with ``--resume output_dir``.

    Args:
        output_dir: the run folder to resume.
        argv: the run's arguments after ``python -m monai.bundle`` (default: this process's).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--resume":
            skip = True
            continue
        if a.startswith("--resume="):
            continue
        kept.append(a)
    python = "python" if (found := shutil.which("python")) and os.path.realpath(found) == os.path.realpath(
        sys.executable) else sys.executable
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    prefix = ([f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)}"] if world > 1
              else [shlex.quote(python)])
    return " ".join(prefix + ["-m monai.bundle"] + [_quote(a) for a in kept + ["--resume", str(output_dir)]])


def _quote(arg: str) -> str:
    """``arg`` quoted for a POSIX shell, readably: ``"['a.yaml','b.yaml']"`` rather than ``shlex.quote``'s
    ``'['"'"'a.yaml'"'"',...``."""
    plain = shlex.quote(arg)
    if plain == arg or "'" not in arg or any(c in arg for c in '"$`\\!'):
        return plain
    return f'"{arg}"'


def _checkpoint_epoch(path: Path) -> int | None:
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        trainer = state["trainer"]
        return int(trainer["iteration"]) // int(trainer["epoch_length"])
    except Exception:  # an unreadable checkpoint: the line names the file without its epoch
        return None


class _DropFreshStart(logging.Filter):
    """Drops ignite's "resuming from iteration 0, ..." (MONAI's engines set ``max_epochs`` before ``run``, so ignite
    takes every fresh start, and every validation after the first, for a resume)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("ignite.") and str(record.msg).startswith(_FRESH_START))


class _Buffer(logging.Handler):
    """Keeps the run's log records until the run's folder is known (then they open its log file)."""

    def __init__(self, capacity: int = 5000) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.capacity = capacity

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.capacity:
            self.records.append(record)


class _Guard:
    """The process-wide part: log file, excepthook, SIGINT handler (see the module docstring)."""

    def __init__(self, parser: Any, debug: bool) -> None:
        self.parser = parser
        self.debug = debug
        self.interrupted = False
        self.output_dir: str | None = None
        self.file_handler: logging.FileHandler | None = None
        self.formatter = logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s")
        root = logging.getLogger()
        for h in root.handlers:
            if h.formatter is not None:
                self.formatter = h.formatter
            h.addFilter(_DropFreshStart())
        self.buffer = _Buffer()
        self.buffer.addFilter(_DropFreshStart())
        root.addHandler(self.buffer)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        self.previous_hook = sys.excepthook
        sys.excepthook = self.excepthook
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._sigint)

    def _sigint(self, signum, frame) -> None:
        self.interrupted = True
        signal.default_int_handler(signum, frame)

    def log_to(self, output_dir: str | os.PathLike) -> None:
        if self.file_handler is not None:
            return
        rank = int(os.environ.get("RANK", "0") or 0)
        path = Path(output_dir) / (LOG_NAME if rank == 0 else f"run_rank{rank}.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file_handler.setFormatter(self.formatter)
        self.file_handler.addFilter(_DropFreshStart())
        for record in self.buffer.records:
            self.file_handler.handle(record)
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        root.addHandler(self.file_handler)
        self.output_dir = str(output_dir)

    def _write_traceback(self, exc_type, exc, tb) -> str:
        """The traceback into the run's log file (or a temporary one when the run had no folder yet); its path."""
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        if self.file_handler is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
            path = Path(tempfile.gettempdir()) / f"medplugin-run-{stamp}-{os.getpid()}.log"
            with open(path, "a", encoding="utf-8") as f:
                for record in self.buffer.records:
                    f.write(self.formatter.format(record) + "\n")
                f.write(text)
            return str(path)
        record = logging.LogRecord("medplugin.run_guard", logging.ERROR, __file__, 0, "the run failed:\n%s",
                                   (text,), None)
        self.file_handler.handle(record)
        self.file_handler.flush()
        return self.file_handler.baseFilename

    def _interrupt_line(self) -> str:
        from medplugin.handlers.resume import latest_checkpoint

        out = self.output_dir
        ckpt = latest_checkpoint(out) if out else None
        if ckpt is not None:
            epoch = _checkpoint_epoch(ckpt)
            at = f" (epoch {epoch})" if epoch is not None else ""
            return (f"interrupted: the last checkpoint written is {ckpt}{at}; continue with: "
                    f"{resume_command(os.path.abspath(out))}")
        training = "train#trainer" in str(self.parser.get("run", "")) if self.parser is not None else False
        if training:
            return "interrupted before the first checkpoint (written at the end of each epoch): nothing to resume; " \
                   "run the same command again to start over"
        where = f"; its outputs so far are in {out}" if out else ""
        return f"interrupted{where}: run the same command again to start over"

    def excepthook(self, exc_type, exc, tb) -> None:
        try:
            # a misspelled option needs no traceback, only the run's own log would hold it
            unknown = any(isinstance(e, UnknownKeyError) for e in _chain(exc)) and self.file_handler is None
            interrupt = issubclass(exc_type, KeyboardInterrupt) or self.interrupted
            # a Ctrl-C is no failure: its traceback goes to the run's log when there is one, never to a new file
            quiet = unknown or (interrupt and self.file_handler is None)
            log = None if quiet else self._write_traceback(exc_type, exc, tb)
            if self.debug:
                traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
            # a new line first: a progress bar may have left the cursor mid-line
            if interrupt:
                if int(os.environ.get("RANK", "0") or 0) == 0:
                    sys.stderr.write("\n" + self._interrupt_line() + "\n")
            else:
                context, line = error_line(exc, log)
                sys.stderr.write("\n" + "".join(c + "\n" for c in context) + line + "\n")
            sys.stderr.flush()
        except Exception:  # never hide the original error behind one of ours
            self.previous_hook(exc_type, exc, tb)


_ACTIVE: _Guard | None = None


def start() -> None:
    """What every bundle config calls first at ``initialize`` (through ``medplugin.utils.guard_run``).

    Checks the command line's overrides (raising :class:`UnknownKeyError`), and in a ``python -m monai.bundle``
    process installs the excepthook, the SIGINT handler and the log buffer (see the module docstring).

    Raises:
        UnknownKeyError: an override names no id of the config files.
    """
    parser, config_file, args = _run_context(sys._getframe(1))
    debug = _truthy(os.environ.get(DEBUG_ENV, "")) or (parser is not None and _truthy(parser.get("debug", False)))
    install(parser, debug)
    if args is None or config_file is None:
        logger.debug("run guard: no `monai.bundle run` on the call stack; overrides not checked")
        return
    check_overrides(_override_ids(args), config_file)


def install(parser: Any, debug: bool) -> None:
    """Install the process-wide part (excepthook, SIGINT handler, log buffer) once, in a ``python -m monai.bundle``
    process only (:mod:`medplugin.export_check` calls it for MONAI's export commands)."""
    global _ACTIVE
    if _is_bundle_cli() and _ACTIVE is None:
        _ACTIVE = _Guard(parser, debug)


def log_to(output_dir: str | os.PathLike) -> None:
    """Send the run's log (from its start) to ``output_dir/run.log``; nothing outside a guarded run.

    :func:`medplugin.utils.check_output_dir` calls it once the folder is known to be the run's own.
    """
    if _ACTIVE is not None:
        _ACTIVE.log_to(output_dir)
