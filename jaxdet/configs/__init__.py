"""Experiment configs: `get_config(variant="")` functions returning an `ml_collections.ConfigDict`.

The named configs ship with the package, as modules of this one: `base` (the paper's VGG16 VOC07
recipe, every field explained) and the variants that start from it, `vgg16_voc07`, `vgg16_coco`,
`fast_rcnn_vgg16`, `tiny_shapes` and `shapes_demo`; and torchvision's COCO detectors, whose
weights import whole, `fasterrcnn_resnet50_fpn_coco` and `fasterrcnn_resnet50_fpn_v2_coco`. A config of your own is a Python file
anywhere with the same `get_config` (it may start from `jaxdet.configs.base.get_config()`); it
is read by path, not imported (ml_collections' convention).

    load_config("tiny_shapes:smoke")        a named config and its variant
    load_config("my_configs/voc.py:smoke")  a config file
"""

import importlib
import importlib.util
import os
import traceback

import ml_collections

from jaxdet.errors import UsageError

NAMES = ("shapes_demo", "tiny_shapes", "vgg16_voc07", "vgg16_coco", "fast_rcnn_vgg16", "fasterrcnn_resnet50_fpn_coco",
         "fasterrcnn_resnet50_fpn_v2_coco")


class ConfigNotFound(UsageError, FileNotFoundError):
    """A config spec that is neither a config file nor one of NAMES; the message lists them."""


class ConfigFileError(UsageError):
    """A config file that cannot run (a syntax error, a failed import, an exception) or whose
    get_config() returns no ConfigDict; the message names the file and the line."""


def _failed(path, error: BaseException, doing: str) -> ConfigFileError:
    """ConfigFileError naming the line of `path` where `error` was raised (or, for a syntax error, found)."""
    if isinstance(error, SyntaxError) and error.filename and os.path.samefile(error.filename, path):
        return ConfigFileError(f"config file {path}, line {error.lineno}: {type(error).__name__}: {error.msg}")
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.exists(frame.filename) and os.path.samefile(frame.filename, path)]
    where = f", line {lines[-1]}" if lines else ""
    return ConfigFileError(f"config file {path}{where}: {type(error).__name__}: {error} (while {doing})")


def load_config_module(path):
    """The executed module of the Python config file at `path`.

    Raises:
      ConfigFileError: running it failed (a syntax error, a module it imports that is not installed),
        naming the line.
    """
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise _failed(path, e, "running the file") from e
    return module


def load_config_file(path, variant=""):
    """`get_config(variant)` of the config file at `path` (`get_config()` for no variant).

    Raises:
      ConfigFileError: the file cannot run, get_config() fails (but with a ValueError, as for an
        unknown variant), or it returns no ConfigDict.
    """
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigNotFound(f"config file {path} has no get_config() function")
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except ValueError:
        raise
    except Exception as e:
        raise _failed(path, e, "calling get_config()") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(
            f"config file {path}: get_config() returned {type(config).__name__} ({str(config)[:60]}), not an "
            "ml_collections.ConfigDict: it must end with `return config`, e.g. config = "
            "jaxdet.configs.base.get_config(); ...; return config")
    return config


def load_config(spec):
    """The ConfigDict of `spec`: `NAME[:VARIANT]` for a named config (NAMES), else `PATH[:VARIANT]`
    of a config file (`.py` may be left out).

    Raises:
      ConfigNotFound: no such file or name.
      ValueError: the config does not know the variant.
    """
    path, _, variant = spec.partition(":")
    if path in NAMES:
        module = importlib.import_module(f"{__name__}.{path}")
        return module.get_config(variant) if variant else module.get_config()
    for candidate in (path, path + ".py"):
        if os.path.isfile(candidate):
            return load_config_file(candidate, variant)
    raise ConfigNotFound(f"config file {path!r} not found. Give the path of a Python config file with a "
                         f"get_config() function, or one of the configs that come with jaxdet by name: "
                         f"{', '.join(NAMES)}.")
