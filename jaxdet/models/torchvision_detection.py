"""torchvision's detection state dicts -> `FPNFasterRCNN` variables.

Maps the names of `fasterrcnn_resnet50_fpn` and `fasterrcnn_resnet50_fpn_v2` state dicts
(`backbone.body.*`, `backbone.fpn.*`, `rpn.head.*`, `roi_heads.box_head.*`,
`roi_heads.box_predictor.*`) to the flax variables of `jaxdet.models.fpn_detector.FPNFasterRCNN`,
one to one: convolution weights OIHW -> HWIO, linear weights [out, in] -> [in, out], and the
first fully connected layer after RoIAlign permuted from torch's flatten order (C, 7, 7) to
NHWC's (7, 7, C). Batch-norm weight, bias, running_mean, running_var go to scale, bias, mean,
var (in "params" or "batch_stats" as the model keeps them); `num_batches_tracked` is ignored.
Both the current names and those of state dicts saved before torchvision 0.8's module versions
(`rpn.head.conv.weight`, `backbone.fpn.inner_blocks.0.weight`: the COCO weights file of
fasterrcnn_resnet50_fpn has them) are read.

    variables = load_torchvision_detection("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", model)
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdet.models.torch_checkpoint import load_state_dict

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class WeightsMismatch(ValueError):
    """The state dict does not fit the model (missing names, extra names or different shapes); lists them."""


def _torch_names(path: Tuple[str, ...]) -> Tuple[Tuple[str, ...], str]:
    """A flax variable path (collection dropped) -> (candidate torch names, kind: conv/linear/bn/bias)."""
    *modules, leaf = path
    top = modules[0]
    if top == "body":
        parts = ["backbone.body"]
        for m in modules[1:]:
            if m.startswith("block"):
                parts.append(m[len("block"):])
            elif m == "downsample_conv":
                parts.append("downsample.0")
            elif m == "downsample_bn":
                parts.append("downsample.1")
            else:
                parts.append(m)
        base = [".".join(parts)]
    elif top == "fpn":
        name = modules[1]
        kind, bn = (name[:-3], True) if name.endswith("_bn") else (name, False)
        block = "inner_blocks" if kind.startswith("inner") else "layer_blocks"
        i = kind[len("inner"):] if kind.startswith("inner") else kind[len("layer"):]
        base = [f"backbone.fpn.{block}.{i}.1"] if bn else [f"backbone.fpn.{block}.{i}.0", f"backbone.fpn.{block}.{i}"]
    elif top == "rpn_head":
        name = modules[1]
        if name.startswith("conv"):
            i = name[len("conv"):]
            base = [f"rpn.head.conv.{i}.0"] + (["rpn.head.conv"] if i == "0" else [])
        else:
            base = [f"rpn.head.{name}"]
    elif top == "head":
        name = modules[1]
        if name in ("fc6", "fc7"):
            base = [f"roi_heads.box_head.{name}"]
        elif name.startswith("conv"):
            i = name[len("conv"):].removesuffix("_bn")
            base = [f"roi_heads.box_head.{i}.{1 if name.endswith('_bn') else 0}"]
        elif name.startswith("fc"):  # v2: Sequential(4 convs, Flatten, Linear, ReLU, ...)
            conv_layers = 4
            base = [f"roi_heads.box_head.{conv_layers + 1 + 2 * int(name[len('fc'):])}"]
        else:
            raise KeyError(path)
    elif top == "box_predictor":
        base = [f"roi_heads.box_predictor.{modules[1]}"]
    else:
        raise KeyError(path)
    if leaf == "kernel":
        suffix = "weight"
    elif leaf in _BN and (modules[-1].startswith("bn") or modules[-1].endswith("_bn")):
        suffix = _BN[leaf]
    else:
        suffix = leaf  # bias
    return tuple(f"{b}.{suffix}" for b in base), leaf


def _convert(name: str, value: np.ndarray, leaf: str) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if leaf != "kernel":
        return value
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # [out, in] -> [in, out]
        return value.T
    raise WeightsMismatch(f"{name}: unexpected rank {value.ndim}")


def _flatten_permutation(in_features: int, channels: int) -> Optional[np.ndarray]:
    """Row order taking torch's (C, h, w) flatten to NHWC's (h, w, C), or None if not a square pooled input."""
    if in_features % channels:
        return None
    side = int(round((in_features // channels) ** 0.5))
    if side * side * channels != in_features:
        return None
    return np.arange(in_features).reshape(channels, side, side).transpose(1, 2, 0).reshape(-1)


def variables_from_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any], *,
                              pooled_channels: int = 256, include_predictor: bool = True,
                              strict: bool = True) -> Dict[str, Any]:
    """The model's variables filled from a torchvision detection state dict.

    Args:
      state_dict: {torch name: array} (`jaxdet.models.torch_checkpoint.load_state_dict`).
      template: the model's variables or their shapes (`jax.eval_shape(model.init, ...)`): which
        variables to fill, and their shapes.
      pooled_channels: channels of the RoIAlign output (the FPN's, 256), for the fc6 permutation.
      include_predictor: False keeps the template's `box_predictor` (new classes for fine-tuning;
        the template must then hold arrays, not shapes, there).
      strict: raise on state-dict names the model does not use (besides num_batches_tracked).

    Returns:
      {"params": ..., "batch_stats": ...} of numpy float32 arrays.

    Raises:
      WeightsMismatch: names missing, unused (strict) or of other shapes, all listed.
    """
    flat = traverse_util.flatten_dict(dict(template))
    out, used, problems = {}, set(), []
    for path, target in flat.items():
        collection, rest = path[0], path[1:]
        if rest[0] == "box_predictor" and not include_predictor:
            out[path] = np.asarray(target)
            continue
        names, leaf = _torch_names(rest)
        name = next((n for n in names if n in state_dict), None)
        if name is None:
            problems.append(f"missing {' or '.join(names)} (for {'/'.join(path)})")
            continue
        used.add(name)
        value = _convert(name, state_dict[name], leaf)
        if leaf == "kernel" and value.ndim == 2 and rest[0] == "head" and rest[1] in ("fc6", "fc0"):
            order = _flatten_permutation(value.shape[0], pooled_channels)
            if order is not None:
                value = value[order]
        if value.shape != tuple(target.shape):
            problems.append(f"{name}: shape {value.shape} (converted) where {'/'.join(path)} is {tuple(target.shape)}")
            continue
        out[path] = value
    unused = sorted(n for n in state_dict if n not in used and not n.endswith("num_batches_tracked")
                    and not (not include_predictor and n.startswith("roi_heads.box_predictor.")))
    if strict and unused:
        problems.append(f"unused names in the state dict: {', '.join(unused[:20])}"
                        + (f" and {len(unused) - 20} more" if len(unused) > 20 else ""))
    if problems:
        raise WeightsMismatch("the state dict does not fit the model:\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(out)


def template_variables(model, image_hw=(64, 64), num_rois: int = 1):
    """The shapes of `model`'s variables (no compute: `jax.eval_shape` of `init`)."""
    images = jnp.zeros((1, *image_hw, 3), jnp.float32)
    rois = jnp.zeros((1, num_rois, 4), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, rois))


def load_torchvision_detection(path_or_file, model, *, include_predictor: bool = True, rng_seed: int = 0,
                               strict: bool = True) -> Dict[str, Any]:
    """Reads a torchvision `fasterrcnn_resnet50_fpn(_v2)` `.pth` (no torch needed) into `model`'s variables.

    With `include_predictor=False` the predictor is initialised afresh (seed `rng_seed`) for the
    model's own `num_classes`, every other layer imported.
    """
    state_dict = load_state_dict(path_or_file)
    if include_predictor:
        template = template_variables(model)
    else:
        template = model.init(jax.random.PRNGKey(rng_seed), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4)))
    variables = variables_from_state_dict(state_dict, template, pooled_channels=model.fpn_channels,
                                          include_predictor=include_predictor, strict=strict)
    return jax.tree_util.tree_map(jnp.asarray, variables)
