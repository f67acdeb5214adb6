"""Encoders that turn a raw image tensor into stride-keyed feature taps.

`build_backbone(name, inputs)` applies a registered encoder to `inputs` (float32 RGB pixel
values 0..255, the model input) and returns ``{stride: tensor}``: for every stride reached
(relative to the input: 1, 2, 4, 8, 16, 32) the *deepest* feature map at that stride. Decoders
read the strides from this dict and never look at the backbone's name or layer names.

ResNet-50, VGG16 and MobileNetV2 are written here rather than taken from `keras.applications`
so that stages past `output_stride` can dilate instead of striding (DeepLabV3+ needs output
stride 8 or 16). Their layer names, shapes and weight order are those of
`keras.applications`, so ImageNet weights transfer by layer name; each backbone applies its
own ImageNet preprocessing inside the graph. Their dilated convolutions are this module's
`Conv2D` and `DepthwiseConv2D`: Keras' layers, computed without the taps that only see
padding and without TensorFlow's space-to-batch.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import keras
from keras import layers, ops

from autoseg.batch_norm import BatchNormalization
from autoseg.errors import ConfigError
from autoseg.model_contract import PREPROCESSING_SUFFIX
from autoseg.registry import BACKBONES, is_test_backbone, register_backbone

OUTPUT_STRIDES = (8, 16, 32)
_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@keras.saving.register_keras_serializable(package="autoseg")
class ImageNetPreprocessing(layers.Layer):
    """The `keras.applications` input preprocessing as a serializable layer.

    Args:
        mode: "caffe" (RGB to BGR, then minus the ImageNet mean; ResNet-50, VGG16) or "tf"
            (scaled to [-1, 1]; MobileNetV2). Defaults to "caffe".
    """

    _MODES = ("caffe", "tf")
    _CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in self._MODES:
            raise ValueError(
                f"`mode` must be one of {self._MODES}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        if inputs.shape[-1] == 1:  # grey images: the ImageNet layers take RGB
            inputs = ops.repeat(inputs, 3, axis=-1)
        if self.mode == "tf":
            return inputs / 127.5 - 1.0
        mean = ops.convert_to_tensor(self._CAFFE_MEAN_BGR, dtype=inputs.dtype)
        return ops.flip(inputs, axis=-1) - mean

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


# --- dilated convolutions without the waste ----------------------------------------------
#
# `keras.layers.Conv2D` with a dilation rate r runs on TensorFlow as `tf.nn.convolution`, which
# off TPU wraps it in SpaceToBatchND / BatchToSpaceND: the input is padded by the kernel's
# reach, copied into r x r interleaved tiles, convolved densely and copied back. On the small
# maps DeepLabV3+ dilates (16x16 at 256² input, output stride 16) most of that is padding:
# ASPP's rates 6/12/18 ran at 24%/9%/5% of the matmul peak (benchmarks/RESULTS.md). The
# classes below compute the same thing with the same variables, without it.


def _reachable_taps(kernel_size, dilation_rate, spatial) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """The taps of a "same"-padded, odd-sized dilated kernel that can reach the input.

    The tap `i` of a dimension sits `(i - centre) * rate` from the output position: where
    that is at least the map's size, it reads only padding, for every output position.

    Args:
        kernel_size, dilation_rate: One value per spatial dimension.
        spatial: The static size of each spatial dimension (None where unknown: all kept).

    Returns:
        `(slices, rates)`: the centred slice of the kernel to keep in each dimension, and the
        dilation left in each (1 where only the centre tap is kept).
    """
    slices, rates = [], []
    for kernel, rate, size in zip(kernel_size, dilation_rate, spatial):
        centre = kernel // 2
        reach = centre if size is None or kernel % 2 == 0 else min(centre, (size - 1) // rate)
        slices.append(slice(centre - reach, centre + reach + 1) if kernel % 2 else slice(None))
        rates.append(rate if reach else 1)
    return tuple(slices), tuple(rates)


def _spatial_shape(layer, inputs) -> tuple:
    shape = tuple(inputs.shape)
    return shape[2:] if layer.data_format == "channels_first" else shape[1:-1]


@functools.cache
def _tf_runs_dilation_natively() -> bool:
    """Whether TensorFlow's own Conv2D op runs and differentiates dilation in this process.

    It does on a CPU with oneDNN (TensorFlow's default on x86 Linux): forward and both
    gradients, at about the speed of the undilated convolution. Without oneDNN the CPU
    kernels have no dilated gradient; GPUs keep `tf.nn.convolution`'s path as before.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the probe: the portable path
        return False
    return bool(_pywrap_util_port.IsMklEnabled()) and not tf.config.list_physical_devices("GPU")


@keras.saving.register_keras_serializable(package="autoseg")
class Conv2D(layers.Conv2D):
    """`keras.layers.Conv2D` for dilated convolutions: the same outputs, without the waste.

    Same constructor, config and variables as Keras' (a 3x3 kernel stays a 3x3 variable).
    The class keeps Keras' name because weight files (`save_weights`, the trial checkpoints
    that export loads into a rebuilt model) address layers by their class name: weights
    saved from a plain dilated `keras.layers.Conv2D` load into this one, and back.

    With "same" padding and stride 1, it computes:
    - only the kernel rows and columns that can reach the map (`_reachable_taps`): a 3x3
      convolution at a rate >= the map's height and width is the 1x1 convolution of its
      centre tap;
    - what dilation is left as TensorFlow's own dilated Conv2D op where oneDNN runs it
      (`_tf_runs_dilation_natively`), else as `keras.ops.conv` does.

    Build it through `conv2d`, which gives a plain Keras layer where nothing is dilated.
    """

    def convolution_op(self, inputs, kernel):
        if self.padding != "same" or any(s != 1 for s in self.strides):
            return super().convolution_op(inputs, kernel)
        slices, rates = _reachable_taps(self.kernel_size, self.dilation_rate,
                                        _spatial_shape(self, inputs))
        kernel = kernel[slices]
        native = self.data_format == "channels_last" and _tf_runs_dilation_natively()
        if all(rate == 1 for rate in rates) or not native:
            return ops.conv(inputs, kernel, strides=1, padding="same", dilation_rate=rates,
                            data_format=self.data_format)
        import tensorflow as tf

        return tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME", dilations=rates)


@keras.saving.register_keras_serializable(package="autoseg")
class DepthwiseConv2D(layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` for dilated convolutions, without unreachable taps.

    As `Conv2D` (and named as Keras' for the same reason), for the depthwise step of
    separable atrous convolutions; what dilation is left runs as `keras.ops.depthwise_conv`
    does: TensorFlow's own dilated depthwise op gives wrong gradients on CPU (TF 2.21).
    """

    def call(self, inputs):
        if self.padding != "same" or any(s != 1 for s in self.strides):
            return super().call(inputs)
        slices, rates = _reachable_taps(self.kernel_size, self.dilation_rate,
                                        _spatial_shape(self, inputs))
        outputs = ops.depthwise_conv(inputs, self.kernel[slices], strides=1, padding="same",
                                     dilation_rate=rates, data_format=self.data_format)
        if self.use_bias:
            shape = (-1, 1, 1) if self.data_format == "channels_first" else (-1,)
            outputs = ops.add(outputs, ops.reshape(self.bias, shape))
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


def space_to_batch_convolution(layer, spatial) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(kernel_size, dilation_rate)` of what TensorFlow convolves for a conv layer on a map of
    static size `spatial`: as space-to-batch wherever a rate is left above 1.

    A Keras convolution runs its whole kernel at its rates; autoseg's `Conv2D` and
    `DepthwiseConv2D` only the taps that reach the map, and `Conv2D` no space-to-batch where
    TensorFlow dilates natively. `autoseg.budget.temporary_elements` counts the copies from
    this.

    Args:
        layer: A `Conv2D`, `DepthwiseConv2D` or `SeparableConv2D` layer.
        spatial: The static spatial size of its input.
    """
    kernel_size, rates = tuple(layer.kernel_size), tuple(layer.dilation_rate)
    if not isinstance(layer, (Conv2D, DepthwiseConv2D)) or layer.padding != "same":
        return kernel_size, rates
    slices, rates = _reachable_taps(kernel_size, rates, spatial)
    kernel_size = tuple(len(range(k)[s]) for k, s in zip(kernel_size, slices))
    if (isinstance(layer, Conv2D) and layer.data_format == "channels_last"
            and _tf_runs_dilation_natively()):
        rates = (1,) * len(rates)
    return kernel_size, rates


def conv2d(filters: int, kernel_size, *, dilation_rate=1, **kwargs) -> layers.Conv2D:
    """`keras.layers.Conv2D(...)`, or autoseg's `Conv2D` where `dilation_rate` is above 1."""
    dilated = any(int(r) > 1 for r in _pair(dilation_rate))
    return (Conv2D if dilated else layers.Conv2D)(
        filters, kernel_size, dilation_rate=dilation_rate, **kwargs
    )


def depthwise_conv2d(kernel_size, *, dilation_rate=1, **kwargs) -> layers.DepthwiseConv2D:
    """`keras.layers.DepthwiseConv2D(...)`, or autoseg's `DepthwiseConv2D` where dilated."""
    dilated = any(int(r) > 1 for r in _pair(dilation_rate))
    return (DepthwiseConv2D if dilated else layers.DepthwiseConv2D)(
        kernel_size, dilation_rate=dilation_rate, **kwargs
    )


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class _StrideSchedule:
    """Tracks the current stride and turns downsamplings past `output_stride` into dilation."""

    def __init__(self, output_stride: int):
        self.output_stride = output_stride
        self.stride = 1
        self.dilation = 1

    def downsample(self) -> tuple[int, int, int]:
        """Returns `(strides, dilation_before, dilation_after)` for one 2x downsampling."""
        before = self.dilation
        if self.stride * 2 <= self.output_stride:
            self.stride *= 2
            return 2, before, before
        self.dilation *= 2
        return 1, before, self.dilation


def build_backbone(
    name: str,
    inputs,
    weights: str | os.PathLike | None = None,
    output_stride: int = 32,
    **options: Any,
) -> dict[int, Any]:
    """Applies the backbone `name` to `inputs` and returns its feature taps.

    Args:
        name: A registered backbone ("resnet50", "vgg16", "mobilenetv2", "tiny"),
            case-insensitive.
        inputs: The model's input tensor: float32 RGB pixel values 0..255, shape
            `(batch, H, W, 3)`. The backbone applies its own preprocessing.
        weights: None (random initialisation), "imagenet" (downloads the
            `keras.applications` notop weights), or the path of a weights file for the
            matching `keras.applications` model (the downloaded `..._notop.h5`, or a
            `.weights.h5` saved from that model). Defaults to None.
        output_stride: 8, 16 or 32: the largest stride; later stages dilate instead of
            striding. Defaults to 32.
        **options: Backbone-specific options (`tiny` takes `width`).

    Returns:
        `{stride: tensor}`, the deepest feature map at each stride reached, strides ascending.

    Raises:
        ConfigError: unknown backbone, option or output stride; weights that cannot be
            found or loaded.

    Example:
    ```python
    inputs = keras.Input((64, 64, 3))
    taps = build_backbone("resnet50", inputs, output_stride=16)
    high, low = taps[max(taps)], taps[4]
    ```
    """
    builder, info = BACKBONES.get(name)
    canonical = builder.__name__
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(
            f"output_stride must be one of {OUTPUT_STRIDES} for backbone {canonical!r}. "
            f"Received: output_stride={output_stride!r}"
        )
    valid = tuple(info.get("options", {}))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {', '.join(unknown)} for backbone {canonical!r}. "
            f"Valid options: {', '.join(valid) or 'none'}."
        )
    _check_weights_value(canonical, info, weights)
    taps = builder(inputs, output_stride=output_stride, **options)
    if weights is not None:
        _load_application_weights(canonical, info, weights, taps, inputs)
    return dict(sorted(taps.items()))


def _check_weights_value(name: str, info: dict, weights) -> None:
    if weights is None:
        return
    if info.get("application") is None:
        raise ConfigError(
            f"Backbone {name!r} has no pretrained weights; use weights=None. "
            f"Received: weights={weights!r}"
        )
    if weights == "imagenet":
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(
            f"weights must be None, 'imagenet' or the path of a weights file. "
            f"Received: weights={weights!r}"
        )
    if not os.path.isfile(weights):
        raise ConfigError(
            f"Weights file {os.fspath(weights)!r} for backbone {name!r} does not exist. "
            f"Pass None, 'imagenet', or the path of {info['weights_file']} "
            f"(from {info['weights_url']})."
        )


def _load_application_weights(name: str, info: dict, weights, taps: dict, inputs) -> None:
    """Builds the `keras.applications` model with `weights` and copies them by layer name."""
    constructor = getattr(keras.applications, info["application"])
    try:
        source = constructor(include_top=False, weights=weights, input_shape=(224, 224, 3))
    except Exception as exc:  # keras raises a bare Exception for download failures
        if weights == "imagenet":
            raise ConfigError(
                f"Could not get the ImageNet weights for backbone {name!r} ({exc}). "
                f"Without network access, download {info['weights_file']} elsewhere "
                f"({info['weights_url']}) and pass weights='/path/to/{info['weights_file']}'."
            ) from exc
        raise ConfigError(
            f"Could not load weights file {os.fspath(weights)!r} into "
            f"keras.applications.{info['application']} for backbone {name!r} ({exc}). "
            f"Expected {info['weights_file']} or a .weights.h5 saved from that model."
        ) from exc
    target = keras.Model(inputs, list(taps.values()))
    transfer_weights_by_name(source, target)


def transfer_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copies the weights of every layer of `source` into the same-named layer of `target`.

    Args:
        source: The model to copy from (e.g. a `keras.applications` model).
        target: The model to copy into; it may hold extra layers, and may lack layers of
            `source` that lie past its deepest output.

    Returns:
        The number of layers copied.

    Raises:
        ValueError: a same-named layer has weights of a different shape (a bug in a
            backbone definition, not a user error).
    """
    target_layers = {layer.name: layer for layer in target.layers if layer.weights}
    copied = 0
    for layer in source.layers:
        if not layer.weights or layer.name not in target_layers:
            continue
        values = layer.get_weights()
        into = target_layers[layer.name]
        shapes = [tuple(w.shape) for w in into.weights]
        if shapes != [v.shape for v in values]:
            raise ValueError(
                f"Layer {layer.name!r}: weight shapes {shapes} differ from the source's "
                f"{[v.shape for v in values]}."
            )
        into.set_weights(values)
        copied += 1
    return copied


# --- ResNet-50 (keras.applications.ResNet50 layer names; caffe preprocessing) -------------


def _resnet_block(x, filters, *, strides, dilation, conv_shortcut, name):
    """A bottleneck block of ResNet v1 with the stride on the first 1x1 convolution."""
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=strides, name=f"{name}_0_conv")(x)
        shortcut = BatchNormalization(epsilon=1.001e-5, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=strides, name=f"{name}_1_conv")(x)
    x = BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = conv2d(filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_2_conv")(x)
    x = BatchNormalization(epsilon=1.001e-5, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = BatchNormalization(epsilon=1.001e-5, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


@register_backbone(
    "resnet50",
    strides=(2, 4, 8, 16, 32),
    application="ResNet50",
    weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_url=_APPLICATIONS_URL
    + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    description="ResNet-50 v1 (23.6M parameters), dilatable to output stride 8/16",
)
def resnet50(inputs, output_stride=32):
    schedule = _StrideSchedule(output_stride)
    x = ImageNetPreprocessing("caffe", name="resnet50" + PREPROCESSING_SUFFIX)(inputs)
    x = layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    schedule.downsample()
    x = BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    taps = {schedule.stride: x}
    x = layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    schedule.downsample()
    for stage, (filters, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 2):
        if stage == 2:
            strides, first_dilation, dilation = 1, 1, 1
        else:
            strides, first_dilation, dilation = schedule.downsample()
        for block in range(1, blocks + 1):
            x = _resnet_block(
                x,
                filters,
                strides=strides if block == 1 else 1,
                dilation=first_dilation if block == 1 else dilation,
                conv_shortcut=block == 1,
                name=f"conv{stage}_block{block}",
            )
        taps[schedule.stride] = x
    return taps


# --- VGG16 (keras.applications.VGG16 layer names; caffe preprocessing) --------------------


@register_backbone(
    "vgg16",
    strides=(1, 2, 4, 8, 16, 32),
    application="VGG16",
    weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_url=_APPLICATIONS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    description="VGG16 (14.7M parameters); pools past the output stride become dilation",
)
def vgg16(inputs, output_stride=32):
    schedule = _StrideSchedule(output_stride)
    x = ImageNetPreprocessing("caffe", name="vgg16" + PREPROCESSING_SUFFIX)(inputs)
    taps = {}
    for block, (filters, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), 1):
        for conv in range(1, convs + 1):
            x = conv2d(
                filters,
                3,
                padding="same",
                dilation_rate=schedule.dilation,
                activation="relu",
                name=f"block{block}_conv{conv}",
            )(x)
        taps[schedule.stride] = x
        strides, _, _ = schedule.downsample()
        if strides == 2:
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    taps[schedule.stride] = x
    return taps


# --- MobileNetV2 (keras.applications.MobileNetV2, alpha 1.0; "tf" preprocessing) ---------


def _inverted_res_block(x, *, filters, expansion, downsample, schedule, taps, block_id):
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    inputs = x
    if block_id:
        x = layers.Conv2D(
            expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand"
        )(x)
        x = BatchNormalization(
            epsilon=1e-3, momentum=0.999, name=f"{prefix}expand_BN"
        )(x)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    if downsample:
        stride_before = schedule.stride
        strides, dilation, _ = schedule.downsample()
        if strides == 2:
            taps[stride_before] = x
    else:
        strides, dilation = 1, schedule.dilation
    if strides == 2:
        # keras.applications pads explicitly here; "valid" then matches its alignment.
        pad = tuple((0, 1) if size is None or size % 2 == 0 else (1, 1) for size in x.shape[1:3])
        x = layers.ZeroPadding2D(pad, name=f"{prefix}pad")(x)
    x = depthwise_conv2d(
        3,
        strides=strides,
        dilation_rate=dilation,
        use_bias=False,
        padding="valid" if strides == 2 else "same",
        name=f"{prefix}depthwise",
    )(x)
    x = BatchNormalization(epsilon=1e-3, momentum=0.999, name=f"{prefix}depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = BatchNormalization(epsilon=1e-3, momentum=0.999, name=f"{prefix}project_BN")(x)
    if in_channels == filters and strides == 1:
        x = layers.Add(name=f"{prefix}add")([inputs, x])
    return x


# (filters, expansion, downsample) of blocks 0..16, as in keras.applications.
_MOBILENETV2_BLOCKS = (
    (16, 1, False),
    (24, 6, True), (24, 6, False),
    (32, 6, True), (32, 6, False), (32, 6, False),
    (64, 6, True), (64, 6, False), (64, 6, False), (64, 6, False),
    (96, 6, False), (96, 6, False), (96, 6, False),
    (160, 6, True), (160, 6, False), (160, 6, False),
    (320, 6, False),
)  # fmt: skip


@register_backbone(
    "mobilenetv2",
    strides=(2, 4, 8, 16, 32),
    application="MobileNetV2",
    weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    weights_url=_APPLICATIONS_URL
    + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    description="MobileNetV2, alpha 1.0 (2.3M parameters), dilatable to output stride 8/16",
)
def mobilenetv2(inputs, output_stride=32):
    schedule = _StrideSchedule(output_stride)
    taps = {}
    x = ImageNetPreprocessing("tf", name="mobilenetv2" + PREPROCESSING_SUFFIX)(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    schedule.downsample()
    x = BatchNormalization(epsilon=1e-3, momentum=0.999, name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    for block_id, (filters, expansion, downsample) in enumerate(_MOBILENETV2_BLOCKS):
        x = _inverted_res_block(
            x,
            filters=filters,
            expansion=expansion,
            downsample=downsample,
            schedule=schedule,
            taps=taps,
            block_id=block_id,
        )
    x = layers.Conv2D(1280, 1, use_bias=False, name="Conv_1")(x)
    x = BatchNormalization(epsilon=1e-3, momentum=0.999, name="Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    taps[schedule.stride] = x
    return taps


# --- tiny: a few narrow convolutions for fast tests ---------------------------------------


@register_backbone(
    "tiny",
    strides=(1, 2, 4, 8, 16, 32),
    options={"width": 8},
    for_tests=True,
    description="six narrow conv-BN-ReLU levels (strides 1..32) for fast tests",
)
def tiny(inputs, output_stride=32, width=8):
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"width must be a positive integer. Received: width={width!r}")
    schedule = _StrideSchedule(output_stride)
    x = layers.Rescaling(1.0 / 255, name="tiny_rescaling")(inputs)
    taps = {}
    for level in range(6):
        strides, dilation = (1, 1) if level == 0 else schedule.downsample()[:2]
        x = conv2d(
            width * 2 ** (level // 2),
            3,
            strides=strides,
            dilation_rate=dilation,
            padding="same",
            use_bias=False,
            name=f"tiny{level}_conv",
        )(x)
        x = BatchNormalization(name=f"tiny{level}_bn")(x)
        x = layers.Activation("relu", name=f"tiny{level}_relu")(x)
        taps[schedule.stride] = x
    return taps


def backbone_names(include_test_backbones: bool = True) -> list[str]:
    """The registered backbone names, sorted (without `tiny` if not `include_test_backbones`)."""
    return [
        name for name in BACKBONES.names() if include_test_backbones or not is_test_backbone(name)
    ]
