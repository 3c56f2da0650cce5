"""Recall of the ground truth against the number of proposals an image keeps: selective search (fast
and quality mode; Uijlings et al. 2013) beside a trained RPN's (Ren et al. 2015), on the shapes set.

    python experiments/proposal_recall.py --data DIR [--rpn-workdir RUN] [--split test]

DIR is a shapes set that `jaxdet make-shapes --config tiny_shapes --out DIR` wrote (made there if it
is missing); RUN a Faster R-CNN trained on it (`jaxdet train --config tiny_shapes
--config.data.root=DIR --workdir RUN`). Each method's proposals of the split's images come from the
command a user runs, `jaxdet proposals` (in a process of its own, timed: the wall time includes
starting Python, JAX and the worker pool), into --scratch; the RPN keeps all 2304 of the tiny
model's anchors before its NMS (rpn.nms_iou 0.7) and at most 2000 after it, py-faster-rcnn's number
for a Fast R-CNN (Girshick 2015). Recall (`jaxdet.evaluation.proposal_recall`) counts a ground-truth
box as found by an image's first n proposals (each method's own order: selective search's rank,
the RPN's score) when one of them overlaps it with IoU >= 0.5 or 0.7.

Writes --report (markdown: the table, the commands, the CPU) and --plot (recall against n, one
panel per IoU threshold).
"""

import argparse
import os
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
THRESHOLDS = (0.5, 0.7)
RPN_OVERRIDES = ("--config.rpn.test_pre_nms=2304", "--config.rpn.test_post_nms=2000")


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def jaxdet(*argv: str) -> tuple[str, float]:
    """Runs `python -m jaxdet ARGV`; (its command line, wall seconds)."""
    command = [sys.executable, "-m", "jaxdet", *argv]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    shown = " ".join(["jaxdet"] + [shlex.quote(a) for a in argv])
    return shown, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the shapes set (jaxdet make-shapes --config tiny_shapes)")
    parser.add_argument("--rpn-workdir", help="a Faster R-CNN run trained on it (no RPN rows without)")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--scratch", default="/tmp/proposal_recall", help="where the proposals files go")
    parser.add_argument("--report", default=os.path.join(ROOT, "experiments", "results", "proposals.md"))
    parser.add_argument("--plot", default=os.path.join(ROOT, "experiments", "results", "proposals_recall.png"))
    args = parser.parse_args()

    from jaxdet.configs import load_config
    from jaxdet.data import load_dataset
    from jaxdet.evaluation import proposal_recall

    os.makedirs(args.scratch, exist_ok=True)
    commands = []
    if not os.path.isdir(args.data):
        commands.append(jaxdet("make-shapes", "--config", "tiny_shapes", "--out", args.data)[0])
    data = ("--config", "tiny_shapes", f"--config.data.root={args.data}")
    methods = {  # name -> jaxdet proposals' arguments
        "selective search, fast": ("--method", "selective-search", *data),
        "selective search, quality": ("--method", "selective-search", "--quality", *data),
    }
    if args.rpn_workdir:
        methods["RPN (trained tiny_shapes)"] = ("--workdir", args.rpn_workdir, f"--config.data.root={args.data}",
                                                *RPN_OVERRIDES)
    config = load_config("tiny_shapes")
    config.data.root = args.data
    records = load_dataset(config, args.split).records
    gt = [r.boxes[r.targets()] for r in records]

    rows, curves = [], {}
    for i, (name, argv) in enumerate(methods.items()):
        out = os.path.join(args.scratch, f"method{i}.npz")
        load = os.getloadavg()[0]
        shown, wall = jaxdet("proposals", *argv, "--split", args.split, "--out", out, "--no-progress")
        commands.append(shown)
        with np.load(out) as archive:
            proposals = [archive[str(r.source_id)] for r in records]
        recall = proposal_recall(gt, proposals, COUNTS, THRESHOLDS)  # [C, T]
        curves[name] = recall
        counts = np.array([len(p) for p in proposals])
        rows.append((name, counts.mean(), counts.max(), recall, wall, load))
        print(f"{name}: {counts.mean():.1f} boxes/image, recall@0.5 {recall[-1, 0]:.4f}, @0.7 {recall[-1, 1]:.4f}, "
              f"{wall:.1f} s", flush=True)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(THRESHOLDS), figsize=(10, 4), sharey=True)
    for ax, (t, threshold) in zip(axes, enumerate(THRESHOLDS)):
        for name, recall in curves.items():
            ax.plot(COUNTS, recall[:, t], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("proposals per image (the first n)")
        ax.set_title(f"IoU >= {threshold}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("recall of the ground truth")
    axes[0].legend(loc="lower right")
    fig.suptitle(f"Proposal recall on the shapes set ({args.split} split, {len(records)} images, "
                 f"{sum(len(g) for g in gt)} objects)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)

    index = {n: COUNTS.index(n) for n in (10, 20, 50, 100, 200, 500, 2000)}
    lines = [
        "# Proposal recall: selective search beside a trained RPN, on the shapes set",
        "",
        f"Written by `{' '.join(['python experiments/proposal_recall.py'] + [shlex.quote(a) for a in sys.argv[1:]])}`"
        f" on {cpu_model()} ({os.cpu_count()} cores, shared with other jobs).",
        "",
        f"The {args.split} split of the shapes set (`tiny_shapes`: {len(records)} images of 128x128, "
        f"{sum(len(g) for g in gt)} objects of 16-80 px). Recall: the share of ground-truth boxes that one of "
        "the image's first n proposals overlaps with IoU >= 0.5 (0.7), each method's proposals in its own order "
        "(selective search: OpenCV's rank; RPN: score after NMS at 0.7). Selective search (Uijlings et al. 2013) "
        "is OpenCV's (`cv2.ximgproc.segmentation`, opencv-contrib-python-headless) with its default settings, "
        "nothing tuned: the image at its own size (no rescaling), base k 150, sigma 0.8.",
        "",
        "| method | boxes / image (mean, max) | " + " | ".join(f"R@0.5 n={n}" for n in index) + " | R@0.7 n=2000 | "
        "`jaxdet proposals` wall s | load before |",
        "|---|---|" + "---|" * (len(index) + 3),
    ]
    for name, mean, most, recall, wall, load in rows:
        lines.append(f"| {name} | {mean:.1f}, {most} | " + " | ".join(f"{recall[c, 0]:.3f}" for c in index.values())
                     + f" | {recall[-1, 1]:.3f} | {wall:.1f} | {load:.1f} |")
    lines += ["", "Recall at IoU 0.5 / 0.7 against n (all counts):", "",
              "| method | " + " | ".join(str(n) for n in COUNTS) + " |", "|---|" + "---|" * len(COUNTS)]
    for name, recall in curves.items():
        cells = [f"{recall[c, 0]:.3f} / {recall[c, 1]:.3f}" for c in range(len(COUNTS))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![recall against the number of proposals]({os.path.basename(args.plot)})", "",
              "Commands (each `jaxdet proposals` timed in a process of its own, so its wall time includes starting "
              "Python, JAX and, for selective search, the pool of one worker per core):", "", "```"]
    lines += commands + ["```", ""]
    if args.rpn_workdir:
        from jaxdet.workdir import read_config
        run = read_config(args.rpn_workdir)
        lines[-1:-1] = ["", f"The RPN is that of a Faster R-CNN trained from scratch (`tiny_shapes`, "
                        f"{run.train.num_steps} steps, learning rate x 0.1 after step "
                        f"{', '.join(map(str, run.optimizer.decay_steps))})"
                        " on the train split of the same set:", "", "```",
                        f"jaxdet train --config tiny_shapes --config.data.root={args.data} "
                        f"--config.train.num_steps={run.train.num_steps} "
                        f"'--config.optimizer.decay_steps={tuple(run.optimizer.decay_steps)}' "
                        f"--workdir {args.rpn_workdir} --no-eval", "```"]
    with open(args.report, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.report} and {args.plot}")


if __name__ == "__main__":
    main()
