"""autoseg: AutoML for semantic segmentation with Keras 3 and KerasTuner.

The public Python API. Attributes are imported lazily so that `import autoseg` (and the
CLI's `--help`) stays free of TensorFlow and Keras.
"""

import importlib
import os

# albumentations checks PyPI for a newer version at import; there is no network here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# TensorFlow's C++ INFO and WARNING lines after its import; what it logs while importing
# ignores the level, and `autoseg.native_log` keeps those off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A search builds models in its own process (pre-flight, KerasTuner's space) and trains each
# trial in another (autoseg.trial_process): by default TensorFlow's first use of a GPU takes
# nearly all of its memory, which would leave none for the trial.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

__version__ = "0.1.0"

_LAZY = {
    "prepare": "autoseg.data.dataset",
    "load_dataset": "autoseg.data.dataset",
    "resolve_dataset": "autoseg.data.dataset",
    "build_model": ("autoseg.models", "build"),
    "load": "autoseg.predict",
    # The module itself, which is callable: `autoseg.search(...)` runs `search.search(...)`.
    # A plain function could not keep the name: importing the submodule `autoseg.search`
    # (as the CLI and tests do) rebinds the package attribute to the module.
    "search": ("autoseg.search", None),
}


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'autoseg' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
