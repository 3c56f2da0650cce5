"""jaxdet: Fast and Faster R-CNN in JAX/Flax, with RoI max pooling as a native XLA custom call.

Subpackages, one topic each:
  jaxdet.ops         RoI pooling (from xla_ops), box geometry, anchors, NMS
  jaxdet.proposals   the proposal layer: RPN outputs -> proposals (training and detection)
  jaxdet.targets     anchor targets, proposal targets (matching, balanced sampling)
  jaxdet.losses      RPN and RoI-head losses
  jaxdet.models      backbones, RPN, RoI head, FastRCNN / FasterRCNN
  jaxdet.data        VOC, COCO, synthetic shapes, transforms, input pipeline
  jaxdet.training    config -> datasets and pipelines, train state, train step, the training loop,
                     checkpoints, data parallelism, pretrained weights
  jaxdet.inference   predict on a padded batch; jaxdet.inference_files: detection on image files;
                     jaxdet.inference_proposals: a trained RPN's proposals over a dataset, for Fast R-CNN
  jaxdet.evaluation  VOC and COCO metrics, pictures, evaluation over a dataset (run)
  jaxdet.configs     the named experiment configs (a base and its variants) and loading them
  jaxdet.settings    the static numbers of training and detection, one dataclass per config section
  jaxdet.workdir     a run's directory: its files' names, metrics.json, config.json
  jaxdet.reporting   progress bar, TensorBoard scalars, the training log, the loss curve
  jaxdet.experiment  train then evaluate, evaluate a checkpoint, the demo's data
  jaxdet.cli         the `jaxdet` command: parse, dispatch, render results and errors
  jaxdet.host_memory glibc's malloc set to keep the host memory XLA frees (the `jaxdet` command's first step)
"""

__version__ = "0.1.0"
