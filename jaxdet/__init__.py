"""jaxdet: Fast and Faster R-CNN in JAX/Flax, with RoI max pooling as a native XLA custom call.

Layers, each importing only those below it (`make test` checks it: .importlinter):
  jaxdet.cli         the `jaxdet` command: parse and dispatch (jaxdet.overrides: --config.* flags)
  jaxdet.experiment  train then evaluate, evaluate a checkpoint, the demo: what the commands do
  jaxdet.evaluation  VOC and COCO metrics, evaluation over a dataset (run)
  jaxdet.inference   predict on a padded batch, a trained run's detector, detection over a dataset,
                     over image files, a trained RPN's proposals for Fast R-CNN
  jaxdet.training    train state, optimizer, train step, the loop, checkpoints, the data-parallel step
  jaxdet.targets, jaxdet.proposals, jaxdet.losses
                     anchor and proposal targets, the proposal layer, the losses
  jaxdet.models      backbones, RPN, RoI heads, FastRCNN / FasterRCNN, building one from a config,
                     pretrained weights
  jaxdet.data        VOC, COCO, synthetic shapes, transforms, input pipeline, building datasets and
                     pipelines from a config
  jaxdet.ops         RoI pooling (from xla_ops), box geometry, anchors, NMS
Below them all, one topic each: jaxdet.configs (the named configs), jaxdet.settings (the static
numbers, one dataclass per config section), jaxdet.errors (the errors a user can fix),
jaxdet.devices (devices and placements), jaxdet.distributed (several processes),
jaxdet.checkpoint_format (a run's checkpoints on disk), jaxdet.workdir (a run's files),
jaxdet.reporting (what a run shows and the commands print), jaxdet.pictures, jaxdet.compiler_options,
jaxdet.checks, jaxdet.host_memory (glibc's malloc kept, on request).
"""

__version__ = "0.1.0"
