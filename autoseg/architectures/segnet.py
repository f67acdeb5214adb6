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
    """Non-overlapping max pooling that also returns where each maximum was.

    The index of a maximum is its row-major position inside its own window
    (`0 .. pool_size**2 - 1`). For non-overlapping windows this carries the same information
    as the flat index of `tf.nn.max_pool_with_argmax(include_batch_in_index=True)`, but it
    does not depend on the batch size or the image size, and unpooling needs no scatter, so
    the pair works on every Keras backend. Ties go to the first position in the window.

    Args:
        pool_size: Side and stride of the square pooling window. Height and width of the
            input must be multiples of it. Defaults to 2.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A `(batch, height, width, channels)` tensor.

    Returns:
        `(pooled, indices)`: both `(batch, height // pool_size, width // pool_size,
        channels)`; `indices` is int32.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
            raise ValueError(
                f"`pool_size` must be an integer >= 2. Received: pool_size={pool_size!r}"
            )
        self.pool_size = pool_size

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, height, width, channels) input. "
                f"Received: input_shape={input_shape}"
            )
        for axis, size in (("height", input_shape[1]), ("width", input_shape[2])):
            if size is not None and size % self.pool_size:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}': the input {axis} must be a "
                    f"multiple of pool_size={self.pool_size} so that unpooling can restore "
                    f"the exact shape. Received: input_shape={input_shape}"
                )
        self.built = True

    def call(self, inputs):
        p = self.pool_size
        _, height, width, channels = ops.shape(inputs)
        rows, cols = height // p, width // p
        windows = ops.reshape(inputs, (-1, rows, p, cols, p, channels))
        windows = ops.transpose(windows, (0, 1, 3, 5, 2, 4))
        windows = ops.reshape(windows, (-1, rows, cols, channels, p * p))
        pooled = ops.max(windows, axis=-1)
        # The first position holding the maximum, found with integer ops only: Keras's float
        # `argmax` guards against negative zeros with a bitcast, which TFLite and ONNX lack.
        positions = ops.arange(p * p, dtype="int32")
        candidates = ops.where(ops.equal(windows, ops.expand_dims(pooled, -1)), positions, p * p)
        indices = ops.minimum(ops.min(candidates, axis=-1), p * p - 1)
        return pooled, indices

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        p = self.pool_size
        shape = (
            batch,
            None if height is None else height // p,
            None if width is None else width // p,
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
        config.update({"pool_size": self.pool_size})
        return config


@keras.saving.register_keras_serializable(package="autoseg")
class MaxUnpooling2D(layers.Layer):
    """Puts each value back where `MaxPoolingWithArgmax2D` found its maximum.

    The inverse in shape of `MaxPoolingWithArgmax2D`: every value of a
    `(batch, h, w, channels)` input goes to the recorded position of its
    `pool_size x pool_size` window in a `(batch, h * pool_size, w * pool_size, channels)`
    output; the other positions are zero. Differentiable with respect to the values (the
    indices carry no gradient).

    Args:
        pool_size: The `pool_size` of the pooling layer that made the indices. Defaults to 2.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[values, indices]`, two tensors of the same shape; `indices` as returned by
            `MaxPoolingWithArgmax2D(pool_size)`.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
            raise ValueError(
                f"`pool_size` must be an integer >= 2. Received: pool_size={pool_size!r}"
            )
        self.pool_size = pool_size

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
        p = self.pool_size
        _, rows, cols, channels = ops.shape(values)
        placed = ops.one_hot(indices, p * p, dtype=values.dtype) * ops.expand_dims(values, -1)
        placed = ops.reshape(placed, (-1, rows, cols, channels, p, p))
        placed = ops.transpose(placed, (0, 1, 4, 2, 5, 3))
        return ops.reshape(placed, (-1, rows * p, cols * p, channels))

    def compute_output_shape(self, input_shape):
        batch, rows, cols, channels = input_shape[0]
        p = self.pool_size
        return (
            batch,
            None if rows is None else rows * p,
            None if cols is None else cols * p,
            channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size})
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


def _backbone_encoder_decoder(x, backbone: str, depth: int, filters: int, weights):
    """A SegNet decoder on a backbone's taps; returns stride-1 features (see `build_segnet`)."""
    taps = build_backbone(backbone, x, weights=weights, output_stride=32)
    x = taps[2**depth]
    for stage in range(depth, 0, -1):
        stride = 2 ** (stage - 1)
        if stride in taps:
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
    defaults={"backbone": "none", "depth": 5, "filters": 64, "weights": None},
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
    stride `2s` to `s` unpools with the indices of a 2x2 argmax pool of the backbone's
    stride-`s` tap, i.e. of the deepest encoder map at that stride:
    - VGG16 and `tiny` have a tap at every stride 1..32 and VGG16's taps are the maps its
      own max pools read, so the indices are exactly VGG16's pooling indices (the
      original SegNet with an ImageNet encoder).
    - ResNet-50 and MobileNetV2 downsample with strided convolutions and keep no indices;
      the argmax pool records where their stride-`s` map peaks in each 2x2 window, per
      channel. They have no stride-1 tap, so their last x2 is bilinear.
    The argmax pools have no weights on purpose: indices carry no gradient, so a learnt
    layer in front of them would never train. Unpooling is per channel, so each stage first
    projects to the tap's width (`dec<k>_proj`, 1x1 conv-BN-ReLU), unpools (`dec<k>_unpool`)
    and then applies two 3x3 conv-BN-ReLU of width `filters * (1, 2, 4, 8, 8)[k - 1]`. The
    decoder starts from the stride-`2**depth` tap; deeper backbone stages are not built.

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
