"""The `jaxdet` command (also `python -m jaxdet`): demo, train, eval, predict, make-shapes.

    jaxdet demo                                    the main job: shapes -> train -> eval -> pictures
    jaxdet train --config vgg16_voc07 --config.data.root=/data/VOCdevkit --workdir runs/voc07
    jaxdet eval --workdir runs/demo
    jaxdet predict --workdir runs/demo photo.jpg more_photos/
    jaxdet make-shapes --out data/shapes

Configs are Python files whose `get_config(variant="")` returns an `ml_collections.ConfigDict`
(`path.py:variant` picks a variant); any field is overridden with `--config.section.field=value`.
Errors a user can fix (a typo in a key, a missing dataset, no GPU, out of memory, a diverged
loss) are printed as one paragraph saying what to do; `--traceback` shows the Python trace.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import glob
import json
import os
import shlex
import shutil
import sys
import textwrap
from typing import Any, Sequence

from jaxdet import configs

PROG = "jaxdet"
DEMO_CONFIG = "shapes_demo"
DEMO_WORKDIR = os.path.join("runs", "demo")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
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
                      f"{', '.join(sections)}); see the config file for what each field means.")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parse_like(text: str, current: Any) -> Any:
    """`text` converted to the type of the field's current value."""
    if isinstance(current, bool):
        return _parse_bool(text)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        stripped = text.strip()
        if stripped.startswith(("(", "[")):
            value = ast.literal_eval(stripped)
            items = list(value) if isinstance(value, (tuple, list)) else [value]
        else:
            items = [item for item in stripped.split(",") if item.strip()]
        if current and all(isinstance(item, str) for item in items):
            items = [_parse_like(item.strip(), current[0]) for item in items]
        return type(current)(items)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a field that is None accepts a plain string


def apply_override(config, key: str, text: str, *, config_name: str = "the config") -> None:
    """Sets `config[key]` (dotted) from its command-line text, typed like the current value.

    Raises:
      UsageError: the key is not in the config (naming close matches) or the text does not parse.
    """
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            raise _unknown_key(key, config, config_name)
        if depth < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if hasattr(current, "keys"):
        raise UsageError(f"config key {key!r} is a section, not a field; set one of its fields, e.g. "
                         f"--config.{key}.{next(iter(current.keys()), 'FIELD')}=...")
    try:
        value = _parse_like(text, current)
    except (ValueError, SyntaxError) as e:
        raise UsageError(f"--config.{key}={text}: cannot read {text!r} as a {type(current).__name__} like the "
                         f"field's current value {current!r} ({e})") from None
    try:
        node[parts[-1]] = value
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
    import ml_collections

    if args.config:
        config, name = load_config(args.config), args.config
    elif getattr(args, "workdir", None) and os.path.isfile(os.path.join(args.workdir, "config.json")):
        name = os.path.join(args.workdir, "config.json")
        with open(name) as f:
            config = ml_collections.ConfigDict(json.load(f))
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
    print(f"Results in {os.path.abspath(workdir)}:")
    for name, what in names:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            print(f"  {path:<42} {what}")


RUN_FILES = (("metrics.json", "the figures above, as JSON"), ("detections.png", "detections on held-out images"),
             ("pr_curves.png", "precision-recall curve per class"), ("loss_curve.png", "training losses"),
             ("detections_coco.json", "held-out detections, COCO results format"),
             ("tensorboard", "TensorBoard logs (tensorboard --logdir ...)"),
             ("checkpoints", "checkpoints (resume with --resume)"))


# ----------------------------------------------------------------------------------------------
# Commands


def _announce(config, devices: Sequence[Any], what: str) -> None:
    from jaxdet.training import loop, parallel

    layout = parallel.batch_layout(int(config.train.batch_size), parallel.make_mesh(devices=devices))
    if loop.is_main_process():
        print(f"training {what} for {config.train.num_steps} steps on {devices[0].platform}: {layout}", flush=True)


def _run_train(args) -> int:
    from jaxdet.training import loop

    config = _config_for(args)
    loop.check_train_settings(config)  # before anything starts or is written
    join_processes(args)
    devices = select_devices(args.device, args.num_devices)
    _announce(config, devices, f"a {config.model.kind} ({config.model.backbone})")
    if args.no_eval:
        result = loop.train(config, args.workdir, resume=args.resume, devices=devices,
                            show_progress=not args.no_progress)
        if loop.is_main_process():
            print(f"trained to step {result.final_step} in {result.train_seconds:.1f} s ({result.images_per_second:.1f} "
                  f"images/s); checkpoints in {os.path.join(args.workdir, loop.CHECKPOINTS)}")
        return 0
    metrics = loop.train_and_evaluate(config, args.workdir, resume=args.resume, devices=devices,
                                      show_progress=not args.no_progress)
    if loop.is_main_process():
        _print_summary(metrics, "jaxdet train")
        _print_files(args.workdir, RUN_FILES)
    return 0


def _require_run_dir(workdir: str) -> None:
    """UsageError unless `workdir` is a directory (eval and predict read a training run's)."""
    if not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        raise UsageError(f"--workdir {workdir} {what}: give the directory of a training run (what "
                         f"`{PROG} train --workdir DIR` or `{PROG} demo` wrote, with checkpoints/ and config.json)")


def _run_eval(args) -> int:
    from jaxdet.training import inputs, loop, parallel

    _require_run_dir(args.workdir)
    config = _config_for(args)
    join_processes(args)
    devices = select_devices(args.device, args.num_devices)
    # On every chosen device: detection splits each batch over them.
    state = parallel.replicate(loop.restore_trained(config, args.workdir, step=args.step),
                               parallel.make_mesh(devices=devices))
    metrics = loop.evaluate(config, state, inputs.load_dataset(config, args.split), args.workdir,
                            show_progress=not args.no_progress)
    if not loop.is_main_process():
        return 0
    _print_summary(metrics, f"jaxdet eval ({args.split} split, step {metrics['checkpoint_step']})")
    _print_files(args.workdir, RUN_FILES[:3] + RUN_FILES[4:5])
    return 0


def _image_files(inputs: Sequence[str]) -> list:
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(item, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise UsageError(f"folder {item!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"image {item!r} not found: give image files or folders of images")
    return files


def _run_predict(args) -> int:
    import numpy as np
    from PIL import Image

    from jaxdet.data import Record, attach_proposals, load_image, make_dataset
    from jaxdet.evaluation import draw_detections
    from jaxdet.training import loop

    _require_run_dir(args.workdir)
    config = _config_for(args)
    select_devices(args.device, args.num_devices)
    files = _image_files(args.images)
    class_names = loop.read_class_names(args.workdir)
    records = []
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as e:  # PIL raises several unrelated types for a bad file
            raise UsageError(f"{path}: not an image PIL can read ({type(e).__name__}: {e})") from None
        records.append(Record(image_id=0, height=height, width=width, boxes=np.zeros((0, 4), np.float32),
                              labels=np.zeros(0, np.int32), difficult=np.zeros(0, bool), iscrowd=np.zeros(0, bool),
                              path=path, source_id=os.path.splitext(os.path.basename(path))[0]))
    dataset = make_dataset(records, class_names)
    if config.model.kind == "fast_rcnn":
        if not config.data.get("proposals"):
            raise UsageError("a Fast R-CNN run detects on given proposals: pass --config.data.proposals=FILE with "
                             "boxes for each image's file stem (jaxdet.data.save_proposals)")
        dataset = attach_proposals(dataset, config.data.proposals)
    state = loop.restore_trained(config, args.workdir, step=args.step)
    detections, _ = loop.detect(config, state, dataset, show_progress=not args.no_progress)
    out = args.out or os.path.join(args.workdir, "predictions")
    os.makedirs(out, exist_ok=True)
    entries, used = [], set()
    for record, found in zip(dataset.records, detections):
        keep = found["scores"] >= args.score_threshold
        stem = os.path.splitext(os.path.basename(record.path))[0]
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        draw_detections(load_image(record), found["boxes"][keep], found["labels"][keep], found["scores"][keep],
                        class_names, min_side=0, path=os.path.join(out, name))
        entries.append({
            "file": record.path, "picture": os.path.join(out, name), "height": record.height, "width": record.width,
            "detections": [{"box": [float(v) for v in box], "score": float(score), "label": int(label),
                            "class": class_names[int(label)]}
                           for box, score, label in zip(found["boxes"][keep], found["scores"][keep],
                                                        found["labels"][keep])],
        })
    with open(os.path.join(out, "detections.json"), "w") as f:
        json.dump({"score_threshold": args.score_threshold, "box_format": "xyxy, original pixels",
                   "images": entries}, f, indent=1)
    total = sum(len(e["detections"]) for e in entries)
    print(f"{total} detections (score >= {args.score_threshold}) on {len(entries)} images: pictures and "
          f"detections.json in {os.path.abspath(out)}")
    return 0


def _shapes_splits(config) -> dict:
    data = config.data
    return {"train": (int(data.num_train), int(data.train_seed)), "test": (int(data.num_test), int(data.test_seed))}


def write_shapes_from_config(config, out: str, *, format: str = "voc") -> dict:
    """Writes the shapes sets of `config.data` (train and held-out test) into `out`; returns the
    splits' locations (see `jaxdet.data.write_shapes`)."""
    from jaxdet.data import ShapesConfig, write_shapes

    if config.data.dataset != "shapes":
        raise UsageError(f"make-shapes needs a shapes config (data.dataset='shapes'), got {config.data.dataset!r}")
    return write_shapes(out, _shapes_splits(config), format=format, config=ShapesConfig(**dict(config.data.shapes)))


def _run_make_shapes(args) -> int:
    config = _config_for(args, DEMO_CONFIG)
    written = write_shapes_from_config(config, args.out, format=args.format)
    counts = _shapes_splits(config)
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


def _prepare_demo_data(config, workdir: str) -> str:
    """The demo's shapes sets under workdir/data, written unless the same ones are already there."""
    root = os.path.join(workdir, "data")
    stamp_path = os.path.join(root, "shapes.json")
    stamp = {"shapes": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config.data.shapes).items()},
             "splits": {k: list(v) for k, v in _shapes_splits(config).items()}}
    stamp = json.loads(json.dumps(stamp))
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                print(f"using the shapes dataset already in {root}")
                return root
    if os.path.isdir(root):
        shutil.rmtree(root)
    print(f"writing the shapes dataset to {root} ...", flush=True)
    write_shapes_from_config(config, root)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return root


def _run_demo(args) -> int:
    from jaxdet.training import loop

    config = _config_for(args, DEMO_CONFIG)
    loop.check_train_settings(config)  # before the previous demo's files are removed
    devices = select_devices(args.device, args.num_devices)
    workdir = args.workdir
    if not args.resume:
        # The demo's own directory: a new demo replaces the previous one's run (not its data).
        for name in ("checkpoints", "tensorboard", "train_log.jsonl", "metrics.json"):
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    config.data.root = _prepare_demo_data(config, workdir)
    _announce(config, devices, "the tiny Faster R-CNN")
    metrics = loop.train_and_evaluate(config, workdir, resume=args.resume, devices=devices,
                                      show_progress=not args.no_progress)
    _print_summary(metrics, "jaxdet demo: tiny Faster R-CNN on held-out shapes")
    _print_files(workdir, RUN_FILES + (("data", "the shapes dataset (VOC layout)"),))
    return 0


# ----------------------------------------------------------------------------------------------
# The parser


DESCRIPTION = """\
jaxdet: Fast and Faster R-CNN in JAX, with RoI max pooling as a native XLA custom call.

Start with the demo: it writes a synthetic shapes dataset, trains a tiny Faster R-CNN on
the CPU (about 10 minutes on 2 cores), evaluates it on held-out images and writes its
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


def build_parser() -> argparse.ArgumentParser:
    from jaxdet.training import distributed

    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback instead of the short explanation")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="the main job: make shapes, train a tiny Faster R-CNN on them, evaluate, draw",
        formatter_class=_Formatter, epilog=CONFIG_HELP,
        description=_describe("The main job, in one command: writes the synthetic shapes dataset (train and held-out test "
                    "sets) to WORKDIR/data, trains the tiny Faster R-CNN of the shapes_demo config "
                    "(about 10 minutes on 2 CPU cores; a GPU is used when JAX finds one), evaluates it on the "
                    "held-out images (VOC07 mAP@0.5 and COCO AP), and writes metrics.json, pr_curves.png, "
                    "detections.png and loss_curve.png to WORKDIR. Each run starts afresh unless --resume.",
                              "python -m jaxdet demo"))
    _common(demo, workdir_default=DEMO_WORKDIR, workdir_help=f"where everything goes (default {DEMO_WORKDIR})")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted demo from its last checkpoint")
    demo.set_defaults(func=_run_demo)

    train = commands.add_parser(
        "train", help="train a detector from a config, then evaluate it on the held-out split",
        formatter_class=_Formatter, epilog=CONFIG_HELP,
        description=_describe("Trains the config's detector for train.num_steps steps, writing checkpoints (every "
                    "train.checkpoint_every steps and at the end), TensorBoard scalars and train_log.jsonl to "
                    "WORKDIR with a progress bar, then evaluates the final model on the config's test split and "
                    "writes metrics.json, pr_curves.png, detections.png and loss_curve.png.",
                              "jaxdet train --config tiny_shapes --workdir runs/shapes"))
    _common(train, workdir_default=None, workdir_help="the run's directory (required)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in WORKDIR")
    train.add_argument("--no-eval", action="store_true", help="train only, no evaluation at the end")
    distributed.add_arguments(train)
    train.set_defaults(func=_run_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a trained run's checkpoint (VOC mAP, COCO AP, PR curves, pictures)",
        formatter_class=_Formatter, epilog=CONFIG_HELP,
        description=_describe("Restores a checkpoint of the run in WORKDIR (the latest unless --step) and evaluates it on "
                    "the config's test split: VOC07 mAP@0.5, VOC area mAP, COCO AP, per-class AP, written to "
                    "WORKDIR/metrics.json with pr_curves.png, detections.png and detections_coco.json. The "
                    "config is the run's own (WORKDIR/config.json) unless --config is given; overrides apply "
                    "to it (e.g. --config.data.root to evaluate on data elsewhere).",
                              "jaxdet eval --workdir runs/demo"))
    _common(evaluate, workdir_default=None, workdir_help="the trained run's directory (required)")
    evaluate.add_argument("--step", type=int, help="the checkpoint's step (default: the latest)")
    evaluate.add_argument("--split", choices=("test", "train"), default="test",
                          help="which split of the config's dataset (default test)")
    distributed.add_arguments(evaluate)
    evaluate.set_defaults(func=_run_eval)

    predict = commands.add_parser(
        "predict", help="detect objects in image files or folders: PNGs with boxes and a JSON",
        formatter_class=_Formatter, epilog=CONFIG_HELP,
        description=_describe("Runs a trained run's detector on image files (or every image in folders) and writes, per "
                    "image, a PNG with the detected boxes, class names and scores, and detections.json with the "
                    "boxes (xyxy in the image's pixels), scores and classes.",
                              "jaxdet predict --workdir runs/demo runs/demo/data/JPEGImages/s1_000000.png"))
    _common(predict, workdir_default=None, workdir_help="the trained run's directory (required)")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders of images")
    predict.add_argument("--out", help="where the pictures and detections.json go (default WORKDIR/predictions)")
    predict.add_argument("--score-threshold", type=float, default=0.5,
                         help="keep detections scoring at least this (default 0.5)")
    predict.add_argument("--step", type=int, help="the checkpoint's step (default: the latest)")
    predict.set_defaults(func=_run_predict)

    shapes = commands.add_parser(
        "make-shapes", help="write the synthetic shapes dataset (VOC or COCO format)",
        formatter_class=_Formatter, epilog=CONFIG_HELP,
        description=_describe("Writes the synthetic shapes dataset: a train and a held-out test set of coloured circles, "
                    "squares and triangles on noisy backgrounds with exact boxes, as the config's data section "
                    f"describes them (default: {DEMO_CONFIG}'s; e.g. --config.data.num_train=500), in the "
                    "Pascal VOC or COCO format the readers and evaluators take.",
                              "jaxdet make-shapes --out data/shapes --config.data.num_train=500"))
    shapes.add_argument("--out", required=True, help="the directory to write (created)")
    shapes.add_argument("--format", choices=("voc", "coco"), default="voc", help="annotation format (default voc)")
    shapes.add_argument("--config", metavar="NAME[:VARIANT]", help=f"a shapes config (default {DEMO_CONFIG})")
    shapes.set_defaults(func=_run_make_shapes)
    parser.commands = {"demo": demo, "train": train, "eval": evaluate, "predict": predict, "make-shapes": shapes}
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


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def explain(error: BaseException) -> tuple:
    """(exit status, one-paragraph message) for an error a user can act on; None for a bug."""
    from jaxdet.configs import ConfigNotFound
    from jaxdet.data import DataError
    from jaxdet.training.inputs import DatasetNotFound
    from jaxdet.training.loop import CheckpointsExist, InvalidSetting, TrainingDiverged
    from jaxdet.training.weights import WeightsError

    if isinstance(error, (UsageError, InvalidSetting, ConfigNotFound)):
        return 2, f"config or command-line error: {error}"
    if isinstance(error, DeviceError):
        return 1, str(error)
    if isinstance(error, DatasetNotFound):
        return 1, str(error)
    if isinstance(error, DataError):
        return 1, (f"bad data: {error}. Fix or remove that file, or set --config.data.on_error=skip to drop "
                   "the bad images (they are counted and named in a warning); add "
                   "--config.data.check_images=true to decode every image first, so that corrupt ones are "
                   "dropped before training rather than stopping it.")
    if isinstance(error, TrainingDiverged):
        return 3, str(error)
    if isinstance(error, CheckpointsExist):
        return 1, str(error)
    if isinstance(error, WeightsError):
        return 1, f"pretrained weights do not fit the model: {error}"
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
    return textwrap.fill(f"{PROG}: error: {text}", width=100, break_on_hyphens=False, break_long_words=False)


def main(argv: Sequence[str] | None = None) -> int:
    """The `jaxdet` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    traceback = "--traceback" in argv
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
