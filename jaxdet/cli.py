"""The `jaxdet` command (also `python -m jaxdet`): demo, train, eval, predict, proposals, make-shapes.

    jaxdet demo                                    the main job: shapes -> train -> eval -> pictures
    jaxdet train --config vgg16_voc07 --config.data.root=/data/VOCdevkit --workdir runs/voc07

Parses and dispatches: the library does each command's work (`jaxdet.experiment`, `jaxdet.inference`,
`jaxdet.data`) and renders its results (`jaxdet.reporting`); `--config.section.field=value` overrides
are `jaxdet.overrides`'. An error a user can fix (`jaxdet.errors.JaxdetError`) is printed as its
message, one paragraph, config keys as flags; `--traceback` shows the Python trace.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys
import textwrap
import warnings
from typing import Sequence

from jaxdet import data, distributed, experiment, host_memory, inference, reporting, workdir
from jaxdet.errors import user_error
from jaxdet.overrides import HELP as OVERRIDES_HELP, as_flags, config_for, split_overrides

PROG = "jaxdet"
DEMO_CONFIG = "shapes_demo"
DEMO_WORKDIR = os.path.join("runs", "demo")


def _config(args, default_spec: str | None = None):
    return config_for(args.config, getattr(args, "workdir", None), args.overrides, default_spec)


def _where(args) -> dict:
    """Where and how a command runs: its devices, its progress bars, its processes (train and eval)."""
    where = dict(device=args.device, num_devices=args.num_devices, show_progress=not args.no_progress)
    return {**where, "processes": distributed.settings_from_args(args)} if hasattr(args, "num_processes") else where


def _run_train(args) -> int:
    metrics = experiment.run_train(_config(args), args.workdir, resume=args.resume, evaluate=not args.no_eval,
                                   **_where(args))
    if distributed.is_main_process() and args.no_eval:
        print(reporting.trained_line(metrics, workdir.checkpoint_dir(args.workdir)))
    elif distributed.is_main_process():
        print(reporting.run_summary(metrics, "jaxdet train"))
        print(reporting.files_list(args.workdir, [n for n in workdir.DESCRIPTIONS if n != workdir.DATA]))
    return 0


def _run_eval(args) -> int:
    workdir.require_run_dir(args.workdir)  # before its config.json is looked for
    metrics = experiment.run_eval(_config(args), args.workdir, step=args.step, split=args.split,
                                  out=(out := args.out or args.workdir), **_where(args))
    if distributed.is_main_process():
        print(reporting.run_summary(metrics, f"jaxdet eval ({args.split} split, step {metrics['checkpoint_step']})"))
        print(reporting.files_list(out, workdir.EVALUATION_FILES))
    return 0


def _run_predict(args) -> int:  # no --workdir: --config's model.pretrained (else detect_run_files says what to give)
    if args.workdir:
        workdir.require_run_dir(args.workdir)
    found, files, out = inference.detect_run_files(_config(args) if args.config or args.workdir else None,
                                                   args.workdir, args.images, out=args.out, step=args.step,
                                                   score_threshold=args.score_threshold, **_where(args))
    print(reporting.predictions_summary(found, files.others, out, inference.files.DETECTIONS_FILE,
                                        inference.files.IMAGE_EXTENSIONS))
    return 0


def _run_proposals(args) -> int:  # --method rpn (the default with --workdir): a run's RPN; selective-search: no run
    if rpn := inference.proposals_method(args.method, args.workdir, args.mode, args.max_proposals) == "rpn":
        workdir.require_run_dir(args.workdir)  # before its config.json is looked for
    how = (dict(workdir=args.workdir, step=args.step, **_where(args)) if rpn else
           dict(mode=args.mode, max_proposals=args.max_proposals, show_progress=not args.no_progress))
    write = inference.write_run_proposals if rpn else inference.write_selective_search_proposals
    summary = write(_config(args), out=args.out, splits=args.split or data.SPLITS, **how)
    print(reporting.proposals_summary(summary, args.workdir))
    return 0


def _run_make_shapes(args) -> int:
    written = experiment.make_shapes(config := _config(args, DEMO_CONFIG), args.out, format=args.format)
    command = reporting.shapes_train_command(args.config or DEMO_CONFIG, args.overrides, args.format, args.out)
    print(reporting.shapes_summary(written, data.shapes_splits(config), command, args.format))
    return 0


def _run_demo(args) -> int:
    metrics = experiment.run_demo(_config(args, DEMO_CONFIG), args.workdir, resume=args.resume, **_where(args))
    print(reporting.run_summary(metrics, "jaxdet demo: tiny Faster R-CNN on held-out shapes"))
    print(reporting.files_list(args.workdir, workdir.DESCRIPTIONS))
    return 0


DESCRIPTION = """\
jaxdet: Fast and Faster R-CNN in JAX, with RoI max pooling as a native XLA custom call.

Start with the demo: it writes a synthetic shapes dataset, trains a tiny Faster R-CNN on the CPU
(about 5 minutes on 2 cores), evaluates it on held-out images and writes its mAP, precision-recall
curves, a picture of its detections and its loss curve to runs/demo:

    python -m jaxdet demo

Then train on your own data with one of jaxdet's configs (or a config file of your own),
overriding any of its fields on the command line, and look at the results with eval and predict:

    jaxdet train --config vgg16_voc07 \\
        --config.data.root=/data/VOCdevkit --config.model.pretrained=/weights/vgg16.pth --workdir runs/voc07
    jaxdet eval --workdir runs/voc07
    jaxdet predict --workdir runs/voc07 my_photos/

Each command has its own help: jaxdet COMMAND --help.
"""

_FORMATTER = functools.partial(argparse.RawDescriptionHelpFormatter, max_help_position=30, width=100)


COMMANDS = {  # name -> (what it runs, the one-line help, the description, an example)
    "demo": (_run_demo, "the main job: make shapes, train a tiny Faster R-CNN on them, evaluate, draw",
        "The main job, in one command: writes the synthetic shapes dataset (train and held-out test sets) to "
        f"WORKDIR/data, trains the tiny Faster R-CNN of the {DEMO_CONFIG} config (about 5 minutes on 2 CPU "
        "cores; a GPU is used when JAX finds one), evaluates it on the held-out images (VOC07 mAP@0.5 and COCO AP), "
        "and writes metrics.json, pr_curves.png, detections.png and loss_curve.png to WORKDIR. Each run starts afresh "
        "unless --resume. WORKDIR must be new, empty or a previous demo's (stamped demo.json): the demo refuses any "
        "other directory, and replaces only files it wrote.",
        "python -m jaxdet demo"),
    "train": (_run_train, "train a detector from a config, then evaluate it on the held-out split",
        "Trains the config's detector for train.num_steps steps, writing checkpoints (every train.checkpoint_every "
        "steps and at the end), TensorBoard scalars and train_log.jsonl to WORKDIR with a progress bar, then evaluates"
        " the final model on the config's test split and writes metrics.json, pr_curves.png, detections.png and "
        "loss_curve.png.",
        "jaxdet train --config tiny_shapes --workdir runs/shapes"),
    "eval": (_run_eval, "evaluate a trained run's checkpoint (VOC mAP, COCO AP, PR curves, pictures)",
        "Restores a checkpoint of the run in WORKDIR (the latest unless --step) and evaluates it on the config's test "
        "split: VOC07 mAP@0.5, VOC area mAP, COCO AP, per-class AP, written to WORKDIR/metrics.json with "
        "pr_curves.png, detections.png and detections_coco.json. The config is the run's own (WORKDIR/config.json) "
        "unless --config is given; overrides apply to it (e.g. --config.data.root to evaluate on data elsewhere).",
        "jaxdet eval --workdir runs/demo"),
    "predict": (_run_predict, "detect objects in image files or folders: PNGs with boxes and a JSON",
        "Runs a trained run's detector, or with no run torchvision's weights (--config fasterrcnn_resnet50_fpn_coco "
        "--config.model.pretrained=FILE.pth --out DIR), on images (files, folders), writing per image a PNG with the "
        "boxes, class names and scores, and detections.json (boxes xyxy in the image's pixels, scores, classes).",
        "jaxdet predict --workdir runs/demo runs/demo/data/JPEGImages/s1_000000.png"),
    "proposals": (_run_proposals, "save region proposals for every image (a trained RPN's or selective search's)",
        "Saves region proposals for each train and test image of the run's or --config's dataset, in original pixels, "
        "keyed by file stem (COCO: image id): the .npz a fast_rcnn config's data.proposals reads. --method rpn (with "
        "--workdir): the RPN of the Faster R-CNN run in WORKDIR (latest checkpoint unless --step), rpn.test_post_nms "
        "an image (py-faster-rcnn's: 2000). --method selective-search (no run; pip install 'jaxdet[proposals]'): "
        "OpenCV's, as the Fast R-CNN paper used, fast mode unless --quality, at most --max-proposals an image.",
        "jaxdet proposals --method selective-search --config tiny_shapes --config.data.root=DIR --out ss.npz"),
    "make-shapes": (_run_make_shapes, "write the synthetic shapes dataset (VOC or COCO format)",
        "Writes the synthetic shapes dataset: a train and a held-out test set of coloured circles, squares and "
        "triangles on noisy backgrounds with exact boxes, as the config's data section describes them (default: "
        f"{DEMO_CONFIG}'s; e.g. --config.data.num_train=500), in the Pascal VOC or COCO format the readers "
        "and evaluators take.",
        "jaxdet make-shapes --out data/shapes --config.data.num_train=500"),
}


def _options(name: str, command: argparse.ArgumentParser) -> None:
    """The options of command `name`."""
    add = command.add_argument
    run_dir = name in ("eval", "predict", "proposals")
    add("--config", metavar="NAME[:VARIANT]", help="the experiment's config: a name or a file (see below)")
    if name == "make-shapes":
        add("--out", required=True, help="the directory to write (created)")
        add("--format", choices=("voc", "coco"), default="voc", help="annotation format (default voc)")
        return
    add("--workdir", default=DEMO_WORKDIR if name == "demo" else None, required=name in ("train", "eval"),
        help="the trained run's directory" + " (required)" * (name == "eval") if run_dir else "the run's directory")
    add("--device", choices=("auto", "cpu", "gpu"), default="auto",
        help="where to run: auto (default: a GPU when JAX finds one, else the CPU), cpu, or gpu (an error if none)")
    add("--num-devices", type=int, metavar="N", help="data-parallel on the first N devices of that kind (default all)")
    add("--no-progress", action="store_true", help="no progress bars (for logs)")
    add(host_memory.FLAG, action="store_true", help="set glibc's malloc to keep the memory XLA frees (faster CPU "
        f"steps after idle time, the peak memory kept; also {host_memory.ENV_FLAG}=1); see jaxdet.host_memory")
    if name in ("demo", "train"):
        add("--resume", action="store_true", help="continue from the latest checkpoint in WORKDIR")
    if name == "train":
        add("--no-eval", action="store_true", help="train only, no evaluation at the end")
    if run_dir:
        add("--step", type=int, help="the checkpoint's step (default: the latest)")
    if name == "eval":
        add("--out", metavar="DIR", help="where the evaluation's files go (created; default WORKDIR)")
        add("--split", choices=("test", "train"), default="test", help="which split of the config's dataset")
    if name == "predict":
        add("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders of images")
        add("--out", help="where the pictures and detections.json go (default WORKDIR/predictions)")
        add("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this (default 0.5)")
    if name == "proposals":
        add("--out", required=True, help="the .npz file to write (its folder must exist)")
        add("--split", choices=("train", "test"), action="append", help="a split; repeat for both (default: both)")
        add("--method", choices=("rpn", "selective-search"), help="rpn with --workdir, else selective-search")
        add("--quality", dest="mode", action="store_const", const="quality", default="fast", help="quality mode")
        add("--max-proposals", type=int, metavar="N", help="selective search: at most N an image (default 2000)")
    if name in ("train", "eval"):
        distributed.add_arguments(command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=_FORMATTER)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback instead of the short explanation")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = {}
    for name, (run, help, description, example) in COMMANDS.items():
        command = commands.add_parser(name, help=help, formatter_class=_FORMATTER, epilog=OVERRIDES_HELP,
                                      description=f"{textwrap.fill(description, width=96)}\n\nexample:\n  {example}")
        command.set_defaults(func=run)
        _options(name, command)
        parser.commands[name] = command
    return parser


def _unrecognized(parser: argparse.ArgumentParser, command: str | None, unknown: Sequence[str]) -> str:
    options = [o for action in parser.commands.get(command, parser)._actions for o in action.option_strings]
    hints = [f"{arg}: did you mean {' or '.join(close)}?" for arg in unknown
             if (close := difflib.get_close_matches(arg.split("=", 1)[0], options, n=2, cutoff=0.6))]
    return f"unrecognized arguments: {' '.join(unknown)}." + ((" " + " ".join(hints)) if hints else "")


def main(argv: Sequence[str] | None = None) -> int:
    """The `jaxdet` command's parsing and dispatch; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    formatwarning, warnings.formatwarning = warnings.formatwarning, reporting.format_warning
    try:
        rest, overrides = split_overrides(argv)
        args, unknown = parser.parse_known_args(rest)
        if unknown:
            parser.error(_unrecognized(parser, args.command, unknown))
        args.overrides = overrides
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted. Checkpoints already written are intact: rerun the same command with "
              "--resume to continue.", file=sys.stderr)
        return 130
    except Exception as error:  # the one place errors become messages
        user = None if "--traceback" in argv else user_error(error)
        if user is None:
            raise
        print(textwrap.fill(f"{PROG}: error: {as_flags(user.message())}", width=100, break_on_hyphens=False,
                            break_long_words=False), file=sys.stderr)
        return user.exit_status
    finally:
        warnings.formatwarning = formatwarning
