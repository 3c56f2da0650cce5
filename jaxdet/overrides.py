"""Overriding a config's fields from the command line: `--config.SECTION.FIELD=VALUE`.

ml_collections' `config_flags` reads such overrides, but only as absl flags: it defines a
global `--config` flag in absl's FLAGS and parses the whole command line with absl, which the
`jaxdet` command's argparse subcommands (each with its own options and help) cannot share. This
module keeps the rest of its machinery: the override's path is read, typed and set with
`config_flags.config_path` (`get_value`, `get_type`, `set_value`), and its text parsed with the
parsers `config_flags` uses (absl's for bool, int, float and str; `TupleParser` for tuples). What
it adds: a key the config lacks is named with its close matches; a field that is None is typed
by its value in `jaxdet/configs/base.py`; a pair-valued field (`jaxdet.settings.PAIRS`) given one
number of a size is its square; and `as_flags` writes the config keys the library's messages
name (`config.train.num_steps`) as the flags that set them (`--config.train.num_steps`).

    rest, overrides = split_overrides(argv)        # [("train.num_steps", "500"), ...]
    config = config_for(spec, workdir, overrides)  # --config, else the run's config.json
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from typing import Any, Sequence

from absl import flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags.tuple_parser import TupleParser

from jaxdet import configs, settings, workdir as run_files
from jaxdet.configs import base
from jaxdet.errors import UsageError

OVERRIDE_PREFIX = "--config."

# How the commands' help explains --config and the overrides.
HELP = """\
config options:
  --config NAME[:VARIANT]  one of jaxdet's configs (shapes_demo, tiny_shapes, vgg16_voc07,
                           vgg16_coco, fast_rcnn_vgg16), or the path of a Python config file whose
                           get_config() returns the experiment's ConfigDict; :smoke picks a
                           config's smoke variant
  --config.SECTION.FIELD=VALUE
                           override one field, e.g. --config.train.num_steps=500
                           --config.optimizer.learning_rate=3e-4 --config.data.root=/data/VOCdevkit
                           --config.model.anchor_scales=4,8,16 (typed like the field's value)
"""


def load_config(spec: str):
    """The ConfigDict of `NAME[:VARIANT]` or `PATH[:VARIANT]` (`jaxdet.configs.load_config`).

    Raises:
      ConfigNotFound: no such file or name.
      UsageError: the config does not know the variant.
    """
    try:
        return configs.load_config(spec)
    except ValueError as e:
        raise UsageError(f"config {spec}: {e}") from e


def config_keys(config, prefix: str = "") -> list:
    """Every dotted key path of a ConfigDict, sections and leaves."""
    keys = []
    for name in config.keys():
        key = f"{prefix}{name}"
        keys.append(key)
        value = config[name]
        if hasattr(value, "keys"):
            keys += config_keys(value, key + ".")
    return keys


def _unknown_key(key: str, config, config_name: str) -> UsageError:
    keys = config_keys(config)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:
        # A misspelt field in the right place or the right field in the wrong section.
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.8)][:3]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    sections = sorted(k for k in keys if "." not in k)
    return UsageError(f"unknown config key {key!r} in {config_name}.{hint} Overrides are written "
                      f"--config.SECTION.FIELD=VALUE with a field the config already has (its sections: "
                      f"{', '.join(sections)}); jaxdet/configs/base.py explains each field.")


def _parse_tuple(text: str, current: tuple) -> tuple:
    """A tuple field's text: a Python literal as ml_collections' TupleParser reads it ("4,8,16",
    "(0.5, 1.0)"), words separated by commas ("circle,ring"), or "" for the empty tuple; items
    that are words take the type of the field's first item."""
    if not text.strip():
        return ()
    try:
        items = TupleParser().parse(text)
    except ValueError:
        items = ()
    if all(isinstance(item, str) for item in items):
        words = [word.strip() for word in text.strip().strip("()[]").split(",") if word.strip()]
        items = tuple(_parse_value(word, type(current[0]), current[0]) for word in words) if current else tuple(words)
    return type(current)(items)


def _parse_value(text: str, field_type: type, current: Any) -> Any:
    """`text` as a value of `field_type`, with the parsers ml_collections' config flags use
    (absl's for bool, int, float and str; a Python literal, else the text, for a None field)."""
    parsers = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
               str: flags.ArgumentParser()}
    if field_type in parsers:
        return parsers[field_type].parse(text)
    if field_type in (tuple, list):
        return _parse_tuple(text, current)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a field that is None accepts a plain string


def _base_value(key: str) -> Any:
    """The value of `key` in jaxdet/configs/base.py, or None where it has none."""
    try:
        return config_path.get_value(key, base.get_config())
    except (AttributeError, KeyError, IndexError, ValueError):
        return None


def apply_override(config, key: str, text: str, *, config_name: str = "the config") -> None:
    """Sets `config[key]` (dotted) from its command-line text, typed like the current value (a field
    that is None, like tiny_shapes' data.min_size, like its value in the base config, or "None"); a
    pair-valued field (`jaxdet.settings.PAIRS`) given one number of a size is its square.

    Raises:
      UsageError: the key is not in the config (naming close matches) or the text does not parse.
      InvalidSetting: a pair-valued field given another number of items.
    """
    try:
        current = config_path.get_value(key, config)
    except (AttributeError, KeyError, IndexError, ValueError):
        raise _unknown_key(key, config, config_name) from None
    if hasattr(current, "keys"):
        raise UsageError(f"config key {key!r} is a section, not a field; set one of its fields, e.g. "
                         f"--config.{key}.{next(iter(current.keys()), 'FIELD')}=...")
    field_type, like = config_path.get_type(key, config), f"like the field's current value {current!r}"
    known = _base_value(key) if current is None and text.strip() != "None" else None
    if known is not None:
        field_type, like = type(known), f"(or None) like the field's value {known!r} in jaxdet/configs/base.py"
    try:
        value = _parse_value(text, field_type, current)
    except (ValueError, SyntaxError) as e:
        name = field_type.__name__
        raise UsageError(f"--config.{key}={text}: cannot read {text!r} as a{'n' if name[0] in 'aeiou' else ''} "
                         f"{name} {like} ({e})") from None
    if key in settings.PAIRS and isinstance(value, tuple):
        value = settings.as_pair(key, value)
    try:
        config_path.set_value(key, config, value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config.{key}={text}: {e}") from None


def split_overrides(argv: Sequence[str]) -> tuple:
    """(the other arguments, [(key, text)]) from `--config.k=v` and `--config.k v` arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX):]
            if "=" in body:
                key, text = body.split("=", 1)
            elif i + 1 < len(argv):
                key, text = body, argv[i + 1]
                i += 1
            else:
                raise UsageError(f"{arg} needs a value: {arg}=VALUE")
            overrides.append((key, text))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def config_for(spec: str | None, workdir: str | None, overrides: Sequence[tuple], default_spec: str | None = None):
    """A command's config: `spec` (--config), else the run's config.json in `workdir`, else
    `default_spec`; with `overrides` ([(key, text)]) applied.

    Raises:
      UsageError: none of them, or an override that does not apply.
    """
    saved = run_files.read_config(workdir) if workdir else None
    if spec:
        config, name = load_config(spec), spec
    elif saved is not None:
        config, name = saved, os.path.join(workdir, run_files.CONFIG)
    elif default_spec is not None:
        config, name = load_config(default_spec), default_spec
    else:
        where = f" and {workdir} holds no config.json from a training run" if workdir else ""
        raise UsageError(f"no config given{where}: pass --config NAME or PATH, e.g. --config tiny_shapes")
    for key, text in overrides:
        apply_override(config, key, text, config_name=name)
    return config


# A config key as the library names it (`config.train.num_steps`), not already a flag or a file name.
_CONFIG_KEY = re.compile(r"(?<![\w./-])config\.(?=[a-z_]\w*\.[a-z_])")


def as_flags(text: str) -> str:
    """`text` with each config key the library names (`config.section.field`) written as the
    command-line flag that sets it (`--config.section.field`)."""
    return _CONFIG_KEY.sub(OVERRIDE_PREFIX, text)
