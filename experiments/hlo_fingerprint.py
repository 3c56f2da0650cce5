"""The optimized HLO of `train_step` and `predict` (float32), debug tables and metadata stripped, for
the tiny config at 128x128 and VGG16 at 600x1000, batch 2: a refactor that claims to leave the
computation alone must leave these files, and their SHA-1, unchanged.

Usage (one run per checkout, then compare the folders):
  PYTHONPATH=. python experiments/hlo_fingerprint.py OUT_DIR
  diff -r OUT_BEFORE OUT_AFTER
"""

import argparse
import hashlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.configs import load_config
from jaxdet.inference import predict
from jaxdet.training import create_train_state
from jaxdet.training.step import step_key, train_step

CASES = {"tiny_shapes": ((128, 128), 8), "vgg16_voc07": ((600, 1000), 20)}


def stripped(hlo: str) -> str:
    """The computations of an HLO module's text, without the file, function and stack-frame tables
    and the instructions' metadata (source paths and lines, which a move of code changes)."""
    lines = hlo.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(("%", "ENTRY")))
    text = re.sub(r", metadata=\{[^}]*\}", "", "\n".join(lines[start:]))
    return re.sub(r",? ?stack_frame_id=\d+", "", text)


def batch_of(image_hw, max_boxes, num_images=2):
    """A fixed batch: random images, three boxes an image."""
    boxes = np.zeros((num_images, max_boxes, 4), np.float32)
    boxes[:, :3] = [[10, 10, 60, 70], [30, 20, 90, 100], [5, 50, 40, 120]]
    return dict(images=jnp.asarray(np.random.default_rng(0).normal(size=(num_images, *image_hw, 3)), jnp.float32),
                image_hw=jnp.asarray([image_hw] * num_images, jnp.int32), scale=jnp.ones((num_images,), jnp.float32),
                boxes=jnp.asarray(boxes), labels=jnp.ones((num_images, max_boxes), jnp.int32),
                valid=jnp.asarray(np.arange(max_boxes)[None].repeat(num_images, 0) < 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for the stripped HLO files")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    for name, (image_hw, max_boxes) in CASES.items():
        state = create_train_state(load_config(name), jax.random.PRNGKey(0))
        batch = batch_of(image_hw, max_boxes)
        programs = {
            "train_step": train_step.lower(state, batch, step_key(state)),
            "predict": predict.lower(state.model, state.variables, batch["images"], batch["image_hw"],
                                     image_scale=batch["scale"], settings=state.settings),
        }
        for program, lowered in programs.items():
            text = stripped(lowered.compile().as_text())
            with open(os.path.join(out, f"{name}_{program}.hlo"), "w") as f:
                f.write(text)
            print(f"{name} {program} {hashlib.sha1(text.encode()).hexdigest()}", flush=True)


if __name__ == "__main__":
    main()
