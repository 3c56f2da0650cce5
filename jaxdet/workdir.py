"""A run's work directory: the name of each file, what it holds, and reading and writing the small ones.

    checkpoints/          orbax checkpoints (`jaxdet.training.checkpoints`)
    config.json           the run's resolved config (what `jaxdet eval` and `predict` read back), as
                          it started: `--resume` never rewrites it
    config_changes.jsonl  one line per resume that changed a setting: {"step", "changes": {key: [the
                          run's value, the new one]}}
    class_names.json      the class names, label k the k-th
    train_log.jsonl       one line per logging window (`jaxdet.reporting.TrainingReporter`)
    tensorboard/          TensorBoard event files
    loss_curve.png        the losses of train_log.jsonl against the step
    metrics.json          the run's figures, strict JSON: what is not a finite number is null
    pr_curves.png, detections.png, detections_coco.json
                          the evaluation's (`jaxdet.evaluation.run`)
    predictions/          `jaxdet predict`'s pictures and detections.json (`jaxdet.inference.files`)
    data/                 the demo's shapes dataset
    demo.json             the demo's stamp: this directory is the demo's, and which files under data/ it
                          wrote (`claim_for_demo`); the demo deletes nothing else
    .lock                 locked (`lock`) while a process trains in the directory: a second one is refused

Nothing the user made is ever overwritten: every file jaxdet writes goes through `output`, which refuses
a path that would replace a file of the command's inputs (`reading`: the data, the images, the weights).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
import warnings
from typing import Mapping, Sequence

import ml_collections
import numpy as np

from jaxdet.configs import base
from jaxdet.errors import JaxdetError, UsageError

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"
CLASS_NAMES = "class_names.json"
CONFIG_CHANGES = "config_changes.jsonl"
TRAIN_LOG = "train_log.jsonl"
TENSORBOARD = "tensorboard"
LOSS_CURVE = "loss_curve.png"
METRICS = "metrics.json"
PR_CURVES = "pr_curves.png"
DETECTIONS_PICTURE = "detections.png"
COCO_RESULTS = "detections_coco.json"
PREDICTIONS = "predictions"
DATA = "data"
DEMO_STAMP = "demo.json"
LOCK = ".lock"

# What each file is, in the order a run's results are listed.
DESCRIPTIONS = {
    METRICS: "the figures above, as JSON",
    DETECTIONS_PICTURE: "detections on held-out images",
    PR_CURVES: "precision-recall curve per class",
    LOSS_CURVE: "training losses",
    COCO_RESULTS: "held-out detections, COCO results format",
    TENSORBOARD: "TensorBoard logs (tensorboard --logdir ...)",
    CHECKPOINTS: "checkpoints (resume with --resume)",
    DATA: "the shapes dataset (VOC layout)",
}
DEMO_RUN_FILES = (CHECKPOINTS, TENSORBOARD, TRAIN_LOG, METRICS)  # what a new demo replaces in its own directory
EVALUATION_FILES = (METRICS, DETECTIONS_PICTURE, PR_CURVES, COCO_RESULTS)


class WouldOverwrite(UsageError):
    """A file jaxdet would write is one of the command's inputs, or a file in an input folder it did not write."""


# The command running (`reading`): the real paths of its inputs, of its run's directory, and what it wrote.
_inputs: list = []
_ours: list = []
_written: set = set()


def config_inputs(config: ml_collections.ConfigDict) -> list:
    """The files and folders a config reads: each path of its `data` and `model` sections that exists
    (the dataset's root, proposals, pretrained weights)."""
    found = []
    for section in ("data", "model"):
        for value in _leaves(json.loads(config[section].to_json()) if section in config else {}).values():
            if isinstance(value, str) and value and os.path.exists(value):
                found.append(value)
    return found


@contextlib.contextmanager
def reading(inputs: Sequence[str], run: str | None = None):
    """Within the block, `output` guards `inputs` (files and folders: a command's data, images, weights);
    the files of `run` (the run's directory) are jaxdet's, outside any input folder inside it."""
    saved = list(_inputs), list(_ours), set(_written)
    _inputs[:] = [os.path.realpath(p) for p in inputs if p]
    _ours[:] = [os.path.realpath(run)] if run else []
    _written.clear()
    try:
        yield
    finally:
        _inputs[:], _ours[:] = saved[0], saved[1]
        _written.clear()
        _written.update(saved[2])


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def output(path: str) -> str:
    """`path`, checked before jaxdet writes it: the one place that keeps the rule that nothing the user
    made is overwritten. Every writer of run files, pictures, detections, proposals, checkpoints and
    metrics calls it.

    Raises:
      WouldOverwrite: an existing file or folder at `path` would be replaced, and it is one of the inputs
        of the command running (`reading`) or lies in an input folder (the innermost folder holding it
        is an input's, not the run directory's), and this command did not write it.
    """
    real = os.path.realpath(path)
    if real in _written or not os.path.lexists(real):
        _written.add(real)
        return path
    holders = [(len(root), is_input, root) for roots, is_input in ((_inputs, True), (_ours, False))
               for root in roots if _within(real, root)]
    if holders and max(holders)[1]:
        source = max(holders)[2]
        what = "is one of this command's inputs" if real == source else f"is a file in the input folder {source}"
        raise WouldOverwrite(
            f"jaxdet would write {path}, which {what}, and never replaces a file it did not write. Write the "
            "results elsewhere (predict: --out DIR; eval: --out DIR; train: another --workdir)")
    _written.add(real)
    return path


def check_workdir(workdir: str) -> None:
    """UsageError when `workdir` names something that is not a directory (a file)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir} is a file, not a directory: give the directory the run's files "
                         "go in (created if it does not exist)")


class WorkdirLocked(JaxdetError):
    """Another process trains in the work directory."""


_locks: dict = {}  # real path of a work directory -> the open, locked .lock file of this process


@atexit.register
def _release_locks() -> None:
    for handle in _locks.values():
        handle.close()


def lock(workdir: str) -> None:
    """Locks `workdir` for this process's life (creating it): `fcntl.flock` on its .lock file, which the
    system releases when the process ends, however it ends, so a crashed run leaves nothing stuck.
    Again in the same process, nothing.

    Raises:
      WorkdirLocked: another process holds the lock; the message names its pid.
    """
    check_workdir(workdir)
    key = os.path.realpath(workdir)
    if key in _locks:
        return
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, LOCK), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise WorkdirLocked(
            f"{workdir} is in use: another jaxdet process (pid {pid}) is training in it, and two runs in one "
            "directory would mix their checkpoints and logs. Wait for it to end (or stop it), or give another "
            "--workdir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _locks[key] = handle


class RunWithoutCheckpoints(JaxdetError):
    """The work directory holds a run's log but no checkpoint to continue it from."""


def check_start(workdir: str, *, resume: bool, latest: int | None) -> None:
    """What `jaxdet train` may do in `workdir`, whose latest checkpoint is `latest` (None: none): refuses
    to train over a run's log without a checkpoint (`--resume` could not continue it, and a new run would
    replace its log and config.json), and warns that `resume` resumes nothing in a directory without one.

    Raises:
      RunWithoutCheckpoints: `workdir` holds a train_log.jsonl with steps but no checkpoint.
    """
    if latest is not None:
        return
    rows = read_train_log(workdir) if os.path.isdir(workdir) else []
    if rows:
        there = ", ".join(n for n in (CONFIG, TRAIN_LOG, CONFIG_CHANGES, METRICS, TENSORBOARD)
                          if os.path.exists(os.path.join(workdir, n)))
        nothing = ("--resume has nothing to continue from" if resume
                   else "a new run there would replace its log and config.json")
        raise RunWithoutCheckpoints(
            f"{workdir} holds a run's files ({there}; logged up to step {rows[-1]['step']}) but no checkpoint (in "
            f"{CHECKPOINTS}/): the run stopped before its first checkpoint, or its checkpoints were moved. {nothing}, "
            f"and jaxdet replaces no run's files. Give another --workdir, or move those files away to start over "
            f"there.")
    if resume:
        what = ("does not exist" if not os.path.exists(workdir)
                else "holds no checkpoint")
        warnings.warn(f"--resume: {workdir} {what}, so nothing was resumed: training starts at step 0",
                      UserWarning, stacklevel=3)


def checkpoint_dir(workdir: str) -> str:
    """The absolute path of the run's checkpoints (orbax wants an absolute one)."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def require_run_dir(workdir: str) -> None:
    """UsageError unless `workdir` is a directory (eval, predict and proposals read a training run's)."""
    if not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        raise UsageError(f"--workdir {workdir} {what}: give the directory of a training run (what "
                         "`jaxdet train --workdir DIR` or `jaxdet demo` wrote, with checkpoints/ and config.json)")
    checkpoints = os.path.join(workdir, CHECKPOINTS)
    if not any(name.isdigit() for name in (os.listdir(checkpoints) if os.path.isdir(checkpoints) else ())):
        raise UsageError(f"no trained run in {workdir}: it holds no checkpoint ({CHECKPOINTS}/STEP). Give the "
                         "directory of a training run (what `jaxdet train --workdir DIR` or `jaxdet demo` wrote)")


def require_new_folder(folder: str, option: str) -> None:
    """UsageError unless `folder` is absent or an empty directory: a command that writes a whole tree
    of fixed names there (a dataset) would replace the files of the same names already in it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{option} {folder} is a file: give a new or empty folder")
    held = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise UsageError(f"{option} {folder} is not empty (it holds {shown}), and jaxdet never replaces "
                         "files it did not write: give a new or empty folder")


def check_writable(directory: str) -> None:
    """Creates `directory` if absent and a file in it, removed at once: raises the OSError (a
    read-only file system, no permission) that writing there would meet, naming `directory`, before
    any work is done."""
    os.makedirs(directory, exist_ok=True)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".jaxdet-write-check-"):
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, directory) from None  # the directory, not the test file's name


def save_run_files(config: ml_collections.ConfigDict, workdir: str, class_names: Sequence[str]) -> None:
    """Writes `config.json` and `class_names.json`, what `jaxdet eval` and `predict` read back."""
    os.makedirs(workdir, exist_ok=True)
    with open(output(os.path.join(workdir, CONFIG)), "w") as f:
        f.write(config.to_json(indent=2))
    with open(output(os.path.join(workdir, CLASS_NAMES)), "w") as f:
        json.dump(list(class_names), f)


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config of the run in `workdir` as it now is: config.json (as the run started) with the
    changes of each resume in config_changes.jsonl applied, and any field jaxdet gained since the run
    started at its value in `jaxdet/configs/base.py`; None when it has no config.json."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = json.load(f)
    changes = os.path.join(workdir, CONFIG_CHANGES)
    for record in (_log_rows(changes)[0] if os.path.isfile(changes) else ()):
        for key, (_, now) in record["changes"].items():
            *sections, name = key.split(".")
            section = config
            for part in sections:
                section = section.setdefault(part, {})
            if now is None:
                section.pop(name, None)
            else:
                section[name] = now
    return ml_collections.ConfigDict(_with_base_fields(config, base.get_config().to_dict()))


def _with_base_fields(config: dict, base_config: dict) -> dict:
    """`config` with the fields of `base_config` it lacks, section by section."""
    merged = dict(config)
    for name, value in base_config.items():
        if name not in merged:
            merged[name] = value
        elif isinstance(value, dict) and isinstance(merged[name], dict):
            merged[name] = _with_base_fields(merged[name], value)
    return merged


def _leaves(tree: Mapping, prefix: str = "") -> dict:
    found = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            found.update(_leaves(value, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = value
    return found


def config_differences(run: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict:
    """{dotted key: (the run's value, `config`'s)} for each field that differs (as JSON holds them:
    a tuple equals the list it was saved as; a field one of them lacks is None there)."""
    ours, theirs = (_leaves(json.loads(c.to_json())) for c in (run, config))
    return {key: (ours.get(key), theirs.get(key)) for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key)}


def record_config_changes(workdir: str, step: int, changes: Mapping) -> None:
    """Appends a resume's `changes` (`config_differences`) from `step` on to `config_changes.jsonl`
    (`read_config` applies them)."""
    with open(output(os.path.join(workdir, CONFIG_CHANGES)), "a") as f:
        f.write(json.dumps({"step": int(step), "changes": {k: list(v) for k, v in changes.items()}}) + "\n")


def read_class_names(workdir: str) -> tuple:
    """The class names a run in `workdir` was trained with (label k is the k-th)."""
    with open(os.path.join(workdir, CLASS_NAMES)) as f:
        return tuple(json.load(f))



def _log_rows(path: str) -> tuple:
    """(the rows of a train log, the numbers of its lines that are not one: e.g. the partial last
    line a failed write leaves)."""
    rows, bad = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            else:
                bad.append(number)
    return rows, bad


def read_train_log(workdir: str) -> list:
    """The rows of `train_log.jsonl` (empty if there is none), leaving out any line that is not a
    whole row (what a failed write leaves)."""
    path = os.path.join(workdir, TRAIN_LOG)
    return _log_rows(path)[0] if os.path.exists(path) else []


def cut_train_log(workdir: str, step: int) -> None:
    """Keeps only the rows of `train_log.jsonl` up to `step`, where a resumed run continues (it logs
    the later steps again: the loss curve would go back in time), and only whole rows; warns naming
    the lines that were not (a partial last line a failed write left). Rewritten atomically."""
    path = os.path.join(workdir, TRAIN_LOG)
    if not os.path.exists(path):
        return
    output(path)
    rows, bad = _log_rows(path)
    if bad:
        warnings.warn(f"{path}: line{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} not a whole JSON row "
                      "(a write cut short), left out; the other rows are kept", UserWarning, stacklevel=2)
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows if row["step"] <= step)
    os.replace(path + ".tmp", path)


def json_safe(value):
    """`value` with every non-finite float (NaN, inf: e.g. the training rate of a one-step run, the
    AP of a class without ground truth) replaced by None, numpy scalars made Python ones, tuples
    made lists: what strict JSON (RFC 8259, JavaScript's JSON.parse, jq) can hold."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def update_metrics_file(workdir: str, values: Mapping) -> dict:
    """Merges `values` into `metrics.json` (kept from training when only evaluating); returns all of
    it as written: strict JSON, a figure that is not a finite number is null (see `json_safe`)."""
    path = output(os.path.join(workdir, METRICS))
    metrics = {}
    if os.path.exists(path):
        with open(path) as f:
            metrics = json.load(f)  # a file of an older version may hold NaN: made null below
    metrics.update(values)
    metrics = json_safe(metrics)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    return metrics


class WorkdirInUse(JaxdetError):
    """`jaxdet demo` was given a directory that holds files it did not write."""


_MADE_BY = "jaxdet demo"
_OLD_DATA_STAMP = os.path.join(DATA, "shapes.json")  # what the demo of jaxdet before demo.json stamped


def _demo_stamp(workdir: str) -> dict | None:
    """The demo's stamp in `workdir`; None when there is none (or it is not one the demo wrote)."""
    try:
        with open(os.path.join(workdir, DEMO_STAMP)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("made_by") == _MADE_BY else None


def _write_demo_stamp(workdir: str, stamp: Mapping) -> None:
    path = os.path.join(workdir, DEMO_STAMP)
    with open(path + ".tmp", "w") as f:
        json.dump(stamp, f, indent=1)
    os.replace(path + ".tmp", path)  # never a half-written stamp


def _not_the_demos(workdir: str, found: Sequence[str]) -> WorkdirInUse:
    steps = sorted(int(name) for name in (os.listdir(os.path.join(workdir, CHECKPOINTS))
                                          if os.path.isdir(os.path.join(workdir, CHECKPOINTS)) else ())
                   if name.isdigit())
    if steps:
        return WorkdirInUse(
            f"{workdir} already holds the checkpoints of a run (the latest at step {steps[-1]}) that `jaxdet demo` "
            f"did not make, and the demo deletes nothing it did not write. Continue that run with `jaxdet train "
            f"--workdir {workdir} --resume`, or give the demo a new or empty --workdir (default runs/demo).")
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return WorkdirInUse(
        f"{workdir} holds files `jaxdet demo` did not write ({shown}), and the demo deletes nothing it did not "
        f"write: give it a new or empty --workdir (default runs/demo).")


def claim_for_demo(workdir: str) -> None:
    """Makes `workdir` the demo's: a directory that does not exist or is empty is created and stamped
    (`demo.json`, before anything else is written); one the demo stamped before is the demo's already,
    and so is the directory of an older jaxdet's demo (its data/shapes.json), whose data files are
    then never deleted, only rewritten.

    Raises:
      WorkdirInUse: `workdir` holds files and no demo stamp (another run, the user's files), naming
        them; nothing is touched.
    """
    if _demo_stamp(workdir) is not None:
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirInUse(f"--workdir {workdir} is a file, not a directory: give the demo a new or empty "
                           "directory (default runs/demo)")
    found = sorted(n for n in os.listdir(workdir) if n != LOCK) if os.path.isdir(workdir) else []
    if found and not os.path.isfile(os.path.join(workdir, _OLD_DATA_STAMP)):
        raise _not_the_demos(workdir, found)
    os.makedirs(workdir, exist_ok=True)
    _write_demo_stamp(workdir, {"made_by": _MADE_BY, "data": None, "data_files": []})


def _claimed(workdir: str) -> dict:
    stamp = _demo_stamp(workdir)
    if stamp is None:
        raise _not_the_demos(workdir, sorted(n for n in os.listdir(workdir) if n != LOCK)
                             if os.path.isdir(workdir) else [])
    return stamp


def clear_demo_run(workdir: str) -> None:
    """Removes the previous demo run's DEMO_RUN_FILES from a directory the demo claimed
    (`claim_for_demo`; WorkdirInUse otherwise): not its data, nor files of other names."""
    _claimed(workdir)
    for name in DEMO_RUN_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def demo_data_is(workdir: str, description: Mapping) -> bool:
    """Whether the demo's `workdir/data` holds, completely written, the dataset `description` describes."""
    stamp = _demo_stamp(workdir)
    return stamp is not None and stamp["data"] == json.loads(json.dumps(description))


def _files_under(root: str) -> dict:
    """{path relative to root: modification time} of every file under `root`."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.stat(path).st_mtime_ns
    return found


def write_demo_data(workdir: str, description: Mapping, write) -> None:
    """Replaces the demo's dataset in `workdir/data` by `write(root)`'s: deletes the files the demo
    wrote there before (those its stamp lists; a file of the user's is never touched), writes, and
    stamps the files `write` made or rewrote together with `description` (`demo_data_is`)."""
    stamp = _claimed(workdir)
    root = os.path.join(workdir, DATA)
    for name in stamp["data_files"]:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            os.remove(path)
    _write_demo_stamp(workdir, {**stamp, "data": None, "data_files": []})
    before = _files_under(root)
    write(root)
    written = sorted(name for name, mtime in _files_under(root).items() if before.get(name) != mtime)
    _write_demo_stamp(workdir, {**stamp, "data": json.loads(json.dumps(description)), "data_files": written})
