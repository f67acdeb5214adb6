"""Top-K ensembles: trained trials combined in one Keras model that averages their probabilities.

`ensemble_model(members, input_size)` returns one functional model: one image in (the
ensemble's `input_size`), each member run on it at its own input size (bilinear resizing in the
graph, there and back), and the mean of the members' `(N, H, W, C)` softmax probabilities out:
the contract of a single model, so `autoseg.predict`, flip TTA (`autoseg.tta`) and every export
format take it unchanged. Resizing, Average and the members' own layers are builtin Keras layers:
the model loads with `safe_mode=True`, converts to TFLite builtin ops (RESIZE_BILINEAR) and ONNX
(Resize).

Which trials can join (`incompatibility`): the ensemble sees what `autoseg.predict` gives the
leading trial, the whole photo resized to its input (policy `resize`) or tiles of the photo at
its `crop_scale` (policy `crop`). A `resize` member resized to its own input sees the same
photo; a `crop` member needs the same `crop_scale` (the tile's pixels at the scale it trained
on), and is rebuilt at the ensemble's tile size rather than resized (its convolutions do not
depend on the input size; resizing a tile would change its scale). A trial of another policy
or crop scale cannot join.
"""

from __future__ import annotations

from typing import Any, Sequence


def incompatibility(leader: dict[str, Any], config: dict[str, Any]) -> str:
    """Why a trial cannot join an ensemble led by another, or "" when it can.

    Args:
        leader: The leading trial's `search_space.trial_model_config`.
        config: The candidate's.
    """
    if config["policy"] != leader["policy"]:
        return f"policy {config['policy']}, the ensemble's is {leader['policy']}"
    if config["policy"] == "crop" and float(config["crop_scale"]) != float(leader["crop_scale"]):
        return f"crop_scale {config['crop_scale']}, the ensemble's is {leader['crop_scale']}"
    return ""


def member_input_size(leader: dict[str, Any], config: dict[str, Any]) -> tuple[int, int]:
    """The input size a member is built at: its own (resize), the leader's tile (crop)."""
    return tuple(leader["input_size"] if config["policy"] == "crop" else config["input_size"])


def ensemble_model(members: Sequence[Any], input_size: tuple[int, int], name: str = "ensemble"):
    """One model averaging `members`' class probabilities.

    Args:
        members: Keras models, `(N, h, w, channels)` 0..255 in, `(N, h, w, C)` softmax
            probabilities out (`model_contract.inference_model`), the same channels and C.
        input_size: The ensemble's `(height, width)`.
        name: The model's name. Defaults to "ensemble".

    Returns:
        A functional Keras model sharing the members' weights.

    Raises:
        ValueError: fewer than two members, or members whose channels or classes differ.
    """
    import keras

    if len(members) < 2:
        raise ValueError(f"An ensemble needs at least two members. Received: {len(members)}.")
    channels = {int(m.input_shape[-1]) for m in members}
    classes = {int(m.output_shape[-1]) for m in members}
    if len(channels) > 1 or len(classes) > 1:
        raise ValueError(f"Members take {sorted(channels)} channels and give {sorted(classes)} "
                         "classes: an ensemble needs one of each.")
    size = tuple(int(d) for d in input_size)
    image = keras.Input((*size, channels.pop()), name="image")
    outputs = []
    for index, member in enumerate(members):
        own = tuple(int(d) for d in member.input_shape[1:3])
        # Unique names at the top level: members are often all "unet".
        member = keras.Model(member.input, member.output, name=f"member{index}_{member.name}")
        x = image
        if own != size:
            x = keras.layers.Resizing(*own, interpolation="bilinear", name=f"to_member{index}")(x)
        probabilities = member(x)
        if own != size:
            probabilities = keras.layers.Resizing(*size, interpolation="bilinear",
                                                  name=f"from_member{index}")(probabilities)
        outputs.append(probabilities)
    mean = keras.layers.Average(name="mean_probabilities", dtype="float32")(outputs)
    return keras.Model(image, mean, name=name)
