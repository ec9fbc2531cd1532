"""Errors raised by medplugin for bad input, each naming the file and the reason."""

from __future__ import annotations

import os


class BadInputError(ValueError):
    """An input file (image, volume, CSV, datalist) that cannot be used.

    The message always has the form ``"<path>: <reason>"`` so a user can find the file.

    Args:
        path: the offending file (or folder).
        reason: what is wrong with it, in words a user can act on.
        hint: what to do about it, when the reason does not say (e.g. the option that skips bad files); shown by
            the bundle runs' last line (:mod:`medplugin.run_guard`) and the ``medplugin`` command, not in the message.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str, hint: str | None = None):
        self.path = str(path) if path is not None else "<unknown>"
        self.reason = reason
        self.hint = hint
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # keep the exception picklable across DataLoader worker processes
        return (self.__class__, (self.path, self.reason, self.hint))
