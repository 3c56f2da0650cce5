"""VGG16 weight conversion: PyTorch-layout state dicts -> detector variables, and back.

The state dicts are synthetic but have torchvision's real key names and shapes (the 13 convs,
fc6 [4096, 25088], fc7, and the 1000-way classifier.6 the detector does not use). Beyond the
round trip, the converted network is checked against an NCHW computation written here from
the PyTorch-layout weights, so two mutually inverse but wrong permutations cannot pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxdet.models import VGG16, VGG16BN, FCHead, FasterRCNN
from jaxdet.models.weights import (VGG16_CONVS, WeightsError, convert_vgg16, load_pretrained, load_state_dict,
                                     vgg16_state_dict)

# torchvision.models.vgg16().features: (index, in, out) of each 3x3 conv.
TORCHVISION_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                     (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
                     (26, 512, 512), (28, 512, 512)]


def synthetic_state_dict(rng, *, include_fc=True, hidden=4096):
    sd = {}
    for index, cin, cout in TORCHVISION_CONVS:
        sd[f"features.{index}.weight"] = rng.standard_normal((cout, cin, 3, 3), np.float32) * 0.05
        sd[f"features.{index}.bias"] = rng.standard_normal((cout,), np.float32)
    if include_fc:
        sd["classifier.0.weight"] = rng.standard_normal((hidden, 25088), np.float32) * 0.01
        sd["classifier.0.bias"] = rng.standard_normal((hidden,), np.float32)
        sd["classifier.3.weight"] = rng.standard_normal((hidden, hidden), np.float32) * 0.02
        sd["classifier.3.bias"] = rng.standard_normal((hidden,), np.float32)
        sd["classifier.6.weight"] = np.zeros((1000, hidden), np.float32)
        sd["classifier.6.bias"] = np.zeros((1000,), np.float32)
    return sd


def detector_shapes(hidden=(4096, 4096), backbone=VGG16):
    """Variable shapes of a VGG16 Faster R-CNN (no memory spent on values)."""
    model = FasterRCNN(backbone=backbone(), box_head=FCHead(hidden=hidden), num_classes=20)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4)))


@pytest.fixture(scope="module")
def full():
    sd = synthetic_state_dict(np.random.default_rng(0))
    return sd, convert_vgg16(sd, detector_shapes())["params"]


def torch_style_vgg16(x_nchw, sd):
    """conv5_3 features computed the PyTorch way: NCHW activations, OIHW weights."""
    x = jnp.asarray(x_nchw)
    for n, (index, _, _) in enumerate(TORCHVISION_CONVS):
        if n in (2, 4, 7, 10):  # max pool before conv2_1, conv3_1, conv4_1, conv5_1
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        x = jax.lax.conv_general_dilated(x, sd[f"features.{index}.weight"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                         precision=jax.lax.Precision.HIGHEST)
        x = jax.nn.relu(x + sd[f"features.{index}.bias"][None, :, None, None])
    return x


def test_round_trip_real_names_and_shapes(full):
    sd, params = full
    assert list(params["backbone"]) == list(VGG16_CONVS)
    assert params["box_head"]["fc6"]["kernel"].shape == (25088, 4096)
    back = vgg16_state_dict({"params": params})
    assert set(back) == set(sd) - {"classifier.6.weight", "classifier.6.bias"}
    for key, value in back.items():
        np.testing.assert_array_equal(value, sd[key], err_msg=key)
    # Layers the file does not hold keep their (abstract) initial values.
    assert isinstance(params["rpn"]["conv"]["kernel"], jax.ShapeDtypeStruct)


def test_converted_backbone_computes_what_torch_layout_computes(full):
    sd, params = full
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 48), np.float32)
    ours = VGG16().apply({"params": params["backbone"]}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    ref = torch_style_vgg16(x, sd)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, rtol=2e-4, atol=2e-4)


def test_converted_fc6_fc7_match_torch_flatten_order(full):
    sd, params = full
    pooled_nchw = np.random.default_rng(2).standard_normal((2, 512, 7, 7), np.float32)
    # PyTorch: x.view(N, -1) of NCHW, then Linear layers with ReLU.
    h = np.maximum(pooled_nchw.reshape(2, -1) @ sd["classifier.0.weight"].T + sd["classifier.0.bias"], 0)
    ref = np.maximum(h @ sd["classifier.3.weight"].T + sd["classifier.3.bias"], 0)
    ours = FCHead().apply({"params": params["box_head"]}, jnp.asarray(pooled_nchw.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3)


def test_caffe_layer_names_give_the_same_params():
    sd = synthetic_state_dict(np.random.default_rng(7), hidden=64)
    params = convert_vgg16(sd, detector_shapes(hidden=(64, 64)))["params"]
    caffe = {}
    for n, (index, _, _) in enumerate(TORCHVISION_CONVS):
        for kind in ("weight", "bias"):
            caffe[f"{VGG16_CONVS[n]}.{kind}"] = sd[f"features.{index}.{kind}"]
    for fc, index in (("fc6", 0), ("fc7", 3)):
        for kind in ("weight", "bias"):
            caffe[f"{fc}.{kind}"] = sd[f"classifier.{index}.{kind}"]
    converted = convert_vgg16(caffe, detector_shapes(hidden=(64, 64)))["params"]
    for a, b in zip(jax.tree.leaves(converted["backbone"]) + jax.tree.leaves(converted["box_head"]),
                    jax.tree.leaves(params["backbone"]) + jax.tree.leaves(params["box_head"])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_files_load_and_missing_fc_is_named(tmp_path, fmt):
    sd = synthetic_state_dict(np.random.default_rng(3), include_fc=False)
    path = str(tmp_path / f"vgg16.{fmt}")
    if fmt == "npz":
        np.savez(path, **sd)
    else:
        save_file(sd, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(sd)
    shapes = detector_shapes(hidden=(64, 64))
    params = load_pretrained(path, shapes, include_fc=False)["params"]
    np.testing.assert_array_equal(params["backbone"]["conv1_1"]["kernel"],
                                  sd["features.0.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(WeightsError, match=r"missing key 'classifier\.0\.weight'.*box_head/fc6/kernel") as err:
        load_pretrained(path, shapes)
    assert path in str(err.value)


def test_mis_shaped_and_missing_keys_are_named():
    sd = synthetic_state_dict(np.random.default_rng(4), include_fc=False)
    shapes = detector_shapes()
    bad = dict(sd, **{"features.2.weight": np.zeros((64, 32, 3, 3), np.float32)})
    with pytest.raises(WeightsError, match=r"'features\.2\.weight' has shape \(64, 32, 3, 3\).*backbone/conv1_2/kernel"
                                           r".*expected \(3, 3, 64, 64\)"):
        convert_vgg16(bad, shapes, include_fc=False)
    del sd["features.28.bias"]
    with pytest.raises(WeightsError, match=r"missing key 'features\.28\.bias'.*backbone/conv5_3/bias"):
        convert_vgg16(sd, shapes, include_fc=False)


def test_fc6_of_another_width_is_an_error_naming_the_key(full):
    sd, _ = full
    with pytest.raises(WeightsError, match=r"'classifier\.0\.weight' has shape \(4096, 25088\)"):
        convert_vgg16(sd, detector_shapes(hidden=(64, 64)))


def test_pth_needs_torch_or_loads_with_it(tmp_path):
    path = str(tmp_path / "vgg16.pth")
    sd = synthetic_state_dict(np.random.default_rng(6), include_fc=False)
    try:
        import torch
    except ImportError:
        open(path, "wb").close()
        with pytest.raises(ImportError, match="needs PyTorch"):
            load_state_dict(path)
        return
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    loaded = load_state_dict(path)
    np.testing.assert_array_equal(loaded["features.28.weight"], sd["features.28.weight"])


def test_unknown_and_absent_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_state_dict(str(tmp_path / "absent.npz"))
    path = tmp_path / "weights.h5"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"unknown weight file type '\.h5'"):
        load_state_dict(str(path))


def test_config_pretrained_path_loads_into_the_train_state(tmp_path):
    from helpers import load_config
    from jaxdet.training import create_train_state

    config = load_config("vgg16_voc07", "smoke")
    config.model.head_hidden = (64, 64)  # a small fc6/fc7 keeps the test light
    sd = synthetic_state_dict(np.random.default_rng(8), hidden=64)
    path = str(tmp_path / "vgg16.npz")
    np.savez(path, **sd)
    config.model.pretrained = path
    state = create_train_state(config, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(state.params["backbone"]["conv5_3"]["kernel"],
                                  sd["features.28.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(state.params["box_head"]["fc7"]["kernel"], sd["classifier.3.weight"].T)
    del sd["classifier.3.bias"]
    np.savez(path, **sd)
    with pytest.raises(WeightsError, match=r"vgg16\.npz: missing key 'classifier\.3\.bias'"):
        create_train_state(config, jax.random.PRNGKey(0))


# torchvision.models.vgg16_bn().features: each conv is followed by BatchNorm2d at the next index.
TORCHVISION_BN_CONVS = [(index, cin, cout) for index, (_, cin, cout) in
                        zip((0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40), TORCHVISION_CONVS)]


def synthetic_bn_state_dict(rng):
    """vgg16_bn features with He-scaled convs and batch normalisations far from the identity."""
    sd = {}
    for index, cin, cout in TORCHVISION_BN_CONVS:
        sd[f"features.{index}.weight"] = rng.standard_normal((cout, cin, 3, 3), np.float32) * float(np.sqrt(2 / (9 * cin)))
        sd[f"features.{index}.bias"] = rng.standard_normal((cout,), np.float32) * 0.1
        sd[f"features.{index + 1}.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        sd[f"features.{index + 1}.bias"] = rng.standard_normal((cout,), np.float32) * 0.2
        sd[f"features.{index + 1}.running_mean"] = rng.standard_normal((cout,), np.float32)
        sd[f"features.{index + 1}.running_var"] = rng.uniform(0.3, 3.0, cout).astype(np.float32)
        sd[f"features.{index + 1}.num_batches_tracked"] = np.array(1000, np.int64)
    return sd


def numpy_vgg16_bn(x_nchw, sd):
    """conv5_3 features of torchvision's vgg16_bn in float64 numpy: conv (zero padding 1),
    BatchNorm2d in eval mode ((x - running_mean) / sqrt(running_var + 1e-5) * weight + bias),
    ReLU, and 2x2 max pools before conv2_1, conv3_1, conv4_1 and conv5_1."""
    x = np.asarray(x_nchw, np.float64)
    for n, (index, _, _) in enumerate(TORCHVISION_BN_CONVS):
        if n in (2, 4, 7, 10):
            b, c, h, w = x.shape
            x = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        weight = sd[f"features.{index}.weight"].astype(np.float64)
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, w = x.shape[2:]
        x = sum(np.einsum("bchw,oc->bohw", padded[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
                for dy in range(3) for dx in range(3)) + sd[f"features.{index}.bias"][None, :, None, None]
        bn = {k: sd[f"features.{index + 1}.{k}"].astype(np.float64)[None, :, None, None]
              for k in ("weight", "bias", "running_mean", "running_var")}
        x = (x - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-5) * bn["weight"] + bn["bias"]
        x = np.maximum(x, 0)
    return x


def test_vgg16_bn_weights_give_torchvisions_features():
    sd = synthetic_bn_state_dict(np.random.default_rng(9))
    variables = convert_vgg16(sd, detector_shapes(hidden=(64, 64), backbone=VGG16BN), include_fc=False)
    assert variables["params"]["backbone"]["bn3_2"]["scale"].shape == (256,)
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["bn4_1"]["var"], sd["features.25.running_var"])
    x = np.random.default_rng(10).standard_normal((1, 3, 32, 48), np.float32)
    backbone = {collection: variables[collection]["backbone"] for collection in ("params", "batch_stats")}
    ours = VGG16BN().apply(backbone, jnp.asarray(x.transpose(0, 2, 3, 1)))
    ref = numpy_vgg16_bn(x, sd)
    assert ref.shape == (1, 512, 2, 3) and np.abs(ref).max() > 0.1  # features that say something
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
    # The inverse gives back every tensor of the file but the counters.
    back = vgg16_state_dict(variables, include_fc=False)
    assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for key, value in back.items():
        np.testing.assert_array_equal(value, sd[key], err_msg=key)


def test_vgg16_weights_do_not_fit_a_vgg16_bn_backbone():
    sd = synthetic_state_dict(np.random.default_rng(11), include_fc=False)
    with pytest.raises(WeightsError, match=r"missing key 'features\.1\.weight' \(torchvision VGG16-BN layout\)"):
        convert_vgg16(sd, detector_shapes(backbone=VGG16BN), include_fc=False)


def test_config_vgg16_bn_backbone_loads_statistics_into_the_train_state(tmp_path):
    from helpers import load_config
    from jaxdet.training import create_train_state

    config = load_config("vgg16_voc07", "smoke")
    config.model.backbone = "vgg16_bn"
    config.model.head_hidden = (64, 64)
    rng = np.random.default_rng(12)
    fc = {k: v for k, v in synthetic_state_dict(rng, hidden=64).items() if k.startswith("classifier.")}
    sd = {**synthetic_bn_state_dict(rng), **fc}
    config.model.pretrained = str(tmp_path / "vgg16_bn.npz")
    np.savez(config.model.pretrained, **sd)
    state = create_train_state(config, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(state.model_state["batch_stats"]["backbone"]["bn5_3"]["mean"],
                                  sd["features.41.running_mean"])
    np.testing.assert_array_equal(state.params["backbone"]["bn5_3"]["scale"], sd["features.41.weight"])
    np.testing.assert_array_equal(state.params["box_head"]["fc6"]["bias"], sd["classifier.0.bias"])
