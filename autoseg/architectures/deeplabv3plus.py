"""DeepLabV3+: atrous spatial pyramid pooling on a dilated backbone, plus a light decoder.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation" (ECCV 2018). The backbone stops downsampling at `output_stride` (8 or 16) and
dilates its later stages instead; ASPP looks at that map through parallel atrous
convolutions and a global image-pooling branch; the decoder upsamples the result to stride 4,
joins it with the backbone's stride-4 map and refines it.
"""

from __future__ import annotations

import keras
from keras import layers

from autoseg.architectures.layers import (
    conv_block,
    conv_bn_relu,
    segmentation_head,
    separable_conv_bn_relu,
    upsample,
)
from autoseg.backbones import backbone_names, build_backbone
from autoseg.errors import ConfigError
from autoseg.registry import register_architecture, register_architecture_alias

DEEPLAB_BACKBONES = tuple(backbone_names())
# The paper's rates at output stride 16, doubled at 8 so that they span the same image area.
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
LOW_LEVEL_STRIDE = 4
LOW_LEVEL_FILTERS = 48


def _aspp(x, filters: int, rates: tuple[int, ...], dropout: float, separable: bool):
    """Atrous spatial pyramid pooling: 1x1, atrous 3x3 at each rate, image pooling; fused."""
    atrous = separable_conv_bn_relu if separable else conv_bn_relu
    branches = [conv_bn_relu(x, filters, 1, name="aspp_1x1")]
    for i, rate in enumerate(rates, start=1):
        branches.append(atrous(x, filters, 3, dilation_rate=rate, name=f"aspp_atrous{i}"))
    # Image pooling: global context broadcast back to every position. Nearest upsampling of
    # the 1x1 map by the (static) map size is exactly that broadcast, as a plain layer.
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, name="aspp_pool_conv")
    branches.append(
        layers.UpSampling2D(x.shape[1:3], interpolation="nearest", name="aspp_pool_upsample")(
            pooled
        )
    )
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = conv_bn_relu(x, filters, 1, name="aspp_proj")
    return layers.Dropout(dropout, name="aspp_dropout")(x)


@register_architecture(
    "deeplabv3plus",
    family="deeplabv3plus",
    backbones=DEEPLAB_BACKBONES,
    choices={
        "backbone": DEEPLAB_BACKBONES,
        "output_stride": tuple(ASPP_RATES),
        "separable": (False, True),
    },
    input_divisor=lambda options: options["output_stride"],
    description="Atrous spatial pyramid pooling on a dilated backbone, with a stride-4 decoder.",
)
def build_deeplabv3plus(
    num_classes: int,
    input_shape: tuple[int, int, int],
    backbone: str = "resnet50",
    output_stride: int = 16,
    aspp_filters: int = 256,
    decoder_filters: int = 256,
    separable: bool = False,
    dropout: float = 0.1,
    weights: str | None = None,
) -> keras.Model:
    """Builds a DeepLabV3+.

    The backbone stops striding at `output_stride` and dilates its later stages. ASPP runs
    on its deepest map: a 1x1 branch (`aspp_1x1`), 3x3 atrous branches (`aspp_atrous1..3`)
    at rates (6, 12, 18) for output stride 16 and (12, 24, 36) for 8, and image pooling
    (`aspp_pool`: global average, 1x1 conv-BN-ReLU, broadcast back by `aspp_pool_upsample`);
    the five are concatenated, projected by a 1x1 conv (`aspp_proj`) and dropped out. The
    decoder upsamples that bilinearly to stride 4 (`decoder_upsample`), concatenates the
    backbone's stride-4 map projected to 48 channels (`decoder_skip`), applies two 3x3
    conv-BN-ReLU (`decoder_conv1`, `decoder_conv2`), classifies with a 1x1 conv and
    upsamples the logits x4 bilinearly to the input size.

    Args:
        num_classes: Number of classes (softmax channels).
        input_shape: `(height, width, 3)`, raw 0..255 pixels; height and width must be
            static multiples of `output_stride`.
        backbone: A backbone name (`DEEPLAB_BACKBONES`). Defaults to `"resnet50"`.
        output_stride: 8 or 16: the backbone's largest stride. Defaults to 16.
        aspp_filters: Width of every ASPP branch and of its projection. Defaults to 256.
        decoder_filters: Width of the decoder's two 3x3 convs. Defaults to 256.
        separable: Depthwise-separable atrous and decoder convolutions, as in the paper's
            Xception model (far fewer weights). Defaults to False.
        dropout: Dropout rate after the ASPP projection; 0.1 as in the reference
            implementation. Defaults to 0.1.
        weights: Backbone weights: `None`, `"imagenet"` or a path (see
            `autoseg.backbones.build_backbone`). Defaults to `None`.

    Returns:
        A `keras.Model` named `"deeplabv3plus"` mapping `(H, W, 3)` images to
        `(H, W, num_classes)` softmax probabilities.

    Raises:
        ConfigError: An option is out of range or the input size is not a static multiple
            of `output_stride`.

    Example:
    ```python
    model = build_deeplabv3plus(3, (64, 64, 3), backbone="tiny", aspp_filters=16)
    model.output_shape  # (None, 64, 64, 3)
    ```
    """
    if not isinstance(backbone, str) or backbone.lower() not in DEEPLAB_BACKBONES:
        raise ConfigError(
            f"DeepLabV3+ has no backbone {backbone!r}. Valid backbones: "
            f"{', '.join(DEEPLAB_BACKBONES)}."
        )
    if output_stride not in ASPP_RATES:
        raise ConfigError(
            "DeepLabV3+ output_stride must be 8 or 16. "
            f"Received: output_stride={output_stride!r}."
        )
    for option, value in (("aspp_filters", aspp_filters), ("decoder_filters", decoder_filters)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"DeepLabV3+ {option} must be a positive integer. Received: {option}={value!r}."
            )
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(
            f"DeepLabV3+ dropout must be in [0, 1). Received: dropout={dropout!r}."
        )
    if any(size is None or size % output_stride for size in input_shape[:2]):
        raise ConfigError(
            f"DeepLabV3+ with output_stride={output_stride} needs a static input height and "
            f"width that are multiples of {output_stride} (the image-pooling branch is "
            "broadcast back to a fixed map size). "
            f"Received: input_shape={tuple(input_shape)}."
        )

    inputs = keras.Input(shape=input_shape, name="image")
    taps = build_backbone(backbone, inputs, weights=weights, output_stride=output_stride)
    x = _aspp(taps[output_stride], aspp_filters, ASPP_RATES[output_stride], dropout, separable)
    x = upsample(x, output_stride // LOW_LEVEL_STRIDE, method="bilinear", name="decoder")
    skip = conv_bn_relu(taps[LOW_LEVEL_STRIDE], LOW_LEVEL_FILTERS, 1, name="decoder_skip")
    x = layers.Concatenate(name="decoder_concat")([x, skip])
    x = conv_block(x, decoder_filters, separable=separable, name="decoder")
    outputs = segmentation_head(x, num_classes, upsample_factor=LOW_LEVEL_STRIDE)
    return keras.Model(inputs, outputs, name="deeplabv3plus")


# The original model table's spelling.
register_architecture_alias("depplabv3plus", "deeplabv3plus")
