"""The `jaxdet` command (also `python -m jaxdet`): demo, train, eval, predict, proposals, make-shapes.

    jaxdet demo                                    the main job: shapes -> train -> eval -> pictures
    jaxdet train --config vgg16_voc07 --config.data.root=/data/VOCdevkit --workdir runs/voc07
    jaxdet eval --workdir runs/demo
    jaxdet predict --workdir runs/demo photo.jpg more_photos/
    jaxdet proposals --workdir runs/demo --out runs/proposals.npz
    jaxdet make-shapes --out data/shapes

This module parses the command line, dispatches to the library (`jaxdet.experiment`,
`jaxdet.inference_files`, `jaxdet.training.inputs`) and renders its results and errors. A config
is one of jaxdet's by name or a Python file (`jaxdet.configs.load_config`); any field is
overridden with `--config.section.field=value`, parsed as ml_collections' config flags parse
them. Errors a user can fix (a typo in a key, a missing dataset, no GPU, out of memory, a full
disk or a read-only directory, a run trained with another config, a diverged loss) are printed
as one paragraph saying what to do, the config keys the library names (`config.train.num_steps`)
shown as the flags that set them (`--config.train.num_steps`); `--traceback` shows the Python
trace.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import errno
import os
import re
import shlex
import sys
import textwrap
from typing import Any, Sequence

from jaxdet import configs, host_memory, settings

PROG = "jaxdet"
DEMO_CONFIG = "shapes_demo"
DEMO_WORKDIR = os.path.join("runs", "demo")
OVERRIDE_PREFIX = "--config."


class UsageError(Exception):
    """A mistake on the command line or in the config; the message says how to fix it."""


class DeviceError(Exception):
    """The devices asked for are not there."""


# ----------------------------------------------------------------------------------------------
# Configs and overrides


def load_config(spec: str):
    """The ConfigDict of `NAME[:VARIANT]` or `PATH[:VARIANT]` (`jaxdet.configs.load_config`)."""
    try:
        return configs.load_config(spec)
    except ValueError as e:
        raise UsageError(f"config {spec}: {e}") from e


def config_keys(config, prefix: str = "") -> list:
    """Every dotted key path of a ConfigDict, sections and leaves."""
    keys = []
    for name in config.keys():
        key = f"{prefix}{name}"
        keys.append(key)
        value = config[name]
        if hasattr(value, "keys"):
            keys += config_keys(value, key + ".")
    return keys


def _unknown_key(key: str, config, config_name: str) -> UsageError:
    keys = config_keys(config)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:
        # A misspelt field in the right place or the right field in the wrong section.
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.8)][:3]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    sections = sorted(k for k in keys if "." not in k)
    return UsageError(f"unknown config key {key!r} in {config_name}.{hint} Overrides are written "
                      f"--config.SECTION.FIELD=VALUE with a field the config already has (its sections: "
                      f"{', '.join(sections)}); jaxdet/configs/base.py explains each field.")


def _parse_tuple(text: str, current: tuple) -> tuple:
    """A tuple field's text: a Python literal as ml_collections' TupleParser reads it ("4,8,16",
    "(0.5, 1.0)"), words separated by commas ("circle,ring"), or "" for the empty tuple; items
    that are words take the type of the field's first item."""
    from ml_collections.config_flags.tuple_parser import TupleParser

    if not text.strip():
        return ()
    try:
        items = TupleParser().parse(text)
    except ValueError:
        items = ()
    if all(isinstance(item, str) for item in items):
        words = [word.strip() for word in text.strip().strip("()[]").split(",") if word.strip()]
        items = tuple(_parse_value(word, type(current[0]), current[0]) for word in words) if current else tuple(words)
    return type(current)(items)


def _parse_value(text: str, field_type: type, current: Any) -> Any:
    """`text` as a value of `field_type`, with the parsers ml_collections' config flags use
    (absl's for bool, int, float and str; a Python literal, else the text, for a None field)."""
    from absl import flags

    parsers = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
               str: flags.ArgumentParser()}
    if field_type in parsers:
        return parsers[field_type].parse(text)
    if field_type in (tuple, list):
        return _parse_tuple(text, current)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a field that is None accepts a plain string


def _base_value(key: str) -> Any:
    """The value of `key` in jaxdet/configs/base.py, or None where it has none."""
    from jaxdet.configs import base
    from ml_collections.config_flags import config_path

    try:
        return config_path.get_value(key, base.get_config())
    except (AttributeError, KeyError, IndexError, ValueError):
        return None


def apply_override(config, key: str, text: str, *, config_name: str = "the config") -> None:
    """Sets `config[key]` (dotted) from its command-line text, typed like the current value (a field
    that is None, like tiny_shapes' data.min_size, like its value in the base config, or "None"); a
    pair-valued field (`jaxdet.settings.PAIRS`) given one number of a size is its square.

    Raises:
      UsageError: the key is not in the config (naming close matches) or the text does not parse.
      InvalidSetting: a pair-valued field given another number of items.
    """
    from ml_collections.config_flags import config_path

    try:
        current = config_path.get_value(key, config)
    except (AttributeError, KeyError, IndexError, ValueError):
        raise _unknown_key(key, config, config_name) from None
    if hasattr(current, "keys"):
        raise UsageError(f"config key {key!r} is a section, not a field; set one of its fields, e.g. "
                         f"--config.{key}.{next(iter(current.keys()), 'FIELD')}=...")
    field_type, like = config_path.get_type(key, config), f"like the field's current value {current!r}"
    known = _base_value(key) if current is None and text.strip() != "None" else None
    if known is not None:
        field_type, like = type(known), f"(or None) like the field's value {known!r} in jaxdet/configs/base.py"
    try:
        value = _parse_value(text, field_type, current)
    except (ValueError, SyntaxError) as e:
        name = field_type.__name__
        raise UsageError(f"--config.{key}={text}: cannot read {text!r} as a{'n' if name[0] in 'aeiou' else ''} "
                         f"{name} {like} ({e})") from None
    if key in settings.PAIRS and isinstance(value, tuple):
        value = settings.as_pair(key, value)
    try:
        config_path.set_value(key, config, value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config.{key}={text}: {e}") from None


def split_overrides(argv: Sequence[str]) -> tuple:
    """(the other arguments, [(key, text)]) from `--config.k=v` and `--config.k v` arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX):]
            if "=" in body:
                key, text = body.split("=", 1)
            elif i + 1 < len(argv):
                key, text = body, argv[i + 1]
                i += 1
            else:
                raise UsageError(f"{arg} needs a value: {arg}=VALUE")
            overrides.append((key, text))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _config_for(args, default_spec: str | None = None):
    """The command's config: --config, else the work directory's config.json, else `default_spec`."""
    from jaxdet import workdir

    saved = workdir.read_config(args.workdir) if getattr(args, "workdir", None) else None
    if args.config:
        config, name = load_config(args.config), args.config
    elif saved is not None:
        config, name = saved, os.path.join(args.workdir, workdir.CONFIG)
    elif default_spec is not None:
        config, name = load_config(default_spec), default_spec
    else:
        where = f" and {args.workdir} holds no config.json from a training run" if getattr(args, "workdir", None) else ""
        raise UsageError(f"no config given{where}: pass --config NAME or PATH, e.g. --config tiny_shapes")
    for key, text in args.overrides:
        apply_override(config, key, text, config_name=name)
    return config


# ----------------------------------------------------------------------------------------------
# Devices


def join_processes(args) -> None:
    """Joins the other processes of a multi-host run (flags or JAX_* environment; nothing with one)."""
    from jaxdet.training import distributed

    if hasattr(args, "num_processes"):
        try:
            distributed.initialize(distributed.settings_from_args(args))
        except ValueError as e:
            raise UsageError(str(e)) from None


def select_devices(device: str, num_devices: int | None) -> list:
    """The jax devices to run on: the platform asked for ("auto": JAX's default, a GPU when it finds
    one), all of them or `num_devices` of them (the same number from each process).

    Raises:
      DeviceError: no GPU when one was asked for, or fewer devices than asked for.
    """
    import jax

    if device == "cpu":
        # Before any backend starts: a GPU JAX would otherwise initialise (and reserve memory on).
        jax.config.update("jax_platforms", "cpu")
    if device == "gpu":
        try:
            devices = jax.devices("gpu")
        except RuntimeError:
            found = ", ".join(sorted({d.platform for d in jax.devices()}))
            raise DeviceError(
                f"no GPU found: --device gpu asked for one, but JAX sees only {found} devices. Check that "
                "`nvidia-smi` lists the GPU and that JAX was installed with CUDA support (pip install "
                "\"jax[cuda12]\"), and that CUDA_VISIBLE_DEVICES does not hide it; or run on the CPU with "
                "--device cpu (the default, --device auto, uses a GPU whenever JAX finds one).") from None
    else:
        devices = jax.devices("cpu") if device == "cpu" else jax.devices()
    if num_devices is not None:
        if num_devices < 1:
            raise UsageError(f"--num-devices must be at least 1, got {num_devices}")
        if num_devices > len(devices):
            raise DeviceError(
                f"--num-devices {num_devices} asked for more devices than JAX sees ({len(devices)} "
                f"{devices[0].platform} device{'s' if len(devices) > 1 else ''}). Use at most {len(devices)}; "
                "to simulate several CPU devices set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "before starting.")
    from jaxdet.training.parallel import make_mesh

    # make_mesh takes the same number of devices from each process of a multi-host run.
    return list(make_mesh(num_devices, devices=devices).devices.flat)


# ----------------------------------------------------------------------------------------------
# Output


def _print_summary(metrics: dict, title: str) -> None:
    from jaxdet.reporting import summary_table

    rows = []
    for key, name in (("steps", "training steps"), ("batch_layout", "batch"),
                      ("train_seconds", "training time (s)"), ("first_step_seconds", "  of which compiling (s)"),
                      ("train_images_per_second", "training images/s"), ("eval_images", "held-out images"),
                      ("voc07_map", "VOC07 mAP@0.5 (11-point)"), ("voc_map", "VOC mAP@0.5 (area)"),
                      ("coco_ap", "COCO AP@[.5:.95]"), ("coco_ap50", "COCO AP50"), ("coco_ap75", "COCO AP75"),
                      ("eval_images_per_second", "detection images/s")):
        if key in metrics:
            value = metrics[key]
            # None: no such figure (metrics.json's null), e.g. no training rate after a single step.
            timing = key.endswith(("seconds", "per_second")) and value is not None
            rows.append((name, f"{value:.1f}" if timing else value))
    for name, ap in metrics.get("per_class_ap", {}).items():
        rows.append((f"AP {name}", ap))
    print(summary_table(rows, title=title))


def _print_files(workdir: str, names: Sequence[str]) -> None:
    from jaxdet.workdir import DESCRIPTIONS

    print(f"Results in {os.path.abspath(workdir)}:")
    for name in names:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            print(f"  {path:<42} {DESCRIPTIONS[name]}")


def _announce(config, devices: Sequence[Any], what: str) -> None:
    from jaxdet.training import distributed, parallel

    layout = parallel.batch_layout(int(config.train.batch_size), parallel.make_mesh(devices=devices))
    if distributed.is_main_process():
        print(f"training {what} for {config.train.num_steps} steps on {devices[0].platform}: {layout}", flush=True)


# ----------------------------------------------------------------------------------------------
# Commands


def _run_train(args) -> int:
    from jaxdet import experiment, workdir
    from jaxdet.training import distributed, loop

    config = _config_for(args)
    loop.check_train_settings(config)  # before anything starts or is written
    join_processes(args)
    devices = select_devices(args.device, args.num_devices)
    _announce(config, devices, f"a {config.model.kind} ({config.model.backbone})")
    if args.no_eval:
        result = loop.train(config, args.workdir, resume=args.resume, devices=devices,
                            show_progress=not args.no_progress)
        if distributed.is_main_process():
            print(f"trained to step {result.final_step} in {result.train_seconds:.1f} s ({result.images_per_second:.1f} "
                  f"images/s); checkpoints in {workdir.checkpoint_dir(args.workdir)}")
        return 0
    metrics = experiment.train_and_evaluate(config, args.workdir, resume=args.resume, devices=devices,
                                            show_progress=not args.no_progress)
    if distributed.is_main_process():
        _print_summary(metrics, "jaxdet train")
        _print_files(args.workdir, [name for name in workdir.DESCRIPTIONS if name != workdir.DATA])
    return 0


def _require_run_dir(workdir: str) -> None:
    """UsageError unless `workdir` is a directory (eval and predict read a training run's)."""
    if not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        raise UsageError(f"--workdir {workdir} {what}: give the directory of a training run (what "
                         f"`{PROG} train --workdir DIR` or `{PROG} demo` wrote, with checkpoints/ and config.json)")


def _run_eval(args) -> int:
    from jaxdet import experiment, workdir
    from jaxdet.training import distributed

    _require_run_dir(args.workdir)
    config = _config_for(args)
    join_processes(args)
    devices = select_devices(args.device, args.num_devices)
    out = args.out or args.workdir
    metrics = experiment.evaluate_checkpoint(config, args.workdir, step=args.step, split=args.split,
                                             devices=devices, show_progress=not args.no_progress, out=out)
    if distributed.is_main_process():
        _print_summary(metrics, f"jaxdet eval ({args.split} split, step {metrics['checkpoint_step']})")
        _print_files(out, workdir.EVALUATION_FILES)
    return 0


def _run_predict(args) -> int:
    from jaxdet import inference_files, workdir
    from jaxdet.training.checkpoints import restore_trained
    from jaxdet.training.inputs import with_class_names

    _require_run_dir(args.workdir)
    class_names = workdir.read_class_names(args.workdir)
    config = with_class_names(_config_for(args), class_names)
    select_devices(args.device, args.num_devices)
    files = inference_files.image_files(args.images)
    out = args.out or os.path.join(args.workdir, workdir.PREDICTIONS)
    found = inference_files.predict_files(
        config, restore_trained(config, args.workdir, step=args.step), files.images, class_names,
        out, score_threshold=args.score_threshold, show_progress=not args.no_progress)
    total = sum(len(e["detections"]) for e in found["images"])
    print(f"{total} detections (score >= {args.score_threshold}) on {len(found['images'])} images: pictures and "
          f"{inference_files.DETECTIONS_FILE} in {os.path.abspath(out)}")
    skipped = [entry["reason"] for entry in found["skipped"]]
    if skipped:
        print(textwrap.fill(f"skipped {len(skipped)} image file{'s' if len(skipped) > 1 else ''} that cannot be "
                            f"read: {_a_few(skipped, '; ')}", width=100, break_on_hyphens=False,
                            break_long_words=False))
    if files.others:
        print(textwrap.fill(f"left out {len(files.others)} file{'s' if len(files.others) > 1 else ''} that are not "
                            f"images ({', '.join(inference_files.IMAGE_EXTENSIONS)}): "
                            f"{_a_few([os.path.basename(p) for p in files.others], ', ')}", width=100,
                            break_on_hyphens=False, break_long_words=False))
    return 0


def _a_few(items: Sequence[str], separator: str, shown: int = 5) -> str:
    """The first `shown` of `items` joined by `separator`, and how many more there are."""
    more = f"{separator}and {len(items) - shown} more" if len(items) > shown else ""
    return separator.join(items[:shown]) + more


def _run_proposals(args) -> int:
    from jaxdet import inference_proposals
    from jaxdet.training.inputs import SPLITS

    _require_run_dir(args.workdir)
    config = _config_for(args)
    select_devices(args.device, None)
    summary = inference_proposals.write_run_proposals(config, args.workdir, args.out, splits=args.split or SPLITS,
                                                      step=args.step, show_progress=not args.no_progress)
    splits = ", ".join(f"{split} {count}" for split, count in summary.images.items())
    path = os.path.abspath(summary.path)
    print(textwrap.fill(
        f"wrote the RPN proposals of {len(summary.counts)} images ({splits}) of the run in {args.workdir} (step "
        f"{summary.step}) to {path}: {summary.counts.mean():.1f} per image on average (min {summary.counts.min()}, "
        f"max {summary.counts.max()}; at most rpn.test_post_nms = {summary.post_nms}), in original-image pixels. "
        f"Train a Fast R-CNN on them with a fast_rcnn config and --config.data.proposals={path}, on the same "
        f"data (e.g. jaxdet train --config fast_rcnn_vgg16 --config.data.proposals={path} --config.data.root=...).",
        width=100, break_on_hyphens=False, break_long_words=False))
    return 0


def _run_make_shapes(args) -> int:
    from jaxdet.training.inputs import shapes_splits, write_shapes_dataset

    config = _config_for(args, DEMO_CONFIG)
    written = write_shapes_dataset(config, args.out, format=args.format)
    counts = shapes_splits(config)
    for split, where in written.items():
        print(f"{split}: {counts[split][0]} images (seed {counts[split][1]}) -> {where}")
    print(f"train on them with: {shapes_train_command(args)}")
    if args.format == "coco":
        print("(data.dataset=coco trains on the split 'train' and evaluates on 'test', the two written above)")
    return 0


# What make-shapes' overrides change only in the files it writes: the train command reads those files.
_WRITE_ONLY_KEYS = ("data.root", "data.dataset", "data.num_train", "data.num_test", "data.train_seed",
                    "data.test_seed")


def shapes_train_command(args) -> str:
    """The command line (one, pasteable into a shell) that trains on the shapes make-shapes wrote."""
    words = [PROG, "train", "--config", args.config or DEMO_CONFIG]
    # The rest of the user's overrides (class names, image size, the model) hold for training too.
    words += [f"--config.{key}={text}" for key, text in args.overrides if key not in _WRITE_ONLY_KEYS]
    if args.format == "coco":
        words.append("--config.data.dataset=coco")
    words += [f"--config.data.root={args.out}", "--workdir", os.path.join("runs", "shapes")]
    return " ".join(shlex.quote(w) for w in words)


def _run_demo(args) -> int:
    from jaxdet import experiment, workdir
    from jaxdet.training import loop

    config = _config_for(args, DEMO_CONFIG)
    loop.check_train_settings(config)  # before the previous demo's files are removed
    devices = select_devices(args.device, args.num_devices)
    workdir.claim_for_demo(args.workdir)  # refuses a directory with files the demo did not write
    if not args.resume:
        workdir.clear_demo_run(args.workdir)  # a new demo replaces the previous one's run (not its data)
    config.data.root, reused = experiment.demo_data(config, args.workdir)
    print(f"{'using the shapes dataset already in' if reused else 'wrote the shapes dataset to'} {config.data.root}",
          flush=True)
    _announce(config, devices, "the tiny Faster R-CNN")
    metrics = experiment.train_and_evaluate(config, args.workdir, resume=args.resume, devices=devices,
                                            show_progress=not args.no_progress)
    _print_summary(metrics, "jaxdet demo: tiny Faster R-CNN on held-out shapes")
    _print_files(args.workdir, workdir.DESCRIPTIONS)
    return 0


# ----------------------------------------------------------------------------------------------
# The parser


DESCRIPTION = """\
jaxdet: Fast and Faster R-CNN in JAX, with RoI max pooling as a native XLA custom call.

Start with the demo: it writes a synthetic shapes dataset, trains a tiny Faster R-CNN on
the CPU (about 5 minutes on 2 cores), evaluates it on held-out images and writes its
mAP, precision-recall curves, a picture of its detections and its loss curve to runs/demo:

    python -m jaxdet demo

Then train on your own data with one of jaxdet's configs (or a config file of your own),
overriding any of its fields on the command line, and look at the results with eval and predict:

    jaxdet train --config vgg16_voc07 \\
        --config.data.root=/data/VOCdevkit --config.model.pretrained=/weights/vgg16.pth --workdir runs/voc07
    jaxdet eval --workdir runs/voc07
    jaxdet predict --workdir runs/voc07 my_photos/

Each command has its own help: jaxdet COMMAND --help.
"""

CONFIG_HELP = """\
config options:
  --config NAME[:VARIANT]  one of jaxdet's configs (shapes_demo, tiny_shapes, vgg16_voc07,
                           vgg16_coco, fast_rcnn_vgg16), or the path of a Python config file whose
                           get_config() returns the experiment's ConfigDict; :smoke picks a
                           config's smoke variant
  --config.SECTION.FIELD=VALUE
                           override one field, e.g. --config.train.num_steps=500
                           --config.optimizer.learning_rate=3e-4 --config.data.root=/data/VOCdevkit
                           --config.model.anchor_scales=4,8,16 (typed like the field's value)
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


def _describe(text: str, example: str = "") -> str:
    """A command's description filled to the help's width, its example kept on one line."""
    return textwrap.fill(text, width=96) + (f"\n\nexample:\n  {example}" if example else "")


def _common(parser: argparse.ArgumentParser, *, workdir_default: str | None, workdir_help: str) -> None:
    parser.add_argument("--config", metavar="NAME[:VARIANT]", help="the experiment's config: a name or a file (see below)")
    parser.add_argument("--workdir", default=workdir_default, required=workdir_default is None, help=workdir_help)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="where to run: auto (a GPU when JAX finds one, else the CPU), cpu, or gpu "
                             "(an error when there is none); default auto")
    parser.add_argument("--num-devices", type=int, metavar="N",
                        help="train and evaluate data-parallel on the first N devices of that kind (default: "
                             "all of them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def _command(commands, name: str, *, help: str, description: str, example: str, run) -> argparse.ArgumentParser:
    """A subcommand with its help: `description` filled to the help's width, `example` on one line."""
    command = commands.add_parser(name, help=help, formatter_class=_Formatter, epilog=CONFIG_HELP,
                                  description=_describe(description, example))
    command.set_defaults(func=run)
    return command


def _add_training_commands(commands) -> dict:
    """demo and train."""
    from jaxdet.training import distributed

    demo = _command(
        commands, "demo", run=_run_demo, example="python -m jaxdet demo",
        help="the main job: make shapes, train a tiny Faster R-CNN on them, evaluate, draw",
        description="The main job, in one command: writes the synthetic shapes dataset (train and held-out test "
                    "sets) to WORKDIR/data, trains the tiny Faster R-CNN of the shapes_demo config "
                    "(about 5 minutes on 2 CPU cores; a GPU is used when JAX finds one), evaluates it on the "
                    "held-out images (VOC07 mAP@0.5 and COCO AP), and writes metrics.json, pr_curves.png, "
                    "detections.png and loss_curve.png to WORKDIR. Each run starts afresh unless --resume. WORKDIR "
                    "must be new, empty or a previous demo's (stamped demo.json): the demo refuses any other "
                    "directory, and replaces only files it wrote.")
    _common(demo, workdir_default=DEMO_WORKDIR, workdir_help=f"where everything goes (default {DEMO_WORKDIR})")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo from its last checkpoint")
    train = _command(
        commands, "train", run=_run_train, example="jaxdet train --config tiny_shapes --workdir runs/shapes",
        help="train a detector from a config, then evaluate it on the held-out split",
        description="Trains the config's detector for train.num_steps steps, writing checkpoints (every "
                    "train.checkpoint_every steps and at the end), TensorBoard scalars and train_log.jsonl to "
                    "WORKDIR with a progress bar, then evaluates the final model on the config's test split and "
                    "writes metrics.json, pr_curves.png, detections.png and loss_curve.png.")
    _common(train, workdir_default=None, workdir_help="the run's directory (required)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in WORKDIR")
    train.add_argument("--no-eval", action="store_true", help="train only, no evaluation at the end")
    distributed.add_arguments(train)
    return {"demo": demo, "train": train}


def _add_run_commands(commands) -> dict:
    """eval and predict, which read a trained run."""
    from jaxdet.training import distributed

    evaluate = _command(
        commands, "eval", run=_run_eval, example="jaxdet eval --workdir runs/demo",
        help="evaluate a trained run's checkpoint (VOC mAP, COCO AP, PR curves, pictures)",
        description="Restores a checkpoint of the run in WORKDIR (the latest unless --step) and evaluates it on "
                    "the config's test split: VOC07 mAP@0.5, VOC area mAP, COCO AP, per-class AP, written to "
                    "WORKDIR/metrics.json with pr_curves.png, detections.png and detections_coco.json. The "
                    "config is the run's own (WORKDIR/config.json) unless --config is given; overrides apply "
                    "to it (e.g. --config.data.root to evaluate on data elsewhere).")
    _common(evaluate, workdir_default=None, workdir_help="the trained run's directory (required)")
    evaluate.add_argument("--step", type=int, help="the checkpoint's step (default: the latest)")
    evaluate.add_argument("--out", metavar="DIR",
                          help="where the evaluation's files go (created; default WORKDIR): e.g. when WORKDIR is "
                               "read-only")
    evaluate.add_argument("--split", choices=("test", "train"), default="test",
                          help="which split of the config's dataset (default test)")
    distributed.add_arguments(evaluate)
    predict = _command(
        commands, "predict", run=_run_predict,
        example="jaxdet predict --workdir runs/demo runs/demo/data/JPEGImages/s1_000000.png",
        help="detect objects in image files or folders: PNGs with boxes and a JSON",
        description="Runs a trained run's detector on image files (or every image in folders) and writes, per "
                    "image, a PNG with the detected boxes, class names and scores, and detections.json with the "
                    "boxes (xyxy in the image's pixels), scores and classes.")
    _common(predict, workdir_default=None, workdir_help="the trained run's directory (required)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders of images")
    predict.add_argument("--out", help="where the pictures and detections.json go (default WORKDIR/predictions)")
    predict.add_argument("--score-threshold", type=float, default=0.5,
                         help="keep detections scoring at least this (default 0.5)")
    predict.add_argument("--step", type=int, help="the checkpoint's step (default: the latest)")
    proposals = _command(
        commands, "proposals", run=_run_proposals,
        example="jaxdet proposals --workdir runs/demo --out runs/demo_proposals.npz",
        help="save a trained Faster R-CNN's RPN proposals for every image: the file a Fast R-CNN trains on",
        description="Runs the RPN and test-time proposal layer of the Faster R-CNN run in WORKDIR (its checkpoint, "
                    "the latest unless --step) over every image of the train and test splits of the run's dataset "
                    "(or of another one, given with --config.data.* overrides), and saves the proposals in "
                    "original-image pixels, keyed by image file stem (COCO: image id), as the .npz a fast_rcnn "
                    "config's data.proposals reads. Each image keeps at most rpn.test_post_nms proposals "
                    "(py-faster-rcnn gives its Fast R-CNN 2000: --config.rpn.test_post_nms=2000).")
    proposals.add_argument("--config", metavar="NAME[:VARIANT]",
                           help="a config instead of the run's own config.json (see below)")
    proposals.add_argument("--workdir", required=True, help="the trained Faster R-CNN run's directory (required)")
    proposals.add_argument("--out", required=True, help="the .npz file to write (its folder must exist)")
    proposals.add_argument("--split", choices=("train", "test"), action="append",
                           help="a split to propose on; repeat for both (default: train and test, one file)")
    proposals.add_argument("--step", type=int, help="the checkpoint's step (default: the latest)")
    proposals.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                           help="where to run: auto (a GPU when JAX finds one, else the CPU), cpu, or gpu; default auto")
    proposals.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    return {"eval": evaluate, "predict": predict, "proposals": proposals}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback instead of the short explanation")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = {**_add_training_commands(commands), **_add_run_commands(commands)}
    shapes = _command(
        commands, "make-shapes", run=_run_make_shapes,
        example="jaxdet make-shapes --out data/shapes --config.data.num_train=500",
        help="write the synthetic shapes dataset (VOC or COCO format)",
        description="Writes the synthetic shapes dataset: a train and a held-out test set of coloured circles, "
                    "squares and triangles on noisy backgrounds with exact boxes, as the config's data section "
                    f"describes them (default: {DEMO_CONFIG}'s; e.g. --config.data.num_train=500), in the "
                    "Pascal VOC or COCO format the readers and evaluators take.")
    shapes.add_argument("--out", required=True, help="the directory to write (created)")
    shapes.add_argument("--format", choices=("voc", "coco"), default="voc", help="annotation format (default voc)")
    shapes.add_argument("--config", metavar="NAME[:VARIANT]", help=f"a shapes config (default {DEMO_CONFIG})")
    parser.commands["make-shapes"] = shapes
    return parser


def _suggest_option(parser: argparse.ArgumentParser, command: str | None, unknown: Sequence[str]) -> str:
    target = parser.commands.get(command, parser)
    options = [o for action in target._actions for o in action.option_strings if o.startswith("--")]
    hints = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], options, n=2, cutoff=0.6)
        if close:
            hints.append(f"{arg}: did you mean {' or '.join(close)}?")
    return (" " + " ".join(hints)) if hints else ""


# ----------------------------------------------------------------------------------------------
# Errors a user meets, as one paragraph each


# A config key as the library names it (`config.train.num_steps`), not already a flag or a file name.
_CONFIG_KEY = re.compile(r"(?<![\w./-])config\.(?=[a-z_]\w*\.[a-z_])")


def as_flags(text: str) -> str:
    """`text` with each config key the library names (`config.section.field`) written as the
    command-line flag that sets it (`--config.section.field`)."""
    return _CONFIG_KEY.sub(OVERRIDE_PREFIX, text)


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def explain(error: BaseException) -> tuple:
    """(exit status, one-paragraph message) for an error a user can act on; None for a bug."""
    from jaxdet.configs import ConfigNotFound
    from jaxdet.data import DataError
    from jaxdet.inference_files import ImageFilesError
    from jaxdet.inference_proposals import ProposalsError
    from jaxdet.training.inputs import DatasetNotFound
    from jaxdet.settings import InvalidSetting
    from jaxdet.training.checkpoints import CheckpointMismatch
    from jaxdet.training.loop import CheckpointsExist, TrainingDiverged
    from jaxdet.training.weights import WeightsError
    from jaxdet.workdir import WRITE_FAULTS, WorkdirInUse, write_fault

    if isinstance(error, (UsageError, InvalidSetting, ConfigNotFound, ImageFilesError, ProposalsError)):
        return 2, f"config or command-line error: {error}"
    if isinstance(error, (DeviceError, DatasetNotFound, CheckpointsExist, WorkdirInUse)):
        return 1, str(error)
    if isinstance(error, CheckpointMismatch):
        return 2, str(error)
    if isinstance(error, DataError):
        return 1, (f"bad data: {error}. Fix or remove that file, or set --config.data.on_error=skip to leave out "
                   "the images with bad data (each is named in a warning, and counted); "
                   "--config.data.check_images=true also decodes every image while the dataset is read, to find "
                   "all the corrupt ones before training.")
    if isinstance(error, TrainingDiverged):
        return 3, str(error)
    if isinstance(error, WeightsError):
        return 1, f"pretrained weights do not fit the model: {error}"
    fault = write_fault(error)
    if fault is not None:
        code, path = fault
        what, fix = WRITE_FAULTS[code]
        return 1, (f"cannot write {path or 'a file'}: {what} ({errno.errorcode[code]}). To fix it, {fix} (eval: "
                   "--out DIR puts its files elsewhere; predict: --out DIR). Files written before, checkpoints "
                   "included, are intact: a training run continues with --resume.")
    if _out_of_memory(error):
        return 1, ("out of memory: the model and a batch do not fit in the device's memory "
                   f"({str(error).splitlines()[0][:200]}). Lower --config.train.batch_size (and the learning rate "
                   "with it), or the image size (--config.data.min_size / --config.data.max_size), or compute in "
                   "bfloat16 (--config.model.compute_dtype=bfloat16); on a GPU also check that no other process "
                   "holds its memory (nvidia-smi). Checkpoints already written are intact: continue with --resume.")
    if isinstance(error, FileNotFoundError):
        return 1, f"file not found: {error}"
    if isinstance(error, ValueError):
        return 2, f"invalid setting: {error} (--traceback shows where it was raised)"
    return None


def _paragraph(text: str) -> str:
    return textwrap.fill(f"{PROG}: error: {as_flags(text)}", width=100, break_on_hyphens=False,
                         break_long_words=False)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A library warning as the command shows it: its category and text, config keys as flags."""
    return f"{PROG}: {category.__name__}: {as_flags(str(message))}\n"


def requested_device(argv: Sequence[str]) -> str:
    """The --device of a command line ("--device cpu", "--device=cpu", or an abbreviation the
    parser accepts, such as "--d cpu"; the last one given), read before the parser runs;
    "auto" when there is none."""
    device = "auto"
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if len(flag) > len("--") and "--device".startswith(flag):
            if equals:
                device = value
            elif i + 1 < len(argv):
                device = argv[i + 1]
    return device


def main(argv: Sequence[str] | None = None) -> int:
    """The `jaxdet` command; returns the exit status."""
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    host_memory.retain_freed_memory_without_gpu(requested_device(argv))  # before JAX starts its threads
    parser = build_parser()
    traceback = "--traceback" in argv
    formatwarning, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        rest, overrides = split_overrides(argv)
        args, unknown = parser.parse_known_args(rest)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}.{_suggest_option(parser, args.command, unknown)}")
        args.overrides = overrides
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted. Checkpoints already written are intact: rerun the same command with "
              "--resume to continue.", file=sys.stderr)
        return 130
    except Exception as error:  # the one place errors become messages
        explained = None if traceback else explain(error)
        if explained is None:
            raise
        status, message = explained
        print(_paragraph(message), file=sys.stderr)
        return status
    finally:
        warnings.formatwarning = formatwarning
