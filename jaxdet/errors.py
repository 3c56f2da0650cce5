"""The errors a user can fix, each carrying the message that says how: `JaxdetError` and its kinds.

Every error jaxdet raises for something a user can act on (a mistyped config key, a missing
dataset, no GPU, a run trained with another model) derives from `JaxdetError`. The class says
how the error reads (`prefix`, `advice` around its text: `message()`) and the command's exit
status (`exit_status`); the `jaxdet` command catches this one class and prints `message()`.
Each module defines its errors next to the code that raises them (`jaxdet.data.DataError`,
`jaxdet.settings.InvalidSetting`, ...); those that also derive from a builtin (`ValueError`,
`FileNotFoundError`) keep `except` clauses written for the builtin working.

Errors from outside jaxdet that a user can still act on, a write that failed for want of space or
permission (from Python or from orbax's TensorStore), running out of memory, a missing file or
an invalid value, are given the same form by `user_error`.
"""

from __future__ import annotations

import errno
import re


class JaxdetError(Exception):
    """An error a user can fix; `message()` is what the `jaxdet` command prints."""

    exit_status = 1
    prefix = ""  # the kind of error, before the text
    advice = ""  # what to do, after the text

    def message(self) -> str:
        return f"{self.prefix}{self}{self.advice}"


class UsageError(JaxdetError):
    """A mistake on the command line or in the config; the message says how to fix it."""

    exit_status = 2
    prefix = "config or command-line error: "


class DeviceError(JaxdetError):
    """The devices asked for are not there."""


# errno of the writes that fail for want of space or permission -> (what it means, what to do).
WRITE_FAULTS = {
    errno.ENOSPC: ("no space is left on its disk", "free space there or give a --workdir on another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free space there or give a --workdir on another disk"),
    errno.EROFS: ("its file system is read-only", "give a --workdir on a writable disk"),
    errno.EACCES: ("permission denied", "make it writable for this user or give another --workdir"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or give another --workdir"),
}
# How orbax's TensorStore reports an OS error: its code, and the paths it was writing in quotes.
_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def write_fault(error: BaseException | None) -> tuple | None:
    """(errno, the path) of a write that failed for want of space or permission (WRITE_FAULTS): an
    OSError, or the text of orbax's RESOURCE_EXHAUSTED error, in `error` or what caused it; None otherwise."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in WRITE_FAULTS:
            return error.errno, error.filename
        code = _OS_ERROR_CODE.search(str(error))
        if code and int(code.group(1)) in WRITE_FAULTS:
            paths = _QUOTED_PATH.findall(str(error))
            return int(code.group(1)), paths[-1] if paths else None
        error = error.__cause__ or error.__context__
    return None


class WriteFault(JaxdetError):
    """A file could not be written for want of space or permission (WRITE_FAULTS)."""

    def __init__(self, code: int, path: str | None, *, checkpointed: bool = True):
        what, fix = WRITE_FAULTS[code]
        kept = (" Files written before, checkpoints included, are intact: a training run continues with --resume."
                if checkpointed else " No checkpoint had been written yet: rerun the command once it is fixed.")
        super().__init__(f"cannot write {path or 'a file'}: {what} ({errno.errorcode[code]}). To fix it, {fix} "
                         f"(eval: --out DIR puts its files elsewhere; predict: --out DIR).{kept}")


class OutOfMemory(JaxdetError):
    """The model and a batch do not fit in the device's memory."""

    def __init__(self, error: BaseException, *, checkpointed: bool = True):
        kept = (" Checkpoints already written are intact: continue with --resume." if checkpointed
                else " No checkpoint had been written yet: rerun the command with the change.")
        super().__init__(
            "out of memory: the model and a batch do not fit in the device's memory "
            f"({str(error).splitlines()[0][:200]}). Lower --config.train.batch_size (and the learning rate "
            "with it), or the image size (--config.data.min_size / --config.data.max_size), or compute in "
            "bfloat16 (--config.model.compute_dtype=bfloat16); on a GPU also check that no other process "
            f"holds its memory (nvidia-smi).{kept}")


class MissingFile(JaxdetError):
    """A file named by the user (an image, a checkpoint) is not there."""

    prefix = "file not found: "


class InvalidValue(JaxdetError):
    """A value the library refused (a ValueError that is no `InvalidSetting`)."""

    exit_status = 2
    prefix = "invalid setting: "
    advice = " (--traceback shows where it was raised)"


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def user_error(error: BaseException, *, checkpointed: bool = True) -> JaxdetError | None:
    """`error` as the JaxdetError a user reads: itself when it is one; a failed write, running out
    of memory, a missing file or an invalid value from outside jaxdet's classes as theirs; None for
    anything else (a bug, shown with its traceback). `checkpointed` False: a training run that wrote
    no checkpoint yet, so no advice to --resume."""
    if isinstance(error, JaxdetError):
        return error
    fault = write_fault(error)
    if fault is not None:
        return WriteFault(*fault, checkpointed=checkpointed)
    if _out_of_memory(error):
        return OutOfMemory(error, checkpointed=checkpointed)
    if isinstance(error, FileNotFoundError):
        return MissingFile(str(error))
    if isinstance(error, ValueError):
        return InvalidValue(str(error))
    return None
