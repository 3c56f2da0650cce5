"""The two RoI classifiers of Apache MXNet Gluon's RoIPooling example, in jaxdet.

A batch of two 128x128 RGB images and four RoIs (batch_index, x1, y1, x2, y2):
  * R-CNN style: RoI pooling straight on the images (64x64, spatial scale 1), each crop
    classified by a small convolutional network, global average pooling and a dense layer;
  * Fast R-CNN style: RoI pooling of ResNet-34's last features (stride 32: 4x4 bins at spatial
    scale 1/32), global average pooling and a dense layer.
Both give 11 outputs per RoI (10 categories and "no object"). Random weights: this shows the
shapes and the wiring; tests/models/test_roi_classifier.py checks the values.

    PYTHONPATH=. python experiments/roi_classifier_examples.py
"""

import jax
import numpy as np

from jaxdet.models import GlobalPoolHead, ResNet34, RoIClassifier, TinyVGG

ROIS = np.array([[0, 10, 10, 100, 100], [0, 20, 20, 120, 120],
                 [1, 15, 15, 110, 110], [1, 25, 25, 128, 128]], np.float32)


def main():
    images = jax.random.uniform(jax.random.key(0), (2, 128, 128, 3))  # NHWC
    nets = {
        "R-CNN style (pool the images, 64x64)": RoIClassifier(
            num_classes=11, head=GlobalPoolHead(trunk=TinyVGG()), pooled_size=(64, 64)),
        "Fast R-CNN style (ResNet-34 features, 4x4 at 1/32)": RoIClassifier(
            num_classes=11, head=GlobalPoolHead(), trunk=ResNet34(), pooled_size=(4, 4)),
    }
    for name, net in nets.items():
        variables = net.init(jax.random.key(1), images, ROIS)
        out = jax.jit(net.apply)(variables, images, ROIS)
        print(f"{name}: images {images.shape}, rois {ROIS.shape} -> {out.shape}")


if __name__ == "__main__":
    main()
