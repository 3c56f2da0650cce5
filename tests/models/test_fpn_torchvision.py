"""jaxdet's FPN Faster R-CNN against torchvision itself, where torch and torchvision are installed
(skipped otherwise): the `.pth` reader on files torch wrote, the transform bit for bit, and
proposals and detections of fasterrcnn_resnet50_fpn and _v2 on a photograph
(experiments/fpn_vs_torchvision.py has the whole comparison and its figures)."""

import collections
import importlib.util
import io
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from jaxdet.models import fpn_transform  # noqa: E402
from jaxdet.models.torch_checkpoint import load, load_state_dict  # noqa: E402

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "fpn_vs_torchvision.py"


def experiment():
    if str(EXPERIMENT.parent) not in sys.path:
        sys.path.insert(0, str(EXPERIMENT.parent))  # its `common` module
    spec = importlib.util.spec_from_file_location("fpn_vs_torchvision", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_reader_on_files_torch_wrote():
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    obj = {
        "model": collections.OrderedDict(
            w=base, wt=base.t(), row=base[1], cols=base[:, 1::2], half=torch.randn(3).half(),
            bf16=torch.randn(5).bfloat16(), long=torch.arange(7), flag=torch.tensor([True, False]),
            double=torch.randn(2, 2, dtype=torch.float64), i8=torch.tensor([-3, 4], dtype=torch.int8),
            u8=torch.tensor([200, 3], dtype=torch.uint8), empty=torch.zeros(0, 3), scalar=torch.tensor(2.5)),
        "nested": {"list": [torch.ones(2), 3, "x"], "tuple": (torch.zeros(1),)},
        "epoch": 12,
    }
    got = load(saved(obj))
    for name, value in obj["model"].items():
        want = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        have = got["model"][name]
        have = have.astype(np.float32) if value.dtype == torch.bfloat16 else have
        assert have.shape == want.shape and have.dtype == want.dtype, name
        np.testing.assert_array_equal(have, want, err_msg=name)
    assert got["epoch"] == 12 and got["nested"]["list"][1:] == [3, "x"]
    np.testing.assert_array_equal(got["nested"]["tuple"][0], [0.0])
    # A module's state dict (OrderedDict with _metadata, tied storages).
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    state = load_state_dict(saved({"model": net.state_dict(), "optimizer": {}}))
    assert set(state) == set(net.state_dict())
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(state[name], value.numpy())


@pytest.mark.parametrize("shape", [(300, 451), (512, 512), (123, 377), (1500, 900)])
def test_transform_bit_for_bit(shape):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    transform = GeneralizedRCNNTransform(800, 1333, list(fpn_transform.IMAGENET_MEAN),
                                         list(fpn_transform.IMAGENET_STD)).eval()
    images, _ = transform([torch.from_numpy(image).permute(2, 0, 1).float().div(255).contiguous()])
    batch, image_hw = fpn_transform.transform_batch([image])
    assert batch.shape[1:3] == tuple(images.tensors.shape[-2:])
    assert tuple(image_hw[0]) == tuple(images.image_sizes[0])
    np.testing.assert_array_equal(batch[0], images.tensors[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("variant,photo", [("v1", "chelsea"), ("v2", "coffee")])
def test_proposals_and_detections_match_torchvision(variant, photo):
    exp = experiment()
    (row,) = exp.compare(variant, exp.photographs([photo]), verbose=False)
    assert row["transform_diff"] == 0.0
    assert row["detections"][0] >= 50 and row["top_score"] > 0.3  # not a vacuous comparison
    assert min(row["proposals_matched"]) >= 0.99, row
    assert min(row["detections_matched"]) >= 0.99, row
