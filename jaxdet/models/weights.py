"""ImageNet VGG16 (and VGG16-BN) weights from a local file into the detector's backbone and fc6 / fc7.

Two state-dict layouts are understood, whatever the file format:
  * torchvision (`torchvision.models.vgg16().state_dict()`, and the Caffe-converted
    `vgg16_caffe.pth` of the reference Faster R-CNN ports, which uses the same names):
    `features.{0,2,5,...,28}.{weight,bias}`, `classifier.{0,3}.{weight,bias}`; for a VGG16-BN
    backbone, `torchvision.models.vgg16_bn()`'s: `features.{0,3,7,...,40}` convolutions, each
    followed by its batch normalisation `features.{1,4,8,...,41}.{weight,bias,running_mean,
    running_var}`, which become the frozen statistics (`batch_stats`) of the model's `bn{s}_{i}`;
  * Caffe layer names: `conv1_1.{weight,bias}` ... `conv5_3.*`, `fc6.*`, `fc7.*`.
Weights are PyTorch-shaped: convs [out, in, kh, kw], linear [out, in], and fc6's input is
flattened (C, 7, 7) from NCHW. Caffe-trained weights expect the Caffe input convention (BGR,
0-255, mean subtracted): choose the data normalisation to match.

Files: `.pth` / `.pt` (read with torch, only if installed), `.npz`, `.safetensors`. Nothing is
ever downloaded.
"""

import os
from typing import Dict, Mapping

import numpy as np

from jaxdet.errors import JaxdetError

VGG16_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
# Index of each conv in torchvision's `vgg16().features` (ReLUs and pools in between).
TORCHVISION_FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# The same in `vgg16_bn().features`, where each conv's batch normalisation is the next index.
TORCHVISION_BN_FEATURE_INDEX = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
FCS = ("fc6", "fc7")
TORCHVISION_FC = {"fc6": "classifier.0", "fc7": "classifier.3"}
SCHEMES = ("torchvision", "caffe")
# Our (collection, name) of each tensor of a layer kind, and the state dict's suffix for it.
_TENSORS = {
    "conv": ((("params", "kernel"), "weight"), (("params", "bias"), "bias")),
    "bn": ((("params", "scale"), "weight"), (("params", "bias"), "bias"),
           (("batch_stats", "mean"), "running_mean"), (("batch_stats", "var"), "running_var")),
}


class WeightsError(JaxdetError, ValueError):
    """A pretrained weight file that does not fit the model; the message names the key."""

    prefix = "pretrained weights do not fit the model: "


def _source_names(scheme: str, batch_norm: bool) -> Dict[tuple, str]:
    """(group, layer) of our variables -> state-dict prefix, for one naming scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if batch_norm and scheme == "caffe":
        raise WeightsError("Caffe layer names have no batch normalisation: a VGG16-BN backbone takes "
                           "torchvision's vgg16_bn state dict")
    names = {}
    indices = TORCHVISION_BN_FEATURE_INDEX if batch_norm else TORCHVISION_FEATURE_INDEX
    for conv, index in zip(VGG16_CONVS, indices):
        names[("backbone", conv)] = f"features.{index}" if scheme == "torchvision" else conv
        if batch_norm:
            names[("backbone", "bn" + conv[len("conv"):])] = f"features.{index + 1}"
    for fc in FCS:
        names[("box_head", fc)] = TORCHVISION_FC[fc] if scheme == "torchvision" else fc
    return names


def _fc6_geometry(kernel_shape: tuple, channels: int) -> tuple:
    """fc6 kernel [ph * pw * C, D] -> (ph, pw), for square pooling as VGG16's 7x7."""
    cells = kernel_shape[0] // channels
    side = int(round(cells ** 0.5))
    if side * side * channels != kernel_shape[0]:
        raise WeightsError(f"box_head/fc6 takes {kernel_shape[0]} inputs, not a square pooled map of "
                           f"{channels} channels")
    return side, side


def _to_flax(source_key: str, layer: str, weight: np.ndarray, channels: int, target_shape: tuple) -> np.ndarray:
    if layer.startswith("conv"):
        return weight.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
    if layer == "fc6":
        ph, pw = _fc6_geometry(target_shape, channels)
        out = weight.shape[0]
        if weight.shape[1] != channels * ph * pw:
            raise WeightsError(f"key {source_key!r} has shape {weight.shape}, expected ({target_shape[1]}, "
                               f"{channels * ph * pw}) (fc6 over {channels}x{ph}x{pw} pooled features)")
        # torch flattens NCHW as (C, ph, pw); the head flattens NHWC as (ph, pw, C).
        return weight.reshape(out, channels, ph, pw).transpose(2, 3, 1, 0).reshape(ph * pw * channels, out)
    return weight.T  # linear [out, in] -> [in, out]


def _to_torch(layer: str, kernel: np.ndarray, channels: int) -> np.ndarray:
    if layer.startswith("conv"):
        return kernel.transpose(3, 2, 0, 1)
    if layer == "fc6":
        ph, pw = _fc6_geometry(kernel.shape, channels)
        out = kernel.shape[1]
        return kernel.reshape(ph, pw, channels, out).transpose(3, 2, 0, 1).reshape(out, channels * ph * pw)
    return kernel.T


def _detect_scheme(state_dict: Mapping[str, np.ndarray]) -> str:
    found = {s: sum(f"{name}.weight" in state_dict for name in _source_names(s, False).values()) for s in SCHEMES}
    return max(SCHEMES, key=lambda s: found[s])


def _has_batch_norm(variables: Mapping) -> bool:
    return "bn1_1" in variables["params"].get("backbone", {})


def convert_vgg16(state_dict: Mapping[str, np.ndarray], variables: Mapping, *, include_fc: bool = True,
                  scheme: str = "auto") -> dict:
    """Detector variables with the VGG16 (or VGG16-BN) layers replaced by a PyTorch-layout state dict's.

    Args:
      state_dict: name -> array (torchvision or Caffe names, see the module docstring).
      variables: the detector's variables: "params" (a VGG16 or VGG16BN backbone; an FCHead with
        fc6 / fc7 if include_fc) and, with VGG16BN, "batch_stats".
      include_fc: also load fc6 and fc7 into params["box_head"].
      scheme: "torchvision", "caffe", or "auto" (the one whose names the state dict has).

    Returns:
      New variables (the input is not modified); other layers (RPN, predictor) untouched.

    Raises:
      WeightsError naming the missing key, the mis-shaped key (with both shapes), or the
      parameter the model lacks.
    """
    if scheme == "auto":
        scheme = _detect_scheme(state_dict)
    batch_norm = _has_batch_norm(variables)
    layout = f"{scheme} VGG16{'-BN' if batch_norm else ''} layout"
    channels = None
    out = {collection: {group: dict(layers) for group, layers in groups.items()}
           for collection, groups in variables.items()}
    for (group, layer), prefix in _source_names(scheme, batch_norm).items():
        if group == "box_head" and not include_fc:
            continue
        if layer not in variables["params"].get(group, {}):
            raise WeightsError(f"the model has no parameter {group}/{layer} to receive {prefix!r} "
                               "(is the backbone VGG16 and the box head fc6/fc7?)")
        for (collection, ours), theirs in _TENSORS["bn" if layer.startswith("bn") else "conv"]:
            key = f"{prefix}.{theirs}"
            if key not in state_dict:
                raise WeightsError(f"missing key {key!r} ({layout}) for {group}/{layer}/{ours}")
            target = np.shape(variables[collection][group][layer][ours])
            value = np.asarray(state_dict[key], np.float32)
            if ours == "kernel":
                value = _to_flax(key, layer, value, channels, target)
            if value.shape != target:
                raise WeightsError(f"key {key!r} has shape {np.shape(state_dict[key])}, which gives "
                                   f"{value.shape} for {group}/{layer}/{ours}, expected {target}")
            out[collection][group][layer] = {**out[collection][group][layer], ours: value}
        if layer == "conv5_3":
            channels = out["params"][group][layer]["kernel"].shape[-1]
    return out


def vgg16_state_dict(variables: Mapping, *, include_fc: bool = True, scheme: str = "torchvision") -> Dict[str, np.ndarray]:
    """The inverse of `convert_vgg16`: detector variables -> PyTorch-layout VGG16 (-BN) state dict."""
    channels = np.shape(variables["params"]["backbone"]["conv5_3"]["kernel"])[-1]
    out = {}
    for (group, layer), prefix in _source_names(scheme, _has_batch_norm(variables)).items():
        if group == "box_head" and not include_fc:
            continue
        for (collection, ours), theirs in _TENSORS["bn" if layer.startswith("bn") else "conv"]:
            value = np.asarray(variables[collection][group][layer][ours])
            out[f"{prefix}.{theirs}"] = _to_torch(layer, value, channels) if ours == "kernel" else value
    return out


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
    """name -> float array from a `.pth`/`.pt` (needs torch), `.npz` or `.safetensors` file.

    A `.pth` holding {"state_dict": ...} or {"model": ...} is unwrapped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path} (weights are never downloaded; "
                                "point model.pretrained at a local file)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if ext == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(path)
    if ext in (".pth", ".pt"):
        try:
            import torch
        except ImportError as err:
            raise ImportError(f"reading {path} needs PyTorch, which is not installed; install it, or save "
                              "the state dict as .npz / .safetensors where torch is available") from err
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}
    raise WeightsError(f"unknown weight file type {ext!r} for {path}: use .pth, .pt, .npz or .safetensors")


def load_pretrained(path: str, variables: Mapping, *, include_fc: bool = True) -> dict:
    """`convert_vgg16(load_state_dict(path), variables)`, with the path in any error message."""
    try:
        return convert_vgg16(load_state_dict(path), variables, include_fc=include_fc)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None
