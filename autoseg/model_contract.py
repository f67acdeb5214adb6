"""What autoseg reads from a built model beyond `keras.Model`: an architecture's contract.

A builder registered with `autoseg.registry.register_architecture` takes `(num_classes,
input_shape, **options)`, every option with a default (the architecture's defaults), and
returns a `keras.Model` mapping `(H, W, C)` images of raw 0..255 pixels to `(H, W,
num_classes)` softmax probabilities. A plain functional model needs nothing more.

A model that trains more than it predicts (pix2pix: a generator and its critic) says so
with two attributes, read only through this module:

- `inference_model`: the plain segmentation model that `predict` and `export` use and whose
  speed the plan measures (pix2pix: its generator). Without it: the model itself.
- `training_passes`: `[(sub_model, calls_per_step)]`, the functional models a training step
  runs outside the model's own graph, which the memory estimate counts (pix2pix: its
  discriminator, twice a step, on the real and on the generated pair). Without it: none.

A backbone of `autoseg.backbones` begins with a layer named `<backbone>_preprocessing`; the
memory estimate finds a model's backbone by it (`backbone_of`).
"""

from __future__ import annotations

from typing import Any


def inference_model(model: Any) -> Any:
    """The plain segmentation model to predict with and export: `model.inference_model`
    where the model has one, else `model`."""
    return getattr(model, "inference_model", None) or model


def training_passes(model: Any) -> list[tuple[Any, int]]:
    """`(sub_model, calls_per_step)` that training runs outside `model`'s own graph: the
    model's `training_passes`, else none."""
    return list(getattr(model, "training_passes", None) or ())


PREPROCESSING_SUFFIX = "_preprocessing"


def backbone_of(model: Any) -> str | None:
    """The backbone a model is built on, from its `<backbone>_preprocessing` layer, or None."""
    for layer in getattr(model, "layers", ()):
        backbone = layer.name.removesuffix(PREPROCESSING_SUFFIX)
        if backbone != layer.name:
            return backbone
    return None
