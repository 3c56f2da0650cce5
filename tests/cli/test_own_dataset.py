"""Training on one's own data: a plain VOC-format folder of variable-size JPEG photographs with its own
class names (Annotations/, JPEGImages/, ImageSets/Main/{train,test}.txt, as labelImg or CVAT export),
trained and evaluated by the command line with the flags of the README's "Training on your own data"."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxdet import cli, overrides
from jaxdet.configs import load_config
from jaxdet.data import (VOC_CLASSES, DataError, ShapesConfig, find_voc_split, make_dataset, make_shapes, write_coco,
                         write_voc)
from jaxdet.data.build import DatasetNotFound, load_dataset, model_num_classes, with_class_names

CLASSES = ("coin", "face")  # the shapes' circle and square, renamed: sorted, as discovery finds them
# (height, width) of each image, no two alike; all landscape, so that one padded shape is compiled.
SIZES = {"train": [(48, 64), (40, 60), (56, 72), (40, 56)], "test": [(44, 60), (44, 68)]}
# The issue's command, on images small enough for a few CPU steps (tiny_shapes' smoke schedule and sampling).
FLAGS = ("--config", "tiny_shapes:smoke", "--config.data.dataset=voc", "--config.data.train_splits=train",
         "--config.data.test_split=test", "--config.data.min_size=64", "--config.data.max_size=96",
         "--config.train.num_steps=2", "--config.train.checkpoint_every=2", "--no-progress")


def _write_dataset(root):
    """Both splits of a plain VOC folder: shapes drawn at SIZES, saved as JPEGs with VOC XML naming CLASSES."""
    for split_index, (split, sizes) in enumerate(SIZES.items()):
        records = []
        for i, size in enumerate(sizes):
            drawn = make_shapes(1, seed=100 * split_index + i, config=ShapesConfig(
                image_size=size, classes=("circle", "square"), max_objects=2, min_object_size=12,
                max_object_size=28))
            records.append(drawn.records[0])
        write_voc(make_dataset(records, CLASSES), str(root), split, image_format="jpg")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_photos")
    _write_dataset(root)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, photos):
    workdir = tmp_path_factory.mktemp("run") / "w"
    assert cli.main(["train", *FLAGS, f"--config.data.root={photos}", "--workdir", str(workdir)]) == 0
    return workdir


def _config(photos, **data):
    config = load_config("tiny_shapes:smoke")
    config.data.update({**dict(dataset="voc", root=str(photos), train_splits=("train",), test_split="test",
                               min_size=64, max_size=96), **data})
    return config


def test_the_folder_is_plain_voc_with_variable_size_jpegs(photos):
    assert sorted(os.listdir(photos)) == ["Annotations", "ImageSets", "JPEGImages"]
    assert find_voc_split(str(photos), "train") == (str(photos), "train")
    sizes = {Image.open(os.path.join(photos, "JPEGImages", name)).size
             for name in os.listdir(os.path.join(photos, "JPEGImages"))}
    assert len(sizes) == 6 and all(name.endswith(".jpg") for name in os.listdir(photos / "JPEGImages"))


def test_train_discovers_stores_and_evaluates_with_the_classes(trained):
    assert json.loads((trained / "class_names.json").read_text()) == list(CLASSES)
    saved = json.loads((trained / "config.json").read_text())
    assert saved["data"]["classes"] == list(CLASSES) and saved["model"]["num_classes"] == 2
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["per_class_ap"]) == set(CLASSES)
    assert metrics["eval_images"] == len(SIZES["test"]) and metrics["steps"] == 2


def test_eval_and_predict_use_the_runs_classes(trained, photos, tmp_path, capsys):
    # A test split holding only faces: discovered on its own it would make "face" label 0.
    faces_only = tmp_path / "faces"
    _write_dataset(faces_only)
    for name in os.listdir(faces_only / "Annotations"):
        path = faces_only / "Annotations" / name
        path.write_text(path.read_text().replace("<name>coin</name>", "<name>face</name>"))
    # The config given again on the command line, classes unset: class_names.json settles them.
    status = cli.main(["eval", *FLAGS, "--workdir", str(trained), f"--config.data.root={faces_only}"])
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["per_class_ap"]) == set(CLASSES) and metrics["eval_images"] == len(SIZES["test"])
    assert metrics["per_class_ap"]["coin"] is None  # no coin left in these annotations: no AP, not face's
    status = cli.main(["predict", *FLAGS, "--workdir", str(trained), str(photos / "JPEGImages"), "--out",
                       str(tmp_path / "pred"), "--score-threshold", "0"])
    assert status == 0, capsys.readouterr().err
    found = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert {d["class"] for image in found["images"] for d in image["detections"]} <= set(CLASSES)


def test_explicit_classes_keep_their_order(photos):
    config = _config(photos, classes=("face", "coin"))
    train = load_dataset(config, "train")
    discovered = load_dataset(_config(photos), "train")
    assert train.class_names == ("face", "coin") and discovered.class_names == CLASSES
    for mine, sorted_ in zip(train.records, discovered.records):
        np.testing.assert_array_equal(mine.labels, 1 - sorted_.labels)
    assert model_num_classes(config) == 2
    assert load_dataset(config, "test").class_names == ("face", "coin")


def test_explicit_classes_on_the_command_line(photos):
    config = _config(photos)
    overrides.apply_override(config, "data.classes", "face,coin")
    assert config.data.classes == ("face", "coin")
    assert load_dataset(config, "train").class_names == ("face", "coin")


def test_a_class_missing_from_data_classes_names_the_file_and_object(photos):
    with pytest.raises(DataError, match=r"Annotations/\w+\.xml: object \d \('face'\) has an unknown class name"):
        load_dataset(_config(photos, classes=("coin",)), "train")


def test_num_classes_mismatch_names_both(photos, tmp_path, capsys):
    config = _config(photos)
    config.model.num_classes = 3
    with pytest.raises(ValueError, match=r"num_classes is 3 but the class list has 2 classes \('coin', 'face'\)"):
        with_class_names(config, load_dataset(config, "train").class_names)
    status = cli.main(["train", *FLAGS, f"--config.data.root={photos}", "--workdir", str(tmp_path / "w"),
                       "--config.model.num_classes=3"])
    err = capsys.readouterr().err
    assert status == 2 and "--config.model.num_classes is 3" in err and "'coin', 'face'" in err, err


def test_neither_layout_names_both_paths(photos):
    with pytest.raises(DatasetNotFound) as caught:
        load_dataset(_config(photos, train_splits=("trainval",)), "train")
    message = str(caught.value)
    assert os.path.join(str(photos), "ImageSets", "Main", "trainval.txt") in message
    assert os.path.join(str(photos), "YEAR", "ImageSets", "Main", "trainval.txt") in message


def test_a_coco_folder_takes_its_classes_from_the_json(photos, tmp_path):
    root = tmp_path / "my_coco"
    for split in SIZES:
        voc = load_dataset(_config(photos), split)
        write_coco(voc, str(root / "annotations" / f"instances_{split}.json"), str(root / split))
    config = _config(root, dataset="coco")
    train = load_dataset(config, "train")
    assert train.class_names == CLASSES
    assert with_class_names(config, train.class_names).model.num_classes == 2
    with pytest.raises(ValueError, match=r"instances_train\.json: its categories \(in id order\) \('coin', 'face'\) "
                                         r"are not config\.data\.classes \('face', 'coin'\)"):
        load_dataset(_config(root, dataset="coco", classes=("face", "coin")), "train")


def test_the_readme_commands_config_reads_the_folder(photos):
    """The flags of the issue and README as given (tiny_shapes, 224-320 px), short of training."""
    from jaxdet.data.build import train_pipeline

    _, pairs = overrides.split_overrides(["--config.data.dataset=voc", f"--config.data.root={photos}",
                                          "--config.data.train_splits=train", "--config.data.test_split=test",
                                          "--config.data.min_size=224", "--config.data.max_size=320"])
    config = load_config("tiny_shapes")
    for key, text in pairs:
        overrides.apply_override(config, key, text)
    config.train.batch_size = 4
    train = load_dataset(config, "train")
    config = with_class_names(config, train.class_names)
    assert config.data.classes == CLASSES and model_num_classes(config) == 2
    batch = train_pipeline(config, train).build_batch(0)
    # Each image's short side 224 (its long side at most 320), padded into one landscape bucket.
    assert batch["images"].shape[0] == 4 and batch["images"].shape[1] < batch["images"].shape[2] <= 320
    assert all(min(hw) == 224 or max(hw) == 320 for hw in batch["image_hw"].tolist())


def test_a_vocdevkit_keeps_the_20_voc_classes(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    records = make_shapes(2, seed=5, config=ShapesConfig(image_size=(40, 56), classes=("circle", "square"),
                                                         max_object_size=28)).records
    write_voc(make_dataset(records, ("dog", "cat")), str(devkit / "VOC2007"), "trainval", image_format="jpg")
    config = load_config("vgg16_voc07")
    config.data.root = str(devkit)
    assert model_num_classes(config) == 20  # the model needs no data to know it
    train = load_dataset(config, "train")
    assert train.class_names == VOC_CLASSES
    names = [VOC_CLASSES[label] for r in train.records for label in r.labels]
    assert set(names) <= {"dog", "cat"} and names
