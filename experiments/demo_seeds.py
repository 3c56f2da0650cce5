"""`jaxdet demo` over training seeds, one run at a time, each a markdown row for results/shapes.md.

    python experiments/demo_seeds.py --seeds 0 1 2 [--isa AVX2] [--tag NAME] -- [--config.x.y=v ...]

Each run is `python -m jaxdet demo --workdir ROOT/TAG_sSEED --no-progress --config.train.seed=SEED
OVERRIDES` in a fresh process (nice -n 5); it prints the row: seed, ISA, VOC07 mAP@0.5, area mAP,
COCO AP, the per-class VOC07 APs, training seconds and the 1-minute load average before and after.

`--isa AVX2` sets XLA_FLAGS=--xla_cpu_max_isa=AVX2: XLA's CPU code generation (and its libraries'
kernels) restricted to AVX2, as on a CPU without AVX-512. It emulates that CPU's instruction set
(and so its floating-point results), not its caches, cores or clock.

The speed settings chosen by measurement can be switched off one at a time, to time the
alternative (item 5 of issue 26):

    --no-compiler-options   jaxdet.compiler_options.COMPILER_OPTIONS not passed to XLA
    --workers N             the input pipeline's worker threads (jaxdet.data.pipeline; default 2)
    --config.data.cache_images=false   (an override) decode the PNGs every epoch
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(args, rest) -> int:
    """In the run's own process: the switches applied, then the `jaxdet` command."""
    sys.path.insert(0, ROOT)
    if args.no_compiler_options:
        from jaxdet import compiler_options
        compiler_options.options_accepted = lambda: False  # every jit takes its plain (option-less) path
    if args.workers:
        from jaxdet.data import pipeline
        init = pipeline.InputPipeline.__init__

        def with_workers(self, *a, **kw):
            kw["num_workers"] = args.workers
            init(self, *a, **kw)

        pipeline.InputPipeline.__init__ = with_workers
    from jaxdet.__main__ import main
    return main(rest)


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--isa", default="", help="XLA's --xla_cpu_max_isa (e.g. AVX2); default: the CPU's")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--root", default="/tmp/demo_seeds")
    parser.add_argument("--no-compiler-options", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.child:
        return _child(args, rest)

    env = dict(os.environ)
    if args.isa:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_max_isa={args.isa}").strip()
    switches = (["--no-compiler-options"] if args.no_compiler_options else []) + (
        [f"--workers={args.workers}"] if args.workers else [])
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; ISA: {args.isa or 'default'}; {' '.join(switches + rest)}")
    print("| seed | ISA | VOC07 mAP@0.5 | area mAP | COCO AP | circle | square | triangle | training s | load before/after |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for seed in args.seeds:
        workdir = os.path.join(args.root, f"{args.tag}_s{seed}")
        if os.path.exists(os.path.join(workdir, "metrics.json")):
            raise SystemExit(f"{workdir} holds a finished run: give another --tag or --root")
        command = [sys.executable, os.path.abspath(__file__), "--child", *switches, "--",
                   "demo", "--workdir", workdir, "--no-progress", f"--config.train.seed={seed}", *rest]
        load = os.getloadavg()[0]
        subprocess.run(["nice", "-n", "5", *command], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(workdir, "metrics.json")) as f:
            m = json.load(f)
        pc = m["per_class_ap"]
        print(f"| {seed} | {args.isa or 'default'} | {m['voc07_map']:.4f} | {m['voc_map']:.4f} | {m['coco_ap']:.4f} | "
              + " | ".join(f"{pc[c]:.3f}" for c in ("circle", "square", "triangle"))
              + f" | {m['train_seconds']:.1f} | {load:.1f} / {os.getloadavg()[0]:.1f} |", flush=True)
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
