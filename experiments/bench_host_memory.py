"""jaxdet's training step with and without jaxdet.host_memory's malloc settings: per step, the
wall time, the minor page faults and the system time; the compile time and the peak RSS.

Each variant runs in a fresh process (the settings must be made before any thread starts), one
after the other: "default" (glibc's malloc as it comes) and "retained" (retain_freed_memory()).
--idle sleeps that many seconds before each step, as alternating with another program does.

Usage:
  python experiments/bench_host_memory.py --preset vgg16 --dtype bfloat16 --batch-size 1 --steps 20
  python experiments/bench_host_memory.py --preset vgg16 --batch-size 1 --steps 5 --idle 3
  add --out experiments/results/peers.md to append the table and the command there.
"""

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("default", "retained")


def run_variant(args):
    """In the child process: the steps of one variant, printed as one JSON line."""
    reason = None
    if args.variant == "retained":
        from jaxdet import host_memory

        reason = host_memory.retain_freed_memory()
        if reason is not None:
            raise SystemExit(f"the settings were not made: {reason}")
    import resource

    import jax

    import common
    from jaxdet.training.step import step_key

    config, batch = common.preset_inputs(args.preset, args.batch_size)
    _, state, batch, lowered = common.prepared_variant(config, args.dtype, batch)
    start = time.perf_counter()
    step = lowered.compile()
    compile_s = time.perf_counter() - start
    steps = []
    for _ in range(args.steps):
        time.sleep(args.idle)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        state, metrics = step(state, batch, step_key(state))
        jax.block_until_ready(metrics)
        after = resource.getrusage(resource.RUSAGE_SELF)
        steps.append({"s": time.perf_counter() - start, "faults": after.ru_minflt - before.ru_minflt,
                      "system_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime})
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    print(json.dumps({"compile_s": compile_s, "steps": steps, "peak_rss_gb": peak_gb}))


def spread(values, spec=".2f"):
    values = sorted(values)
    return f"{values[len(values) // 2]:{spec}} ({values[0]:{spec}}-{values[-1]:{spec}})"


def table(results, first_timed):
    lines = ["| malloc | compile s | step s, median (min-max) | minor faults per step | system s per step | "
             "user s per step | peak RSS GB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for variant, found in results.items():
        steps = found["steps"][first_timed:]
        lines.append(f"| {variant} | {found['compile_s']:.1f} | {spread([s['s'] for s in steps])} | "
                     f"{spread([s['faults'] for s in steps], 'd')} | {spread([s['system_s'] for s in steps])} | "
                     f"{spread([s['user_s'] for s in steps])} | {found['peak_rss_gb']:.1f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "vgg16"], default="vgg16")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant (the first one is not in the table)")
    parser.add_argument("--idle", type=float, default=0.0, help="seconds of sleep before each step")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--out", help="append the table and the command to this markdown file")
    args = parser.parse_args(argv)
    if args.variant:
        return run_variant(args)

    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--dtype", args.dtype,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--idle", str(args.idle)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    results = {}
    for variant in VARIANTS:
        done = subprocess.run(command + ["--variant", variant], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {variant} process failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{variant}: done", flush=True)
    import common  # here, not above: a child process changes malloc's settings before numpy starts

    command = common.command_line("experiments/bench_host_memory.py", argv)
    lines = [f"### Host memory, {args.preset} {args.dtype} batch {args.batch_size}, {args.idle:g} s idle before "
             f"each step, {time.strftime('%Y-%m-%d %H:%M %Z')}", "", f"Command: `python {command}`", "",
             f"Steps 2-{args.steps} of each process (the first step maps everything for the first time):", ""]
    lines += table(results, first_timed=1)
    common.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
