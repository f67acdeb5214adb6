"""The U-Net family: `unet` (Ronneberger et al., 2015, optionally on a pretrained encoder)
and `light_unet` (depthwise-separable convolutions and few filters).

Level `i` (1..depth) of the encoder works at stride 2**(i-1); the bottleneck is at stride
2**depth, so height and width must be multiples of 2**depth. The decoder stage `dec<i>`
mirrors `enc<i>`: it upsamples x2, concatenates the encoder feature at its stride and
applies two 3x3 conv-BN-ReLU layers with `filters * 2**(i-1)` channels.

Upsampling defaults to bilinear followed by the convolutions (no checkerboard artefacts,
no weights); `upsampling="transpose"` gives the original paper's learned 2x2 up-convolution.
"""

from __future__ import annotations

import numbers

import keras
from keras import layers

from autoseg.architectures.layers import (
    UPSAMPLING_METHODS,
    conv_bn_relu,
    conv_block,
    decoder_block,
    segmentation_head,
    separable_conv_bn_relu,
)
from autoseg.backbones import backbone_names, build_backbone
from autoseg.errors import ConfigError
from autoseg.registry import register_architecture, register_architecture_alias

DEPTHS = (3, 4, 5)


def _check_common(name, filters, dropout):
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ConfigError(
            f"{name}: filters must be a positive integer. Received: filters={filters!r}"
        )
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0.0 <= dropout < 1.0
    ):
        raise ConfigError(
            f"{name}: dropout must be a number in [0, 1). Received: dropout={dropout!r}"
        )


def _unet_decoder(x, skips, *, depth, filters, upsampling, separable, batch_norm, dropout):
    """The bottleneck dropout and the decoder stages dec<depth> .. dec1."""
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in range(depth, 0, -1):
        x = decoder_block(
            x,
            skips.get(2 ** (level - 1)),
            filters * 2 ** (level - 1),
            upsampling=upsampling,
            separable=separable,
            batch_norm=batch_norm,
            name=f"dec{level}",
        )
    return x


def _unet_encoder(x, *, depth, filters, separable, batch_norm):
    """enc1..enc<depth> (conv block, then 2x2 max pool) and the bottleneck.

    Returns:
        `(bottleneck, {stride: skip})`.
    """
    skips = {}
    for level in range(1, depth + 1):
        width = filters * 2 ** (level - 1)
        for conv in (1, 2):
            # A depthwise conv over the 3 RGB channels learns little: the first conv is full.
            full = not separable or (level, conv) == (1, 1)
            block = conv_bn_relu if full else separable_conv_bn_relu
            x = block(x, width, batch_norm=batch_norm, name=f"enc{level}_conv{conv}")
        skips[2 ** (level - 1)] = x
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_block(
        x, filters * 2**depth, separable=separable, batch_norm=batch_norm, name="bottleneck"
    )
    return x, skips


@register_architecture(
    "unet",
    family="unet",
    backbones=("none", *backbone_names()),
    choices={
        "depth": DEPTHS,
        "upsampling": UPSAMPLING_METHODS,
        "backbone": ("none", *backbone_names()),
    },
    input_divisor=lambda options: 2 ** options["depth"],
    description=(
        "U-Net: encoder-decoder with skip connections; plain encoder or a "
        "pretrained backbone's taps at strides 2..2**depth"
    ),
)
def build_unet(
    num_classes,
    input_shape,
    depth=4,
    filters=64,
    batch_norm=True,
    dropout=0.0,
    upsampling="bilinear",
    backbone="none",
    weights=None,
):
    """Builds a U-Net.

    Args:
        num_classes: Number of output classes.
        input_shape: `(H, W, 3)`; H and W multiples of `2**depth`.
        depth: Number of 2x downsamplings, 3..5. Defaults to 4 (the original U-Net).
        filters: Channels of the first level, doubling per level. Defaults to 64.
        batch_norm: Batch norm after every convolution. Defaults to True.
        dropout: Dropout rate at the bottleneck. Defaults to 0.0.
        upsampling: "bilinear", "nearest" or "transpose". Defaults to "bilinear".
        backbone: "none" (the plain U-Net encoder) or a registered backbone whose taps at
            strides 2**depth (the bottleneck) and 2**(depth-1) .. 1 (skips, where the
            backbone has them) replace the encoder. Defaults to "none".
        weights: Backbone weights (None, "imagenet" or a file path); needs a backbone.
            Defaults to None.

    Returns:
        A functional `keras.Model` named "unet": RGB 0..255 in, `(H, W, num_classes)`
        softmax probabilities out.
    """
    _check_common("unet", filters, dropout)
    inputs = keras.Input(input_shape, name="image")
    if backbone == "none":
        if weights is not None:
            raise ConfigError(
                f"unet: weights need a backbone; backbone is 'none'. Received: weights={weights!r}"
            )
        x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
        x, skips = _unet_encoder(
            x, depth=depth, filters=filters, separable=False, batch_norm=batch_norm
        )
    else:
        taps = build_backbone(backbone, inputs, weights=weights)
        bottleneck_stride = 2**depth
        if bottleneck_stride not in taps:
            raise ConfigError(
                f"unet: backbone {backbone!r} has no feature map at stride {bottleneck_stride} "
                f"(depth {depth}); its strides are {sorted(taps)}."
            )
        x = taps[bottleneck_stride]
        skips = {stride: tap for stride, tap in taps.items() if stride < bottleneck_stride}
    x = _unet_decoder(
        x,
        skips,
        depth=depth,
        filters=filters,
        upsampling=upsampling,
        separable=False,
        batch_norm=batch_norm,
        dropout=dropout,
    )
    outputs = segmentation_head(x, num_classes)
    return keras.Model(inputs, outputs, name="unet")


@register_architecture(
    "light_unet",
    family="unet",
    choices={"depth": DEPTHS, "upsampling": UPSAMPLING_METHODS},
    input_divisor=lambda options: 2 ** options["depth"],
    description=(
        "Light-weight U-Net: depthwise-separable convolutions, 16 base filters "
        "(under 1/10 of unet's parameters)"
    ),
)
def build_light_unet(
    num_classes,
    input_shape,
    depth=4,
    filters=16,
    batch_norm=True,
    dropout=0.0,
    upsampling="bilinear",
):
    """Builds a light-weight U-Net with depthwise-separable convolutions.

    Args:
        num_classes: Number of output classes.
        input_shape: `(H, W, 3)`; H and W multiples of `2**depth`.
        depth: Number of 2x downsamplings, 3..5. Defaults to 4.
        filters: Channels of the first level, doubling per level. Defaults to 16.
        batch_norm: Defaults to True.
        dropout: Dropout rate at the bottleneck. Defaults to 0.0.
        upsampling: "bilinear", "nearest" or "transpose". Defaults to "bilinear".

    Returns:
        A functional `keras.Model` named "light_unet".
    """
    _check_common("light_unet", filters, dropout)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescaling")(inputs)
    x, skips = _unet_encoder(x, depth=depth, filters=filters, separable=True, batch_norm=batch_norm)
    x = _unet_decoder(
        x,
        skips,
        depth=depth,
        filters=filters,
        upsampling=upsampling,
        separable=True,
        batch_norm=batch_norm,
        dropout=dropout,
    )
    outputs = segmentation_head(x, num_classes)
    return keras.Model(inputs, outputs, name="light_unet")


# Names from the original model table.
register_architecture_alias("unet_resnet", "unet", backbone="resnet50")
register_architecture_alias("Light_weight_unet", "light_unet")
