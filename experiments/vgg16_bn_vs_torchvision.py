"""jaxdet's VGG16-BN backbone with torchvision's vgg16_bn weights against torchvision itself.

torchvision.models.vgg16_bn (random weights, and batch-normalisation statistics set far from
the identity, as a trained network has) runs in eval mode up to conv5_3's ReLU; its state dict
goes through jaxdet.models.weights.convert_vgg16 into `VGG16BN`, and the two feature maps are
compared. Needs torch and torchvision (the optional `bench` extra):

    PYTHONPATH=. python experiments/vgg16_bn_vs_torchvision.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

from jaxdet.models import VGG16BN, FCHead, FasterRCNN
from jaxdet.models.weights import convert_vgg16


def main():
    torch.manual_seed(0)
    net = torchvision.models.vgg16_bn(weights=None).eval()
    with torch.no_grad():
        for module in net.features:
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 1)
                module.running_var.uniform_(0.3, 3.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
    model = FasterRCNN(backbone=VGG16BN(), box_head=FCHead(), num_classes=20)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4)))
    variables = convert_vgg16(state_dict, shapes, include_fc=False)
    backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
    images = np.random.default_rng(0).standard_normal((2, 3, 224, 320), np.float32)
    with torch.no_grad():
        # features[:-1]: up to conv5_3's ReLU, without the last max pool (as Faster R-CNN uses it).
        want = net.features[:-1](torch.from_numpy(images)).numpy()
    got = np.asarray(jax.jit(VGG16BN().apply)(backbone, jnp.asarray(images.transpose(0, 2, 3, 1))))
    got = got.transpose(0, 3, 1, 2)
    scale = np.abs(want).max()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; images {images.shape} NCHW")
    print(f"features {want.shape}: max |difference| {np.abs(got - want).max():.3g} "
          f"(largest feature {scale:.3g}; relative {np.abs(got - want).max() / scale:.2g})")


if __name__ == "__main__":
    main()
