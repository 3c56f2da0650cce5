"""Where jaxdet's training step spends its time: one step traced with `jax.profiler`, the XLA
operations' times summed by layer (from the operations' `op_name`) and listed, longest first.

The step is compiled and run --warmup times first. On the CPU the thunks of independent
operations run at once (an input gradient beside its weight gradient), so the summed times can
exceed the step's; XLA's own convolutions report only their dispatch (their work runs on other
threads and shows as the gap before the next operation), which --timeline makes visible.
The process keeps the host memory XLA frees, as the jaxdet command does (jaxdet.host_memory).

Usage:
  python experiments/profile_train_step.py --preset vgg16 --dtype bfloat16 --batch-size 1
  python experiments/profile_train_step.py --preset tiny --dtype float32 --batch-size 8 --top 20 --timeline
"""

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

if __name__ == "__main__":  # before JAX starts its threads, as the jaxdet command does
    from jaxdet import host_memory

    host_memory.retain_freed_memory_without_gpu()

import jax  # noqa: E402

import common  # noqa: E402
from jaxdet.training.step import step_key  # noqa: E402

# An HLO instruction: its name, result shape and the op_name of its metadata.
_INSTRUCTION = re.compile(r"%([\w.\-]+) = (\S+) [\w\-]+\(.*?op_name=\"([^\"]+)\"")
_LAYER = re.compile(r"^(conv\d_\d|fc\d+|rpn|cls_score|bbox_pred|res\d\w*|layer\d\w*)$")


def traced_events(step, state, batch):
    """The profiler's complete events ("X") of one traced step, and the step's seconds."""
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        start = time.perf_counter()
        state, metrics = step(state, batch, step_key(state))
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    return [e for e in events if e.get("ph") == "X" and "dur" in e], seconds


def layer_of(op_name):
    """("conv3_2", "backward") for an op_name such as
    "jit(_train_step)/transpose(jvp(FasterRCNN.extract))/backbone/conv3_2/dot_general"."""
    parts = op_name.split("/")
    layers = [p for p in parts if _LAYER.match(p)]
    return (layers[-1] if layers else parts[-1]), ("backward" if "transpose(" in op_name else "forward")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(common.PRESETS), default="vgg16")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=30, help="operations listed")
    parser.add_argument("--timeline", action="store_true", help="list the operations over 5 ms in the order they ran")
    args = parser.parse_args(argv)

    config, batch = common.preset_inputs(args.preset, args.batch_size)
    _, state, batch, lowered = common.prepared_variant(config, args.dtype, batch)
    step = lowered.compile()
    instructions = {m.group(1): (m.group(2), m.group(3)) for m in _INSTRUCTION.finditer(step.as_text())}
    for _ in range(args.warmup):
        state, metrics = step(state, batch, step_key(state))
        jax.block_until_ready(metrics)
    events, seconds = traced_events(step, state, batch)

    ops = [(e["dur"] / 1e3, e["ts"] / 1e3, e["name"], *instructions[e["name"]]) for e in events if e["name"] in instructions]
    by_layer = collections.Counter()
    for ms, _, _, _, op_name in ops:
        by_layer[layer_of(op_name)] += ms
    print(f"{args.preset} {args.dtype} batch {args.batch_size}: traced step {seconds * 1e3:.0f} ms, "
          f"{sum(o[0] for o in ops):.0f} ms summed over {len(ops)} operations\n")
    print("ms by layer and direction:")
    for (layer, direction), ms in by_layer.most_common(args.top):
        print(f"{ms:9.1f}  {layer} {direction}")
    print(f"\nthe {args.top} longest operations (ms, name, result, op_name):")
    for ms, _, op, shape, op_name in sorted(ops, reverse=True)[:args.top]:
        print(f"{ms:9.1f}  {op:28s} {shape:30s} {op_name}")
    if args.timeline:
        began = min(o[1] for o in ops)
        print("\ntimeline (start ms, end ms, op, op_name) of the operations over 5 ms:")
        for ms, start, op, _, op_name in sorted((o for o in ops if o[0] > 5), key=lambda o: o[1]):
            print(f"{start - began:9.1f} {start - began + ms:9.1f}  {op:28s} {op_name}")


if __name__ == "__main__":
    main()
