"""SegNet: an encoder-decoder whose decoder upsamples with the encoder's max-pooling indices.

Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation" (TPAMI 2017). Each encoder max pool records where
its maxima were; the matching decoder stage puts its values back at exactly those
positions (zeros elsewhere) and densifies them with convolutions. Boundaries are recovered
from the encoder's own choices without storing whole encoder feature maps (as U-Net does)
or learning upsampling kernels.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from autoseg.architectures.layers import conv_bn_relu, segmentation_head
from autoseg.backbones import backbone_names, build_backbone
from autoseg.errors import ConfigError
from autoseg.registry import register_architecture, register_architecture_alias


@keras.saving.register_keras_serializable(package="autoseg")
class MaxPoolingWithArgmax2D(layers.Layer):
    """Max pooling that also returns where each maximum was.

    The index of a maximum is its row-major position inside its own window
    (`0 .. pool_size**2 - 1`). For non-overlapping windows this carries the same information
    as the flat index of `tf.nn.max_pool_with_argmax(include_batch_in_index=True)`, but it
    does not depend on the batch size or the image size, and unpooling needs no scatter, so
    the pair works on every Keras backend (and exports to TFLite and ONNX). Ties go to the
    first position in the window.

    Windows overlap when `strides < pool_size` (ResNet's stem pool: 3x3, stride 2); then, as
    `keras.layers.MaxPooling2D(pool_size, strides)` with `padding="valid"`, the output has
    `(size - pool_size) // strides + 1` rows and columns.

    Args:
        pool_size: Side of the square pooling window. Defaults to 2.
        strides: Step between windows, 1 to `pool_size`. Defaults to `pool_size`; height and
            width of the input must then be multiples of it.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A `(batch, height, width, channels)` tensor.

    Returns:
        `(pooled, indices)`: both `(batch, height // pool_size, width // pool_size,
        channels)` for non-overlapping windows; `indices` is int32.
    """

    def __init__(self, pool_size: int = 2, strides: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides = _check_window(pool_size, strides)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, height, width, channels) input. "
                f"Received: input_shape={input_shape}"
            )
        for axis, size in (("height", input_shape[1]), ("width", input_shape[2])):
            if self.strides == self.pool_size and size is not None and size % self.pool_size:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}': the input {axis} must be a "
                    f"multiple of pool_size={self.pool_size} so that unpooling can restore "
                    f"the exact shape. Received: input_shape={input_shape}"
                )
        self.built = True

    def call(self, inputs):
        p, s = self.pool_size, self.strides
        _, height, width, channels = ops.shape(inputs)
        rows, cols = (height - p) // s + 1, (width - p) // s + 1
        if s == p:
            windows = ops.reshape(inputs, (-1, rows, p, cols, p, channels))
            windows = ops.transpose(windows, (0, 1, 3, 5, 2, 4))
            windows = ops.reshape(windows, (-1, rows, cols, channels, p * p))
        else:  # overlapping: one strided slice per window position
            windows = ops.stack(
                [inputs[:, r:r + s * (rows - 1) + 1:s, c:c + s * (cols - 1) + 1:s, :]
                 for r in range(p) for c in range(p)], axis=-1)
        pooled = ops.max(windows, axis=-1)
        # The first position holding the maximum, found with integer ops only: Keras's float
        # `argmax` guards against negative zeros with a bitcast, which TFLite and ONNX lack.
        positions = ops.arange(p * p, dtype="int32")
        candidates = ops.where(ops.equal(windows, ops.expand_dims(pooled, -1)), positions, p * p)
        indices = ops.minimum(ops.min(candidates, axis=-1), p * p - 1)
        return pooled, indices

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        p, s = self.pool_size, self.strides
        shape = (
            batch,
            None if height is None else (height - p) // s + 1,
            None if width is None else (width - p) // s + 1,
            channels,
        )
        return shape, shape

    def compute_output_spec(self, inputs):
        # Overridden because the default would give the indices the layer's float dtype.
        shape, _ = self.compute_output_shape(inputs.shape)
        return (
            keras.KerasTensor(shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype="int32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides})
        return config


def _check_window(pool_size, strides) -> tuple[int, int]:
    """`(pool_size, strides)` of an argmax pool or unpool; strides defaults to pool_size."""
    strides = pool_size if strides is None else strides
    for name, value in (("pool_size", pool_size), ("strides", strides)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
    if pool_size < 2 or not 1 <= strides <= pool_size:
        raise ValueError(
            f"`pool_size` must be an integer >= 2 and `strides` one from 1 to pool_size. "
            f"Received: pool_size={pool_size!r}, strides={strides!r}"
        )
    return pool_size, strides


@keras.saving.register_keras_serializable(package="autoseg")
class MaxUnpooling2D(layers.Layer):
    """Puts each value back where `MaxPoolingWithArgmax2D` found its maximum.

    The inverse in shape of `MaxPoolingWithArgmax2D`: every value of a
    `(batch, h, w, channels)` input goes to the recorded position of its
    `pool_size x pool_size` window in a `(batch, (h - 1) * strides + pool_size, ...,
    channels)` output (`h * pool_size` for non-overlapping windows); the other positions are
    zero. Where overlapping windows chose the same position their values add, as max
    pooling's gradient does. Differentiable with respect to the values (the indices carry no
    gradient).

    Args:
        pool_size: The `pool_size` of the pooling layer that made the indices. Defaults to 2.
        strides: Its `strides`. Defaults to `pool_size`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[values, indices]`, two tensors of the same shape; `indices` as returned by
            `MaxPoolingWithArgmax2D(pool_size, strides)`.
    """

    def __init__(self, pool_size: int = 2, strides: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides = _check_window(pool_size, strides)

    def build(self, input_shape):
        values_shape, indices_shape = (tuple(shape) for shape in input_shape)
        if len(values_shape) != 4 or any(
            a is not None and b is not None and a != b
            for a, b in zip(values_shape[1:], indices_shape[1:])
        ) or len(indices_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' needs values and indices of the same "
                "(batch, height, width, channels) shape: the decoder must have as many "
                "channels as the encoder map the indices came from. "
                f"Received: values shape={values_shape}, indices shape={indices_shape}"
            )
        self.built = True

    def call(self, inputs):
        values, indices = inputs
        p, s = self.pool_size, self.strides
        _, rows, cols, channels = ops.shape(values)
        if s == p:
            placed = ops.one_hot(indices, p * p, dtype=values.dtype) * ops.expand_dims(values, -1)
            placed = ops.reshape(placed, (-1, rows, cols, channels, p, p))
            placed = ops.transpose(placed, (0, 1, 4, 2, 5, 3))
            return ops.reshape(placed, (-1, rows * p, cols * p, channels))
        out = None
        for position in range(p * p):  # overlapping windows: add each position's values
            r, c = divmod(position, p)
            chosen = values * ops.cast(ops.equal(indices, position), values.dtype)
            # Each value at (s*i, s*j), zeros between.
            spread = ops.stack([chosen] + [ops.zeros_like(chosen)] * (s - 1), axis=3)
            spread = ops.reshape(spread, (-1, rows, cols * s, channels))
            spread = ops.stack([spread] + [ops.zeros_like(spread)] * (s - 1), axis=2)
            spread = ops.reshape(spread, (-1, rows * s, cols * s, channels))
            spread = spread[:, : s * (rows - 1) + 1, : s * (cols - 1) + 1, :]
            placed = ops.pad(spread, ((0, 0), (r, p - 1 - r), (c, p - 1 - c), (0, 0)))
            out = placed if out is None else out + placed
        return out

    def compute_output_shape(self, input_shape):
        batch, rows, cols, channels = input_shape[0]
        p, s = self.pool_size, self.strides
        return (
            batch,
            None if rows is None else (rows - 1) * s + p,
            None if cols is None else (cols - 1) * s + p,
            channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides})
        return config


# "none": SegNet's own VGG-like encoder (the value unet uses for its own encoder too).
SEGNET_BACKBONES = ("none", *backbone_names())
SEGNET_DEPTHS = (3, 4, 5)
# Convolutions per encoder stage: VGG16's, which is SegNet's encoder.
_CONVS_PER_STAGE = (2, 2, 3, 3, 3)


def _stage_width(filters: int, stage: int) -> int:
    return filters * 2 ** min(stage - 1, 3)


def _own_encoder_decoder(x, depth: int, filters: int):
    """SegNet's own VGG-like encoder and its mirror decoder; returns stride-1 features."""
    x = layers.Rescaling(1.0 / 255, name="input_rescaling")(x)
    indices = {}
    for stage in range(1, depth + 1):
        for i in range(1, _CONVS_PER_STAGE[stage - 1] + 1):
            x = conv_bn_relu(x, _stage_width(filters, stage), name=f"enc{stage}_conv{i}")
        x, indices[stage] = MaxPoolingWithArgmax2D(name=f"enc{stage}_pool")(x)
    for stage in range(depth, 0, -1):
        x = MaxUnpooling2D(name=f"dec{stage}_unpool")([x, indices[stage]])
        convs = _CONVS_PER_STAGE[stage - 1]
        for i in range(1, convs + 1):
            # As in SegNet, a stage's last conv narrows to the width of the stage above.
            width_stage = stage if i < convs else max(stage - 1, 1)
            x = conv_bn_relu(x, _stage_width(filters, width_stage), name=f"dec{stage}_conv{i}")
    return x


def _overlapping_pools(inputs, taps: dict) -> dict:
    """The encoder's own max pools whose windows overlap (ResNet's stem: 3x3, stride 2,
    after a zero padding), by the stride of the map they read: `{stride: (pool layer, its
    input, the padding before it)}`. Non-overlapping 2x2 pools need no entry: a 2x2 argmax of
    the map such a pool reads (VGG16's taps) gives that pool's own indices."""
    graph = keras.Model(inputs, list(taps.values()))
    found = {}
    for layer in graph.layers:
        if not isinstance(layer, layers.MaxPooling2D):
            continue
        size, step = layer.pool_size[0], layer.strides[0]
        if layer.padding != "valid" or step >= size or layer.pool_size[0] != layer.pool_size[1]:
            continue
        source = layer.input
        pad = 0
        padding_layer = source._keras_history[0]
        if isinstance(padding_layer, layers.ZeroPadding2D):
            pad = padding_layer.padding[0][0]
        stride = inputs.shape[1] // (source.shape[1] - 2 * pad)
        found[stride] = (layer, source, pad)
    return found


def _backbone_encoder_decoder(x, backbone: str, depth: int, filters: int, weights):
    """A SegNet decoder on a backbone's taps; returns stride-1 features (see `build_segnet`)."""
    inputs = x
    taps = build_backbone(backbone, x, weights=weights, output_stride=32)
    pools = _overlapping_pools(inputs, {s: t for s, t in taps.items() if s <= 2**depth})
    x = taps[2**depth]
    for stage in range(depth, 0, -1):
        stride = 2 ** (stage - 1)
        if stride in pools:  # the encoder's own pool: its windows, its indices
            pool, source, pad = pools[stride]
            size, step = pool.pool_size[0], pool.strides[0]
            _, indices = MaxPoolingWithArgmax2D(size, step, name=f"enc{stage}_argmax")(source)
            x = conv_bn_relu(x, source.shape[-1], 1, name=f"dec{stage}_proj")
            x = MaxUnpooling2D(size, step, name=f"dec{stage}_unpool")([x, indices])
            height, width = taps[stride].shape[1:3]
            x = layers.Cropping2D(((pad, x.shape[1] - pad - height), (pad, x.shape[2] - pad - width)),
                                  name=f"dec{stage}_crop")(x)
        elif stride in taps:
            encoder_map = taps[stride]
            _, indices = MaxPoolingWithArgmax2D(name=f"enc{stage}_argmax")(encoder_map)
            x = conv_bn_relu(x, encoder_map.shape[-1], 1, name=f"dec{stage}_proj")
            x = MaxUnpooling2D(name=f"dec{stage}_unpool")([x, indices])
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{stage}_upsample")(x)
        for i in (1, 2):
            x = conv_bn_relu(x, _stage_width(filters, stage), name=f"dec{stage}_conv{i}")
    return x


@register_architecture(
    "segnet",
    family="segnet",
    backbones=SEGNET_BACKBONES,
    choices={"backbone": SEGNET_BACKBONES, "depth": SEGNET_DEPTHS},
    input_divisor=lambda options: 2 ** options["depth"],
    description="Encoder-decoder that upsamples with the encoder's max-pooling indices.",
)
def build_segnet(
    num_classes: int,
    input_shape: tuple[int, int, int],
    backbone: str = "none",
    depth: int = 5,
    filters: int = 64,
    weights: str | None = None,
) -> keras.Model:
    """Builds a SegNet.

    `backbone="none"` is SegNet's own encoder: `depth` VGG16-like stages of 2, 2, 3, 3, 3
    conv-BN-ReLU of widths `filters * (1, 2, 4, 8, 8)`, each ending in a 2x2 max pool that
    records its argmax. The decoder mirrors it: each stage unpools with the indices of its
    encoder stage and applies as many conv-BN-ReLU, the last narrowing to the next width.
    With `depth=5, filters=64` this is the paper's SegNet (29.5M parameters).

    With a backbone (`resnet50` is "SegNet-ResNet"), the decoder stage that goes from
    stride `2s` to `s` unpools with the indices of the encoder's own max pool from `s` to
    `2s` where it has one, else of the deepest encoder map at stride `s`:
    - VGG16 downsamples only with 2x2 max pools, and its taps are the maps those pools read:
      a 2x2 argmax of each tap gives exactly VGG16's pooling indices (the original SegNet
      with an ImageNet encoder). `tiny` is handled the same way.
    - ResNet-50's one pool is its stem's 3x3, stride-2 max pool (stride 2 to 4, windows
      overlapping, after a zero padding of 1): the stage from 4 to 2 unpools with that
      pool's own indices, into its overlapping windows (`MaxUnpooling2D(3, 2)`), and crops
      the padding away (`dec2_crop`).
    - Where the encoder downsamples with a strided convolution (ResNet-50 from stride 4 on,
      MobileNetV2 everywhere) it keeps no indices; the decoder records where the encoder's
      stride-`s` map peaks in each 2x2 window, per channel, and unpools there: SegNet's idea
      applied to an encoder without pools.
    - ResNet-50 and MobileNetV2 have no stride-1 tap, so their last x2 is bilinear.
    The argmax pools have no weights on purpose: indices carry no gradient, so a learnt
    layer in front of them would never train. Unpooling is per channel, so each stage first
    projects to the encoder map's width (`dec<k>_proj`, 1x1 conv-BN-ReLU), unpools
    (`dec<k>_unpool`) and then applies two 3x3 conv-BN-ReLU of width
    `filters * (1, 2, 4, 8, 8)[k - 1]`. The decoder starts from the stride-`2**depth` tap;
    deeper backbone stages are not built.

    Args:
        num_classes: Number of classes (softmax channels).
        input_shape: `(height, width, 3)`, raw 0..255 pixels; height and width must be
            multiples of `2**depth`.
        backbone: `"none"` (SegNet's own encoder) or a backbone name (`SEGNET_BACKBONES`).
            Defaults to `"none"`.
        depth: Number of pooling stages, 3 to 5. Defaults to 5.
        filters: Width of the first stage. Defaults to 64.
        weights: Backbone weights (`None`, `"imagenet"` or a path); only with a backbone.
            Defaults to `None`.

    Returns:
        A `keras.Model` named `"segnet"` mapping `(H, W, 3)` images to `(H, W, num_classes)`
        softmax probabilities.

    Raises:
        ConfigError: An option is out of range or the input size is not a multiple of
            `2**depth`.

    Example:
    ```python
    model = build_segnet(3, (64, 64, 3), depth=3, filters=8)
    model.output_shape  # (None, 64, 64, 3)
    ```
    """
    if not isinstance(backbone, str) or backbone.lower() not in SEGNET_BACKBONES:
        raise ConfigError(
            f"SegNet has no backbone {backbone!r}. Valid backbones: "
            f"{', '.join(SEGNET_BACKBONES)}."
        )
    backbone = backbone.lower()
    if depth not in SEGNET_DEPTHS:
        raise ConfigError(f"SegNet depth must be 3, 4 or 5. Received: depth={depth!r}.")
    if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
        raise ConfigError(
            f"SegNet filters must be a positive integer. Received: filters={filters!r}."
        )
    if backbone == "none" and weights is not None:
        raise ConfigError(
            "SegNet's own encoder (backbone='none') has no pretrained weights. "
            f"Received: weights={weights!r}. Use weights=None, or a backbone such as vgg16."
        )
    divisor = 2**depth
    if any(size is None or size % divisor for size in input_shape[:2]):
        raise ConfigError(
            f"SegNet with depth={depth} needs an input height and width that are multiples "
            f"of {divisor}. Received: input_shape={tuple(input_shape)}."
        )

    inputs = keras.Input(shape=input_shape, name="image")
    if backbone == "none":
        x = _own_encoder_decoder(inputs, depth, filters)
    else:
        x = _backbone_encoder_decoder(inputs, backbone, depth, filters, weights)
    outputs = segmentation_head(x, num_classes)
    return keras.Model(inputs, outputs, name="segnet")


# The original model table's SegNet-ResNet.
register_architecture_alias("segnet_resnet", "segnet", backbone="resnet50")
