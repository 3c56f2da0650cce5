"""Loading experiment configs: Python files with a `get_config(variant="")` returning a ConfigDict.

Config files are read by path, not imported as a package, so that a user's own config can live
anywhere (ml_collections' convention); configs that extend another load it the same way.
"""

import importlib.util
import os


def load_config_module(path):
    """The executed module of the Python config file at `path`."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path, variant=""):
    """`get_config(variant)` of the config file at `path` (`get_config()` for no variant)."""
    module = load_config_module(path)
    return module.get_config(variant) if variant else module.get_config()
