"""The main job (`jaxdet demo`): the tiny Faster R-CNN of `tiny_shapes`, trained on the CPU in a few
minutes on 2 cores and evaluated on 200 held-out shapes images. Its figures, per training seed and
with the CPU each was measured on, and the recipes tried against it: experiments/results/shapes.md.

It is `tiny_shapes.get_config()` with its schedule pinned here (so that the demo's measured
figures, in experiments/results/shapes.md, stay those of this file whatever tiny_shapes' tests
need); the demo sets the data root to the dataset it writes.

    get_config()        the demo
    get_config("smoke") the same model and image size for a handful of steps on a few images
                        (the main-job smoke test: same programs, minutes less)
"""

import ml_collections

from jaxdet.configs import base, tiny_shapes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = tiny_shapes.get_config()
    config.train.num_steps = 1700           # 13.6k images, 6.8 epochs of the 2000
    config.optimizer.decay_steps = (1360,)  # x 0.1 for the last fifth
    if variant == "smoke":
        config.data.num_train, config.data.num_test = 16, 8
        base.few_steps(config, log_every=2)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of shapes_demo (known: 'smoke')")
    return config
