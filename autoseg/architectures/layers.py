"""Blocks shared by the architecture families, as functions over functional tensors.

Every block takes a `name` (the stage, e.g. "dec3") and names its layers `<name>_<op>`
following `keras.applications`: `conv_bn_relu(x, 64, name="dec3_conv1")` creates
`dec3_conv1` (the convolution), `dec3_conv1_bn` and `dec3_conv1_relu`.
"""

from __future__ import annotations

from keras import layers

from autoseg.backbones import conv2d, depthwise_conv2d
from autoseg.batch_norm import BatchNormalization

UPSAMPLING_METHODS = ("bilinear", "nearest", "transpose")


def conv_bn_relu(
    x,
    filters: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    dilation_rate: int = 1,
    batch_norm: bool = True,
    activation: str | None = "relu",
    name: str,
):
    """Convolution ("same" padding), optional batch norm, then an activation.

    Args:
        x: Input tensor `(batch, H, W, C)`.
        filters: Output channels.
        kernel_size: Defaults to 3.
        strides: Defaults to 1.
        dilation_rate: Defaults to 1.
        batch_norm: Adds `<name>_bn`; the convolution then has no bias. Defaults to True.
        activation: A Keras activation name ("relu", "leaky_relu", ...) or None. The layer
            is `<name>_<activation>`. Defaults to "relu".
        name: Name of the convolution layer and prefix of the others.

    Returns:
        The output tensor.
    """
    x = conv2d(
        filters,
        kernel_size,
        strides=strides,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=not batch_norm,
        name=name,
    )(x)
    if batch_norm:
        x = BatchNormalization(name=f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def separable_conv_bn_relu(
    x,
    filters: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    dilation_rate: int = 1,
    batch_norm: bool = True,
    activation: str = "relu",
    name: str,
):
    """Depthwise-separable convolution in the MobileNet / DeepLabV3+ form.

    Depthwise conv `<name>_depthwise` (+ `_depthwise_bn`, `_depthwise_<activation>`), then a
    1x1 pointwise conv `<name>_pointwise` (+ `_pointwise_bn`, `_<activation>`). Batch norm
    and an activation between the two steps make it more expressive than
    `keras.layers.SeparableConv2D` for a few more parameters.

    Args:
        x: Input tensor.
        filters: Output channels of the pointwise convolution.
        kernel_size: Depthwise kernel size. Defaults to 3.
        strides: Depthwise strides. Defaults to 1.
        dilation_rate: Depthwise dilation. Defaults to 1.
        batch_norm: Defaults to True.
        activation: Defaults to "relu".
        name: Prefix of the layer names.

    Returns:
        The output tensor.
    """
    x = depthwise_conv2d(
        kernel_size,
        strides=strides,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=not batch_norm,
        name=f"{name}_depthwise",
    )(x)
    if batch_norm:
        x = BatchNormalization(name=f"{name}_depthwise_bn")(x)
    x = layers.Activation(activation, name=f"{name}_depthwise_{activation}")(x)
    x = layers.Conv2D(filters, 1, use_bias=not batch_norm, name=f"{name}_pointwise")(x)
    if batch_norm:
        x = BatchNormalization(name=f"{name}_pointwise_bn")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def conv_block(
    x,
    filters: int,
    *,
    num_convs: int = 2,
    separable: bool = False,
    batch_norm: bool = True,
    name: str,
):
    """`num_convs` 3x3 conv-BN-ReLU layers named `<name>_conv1`, `<name>_conv2`, ...

    Args:
        x: Input tensor.
        filters: Output channels of every convolution.
        num_convs: Defaults to 2.
        separable: Use `separable_conv_bn_relu` instead of `conv_bn_relu`. Defaults to False.
        batch_norm: Defaults to True.
        name: The stage name.

    Returns:
        The output tensor.
    """
    block = separable_conv_bn_relu if separable else conv_bn_relu
    for i in range(1, num_convs + 1):
        x = block(x, filters, batch_norm=batch_norm, name=f"{name}_conv{i}")
    return x


def upsample(
    x,
    factor: int = 2,
    *,
    method: str = "bilinear",
    filters: int | None = None,
    dtype: str | None = None,
    name: str,
):
    """Upsamples `x` by an integer `factor`.

    Args:
        x: Input tensor.
        factor: Spatial upsampling factor. Defaults to 2.
        method: "bilinear" or "nearest" (`<name>_upsample`, no weights), or "transpose"
            (a learned `Conv2DTranspose` with kernel = stride = factor, `<name>_upconv`, as the
            original U-Net's "up-convolution"). Defaults to "bilinear".
        filters: Output channels for "transpose"; defaults to the input's channels.
        dtype: The layer's dtype policy. Defaults to None (the global policy).
        name: The stage name.

    Returns:
        The upsampled tensor.

    Raises:
        ValueError: an unknown `method` (architectures validate options before building).
    """
    if method == "transpose":
        return layers.Conv2DTranspose(
            filters or x.shape[-1], factor, strides=factor, dtype=dtype, name=f"{name}_upconv"
        )(x)
    if method in ("bilinear", "nearest"):
        return layers.UpSampling2D(
            factor, interpolation=method, dtype=dtype, name=f"{name}_upsample"
        )(x)
    raise ValueError(
        f"`method` must be one of {UPSAMPLING_METHODS}. Received: method={method!r}"
    )


def decoder_block(
    x,
    skip,
    filters: int,
    *,
    upsampling: str = "bilinear",
    separable: bool = False,
    batch_norm: bool = True,
    name: str,
):
    """U-Net decoder step: upsample x2, concatenate the skip (if any), two 3x3 convs.

    Layers: `<name>_upsample` (or `_upconv`), `<name>_concat`, `<name>_conv1`, `<name>_conv2`.

    Args:
        x: The coarser tensor.
        skip: The encoder tensor at twice `x`'s resolution, or None.
        filters: Output channels (also of the transposed convolution).
        upsampling: See `upsample`. Defaults to "bilinear".
        separable: Depthwise-separable convolutions. Defaults to False.
        batch_norm: Defaults to True.
        name: The stage name, e.g. "dec3".

    Returns:
        The output tensor at twice `x`'s resolution.
    """
    x = upsample(x, 2, method=upsampling, filters=filters, name=name)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, separable=separable, batch_norm=batch_norm, name=name)


def segmentation_head(x, num_classes: int, *, upsample_factor: int = 1, name: str = "head"):
    """1x1 conv to class logits, bilinear upsampling to the input size, float32 softmax.

    Layers: `<name>_conv`, `<name>_upsample` (if `upsample_factor` > 1), and `predictions`.
    All three are float32 whatever the global dtype policy: under mixed precision the
    logits and the softmax stay out of float16's range and rounding (the Keras
    mixed-precision guide's advice for the last layers), and the model still outputs
    float32 probabilities. They hold `num_classes` channels, so this costs little.

    Args:
        x: Decoder features at stride `upsample_factor`.
        num_classes: Number of classes.
        upsample_factor: The stride of `x` relative to the input. Defaults to 1.
        name: Prefix of the conv and upsample layers. Defaults to "head".

    Returns:
        `(batch, H, W, num_classes)` class probabilities.
    """
    x = layers.Conv2D(num_classes, 1, dtype="float32", name=f"{name}_conv")(x)
    if upsample_factor > 1:
        x = upsample(x, upsample_factor, method="bilinear", dtype="float32", name=name)
    return layers.Activation("softmax", dtype="float32", name="predictions")(x)
