"""autoseg: AutoML for semantic segmentation with Keras 3 and KerasTuner.

The public Python API: one function per CLI command, whose keyword arguments are the
command's options (dashes as underscores, same defaults).

```python
import autoseg

dataset = autoseg.prepare("raw/weeds", "data/weeds")
result = autoseg.search("data/weeds", space="quick", time_budget="30m")
print(autoseg.leaderboard(result.rundir, top=5))
exported = autoseg.export("best", run=result.rundir, format="keras,tflite")
autoseg.predict(exported.out, "field/", out="masks", format="tflite")
autoseg.evaluate(exported.out, "data/weeds", split="val").scores["mean_iou"]
model = autoseg.load(exported.out)      # model.predict(image) -> class map
```

Attributes are imported lazily so that `import autoseg` (and the CLI's `--help`) stays free
of TensorFlow and Keras.
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
    "prepare": "autoseg.data.sources",
    "load_dataset": "autoseg.data.dataset",
    "resolve_dataset": "autoseg.data.sources",
    "build_model": ("autoseg.models", "build"),
    "load": "autoseg.predict",
    # The modules themselves, which are callable: `autoseg.search(...)` runs
    # `autoseg.search.search(...)`, and so on (see `autoseg.callable_module`).
    "search": ("autoseg.search", None),
    "leaderboard": ("autoseg.leaderboard", None),
    "export": ("autoseg.export", None),
    "predict": ("autoseg.predict", None),
    "evaluate": ("autoseg.evaluate", None),
}

__all__ = [
    "prepare", "search", "leaderboard", "export", "predict", "evaluate", "load",
    "load_dataset", "resolve_dataset", "build_model",
]


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
    return sorted(set(globals()) | set(_LAZY))
