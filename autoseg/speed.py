"""What a configuration costs on this machine: FLOPs counted from the graph, a measured rate.

The plan (`autoseg.plan`) needs, before any trial, the seconds an epoch of every
configuration of the space takes. Three measurements give it:

- `measure_models`: each model configuration of the space built once (not trained) at a
  reference input size: its training and inference FLOPs and its memory, per input pixel.
  Fully convolutional models scale with the number of pixels, so one build serves every
  input size; the measurements are cached on disk (`autoseg.cost_cache`).
- `step_seconds` and `fit_rates`: a few timed training steps of the recipe's model and of a
  narrower sibling (half the filters where the space has them; `plan.calibrate`):
  the rates this machine reaches on the two kinds of work of a training step, the FLOPs of
  its convolutions and the activations its other layers read and write (normalisation,
  activation functions, concatenation, upsampling: memory-bound on a CPU). With FLOPs alone,
  a U-Net of 16 filters trained 1.4x (EPYC, float32) to 1.8x (Xeon with AMX, bfloat16)
  slower than planned from one of 32: halving the width quarters the FLOPs but only halves
  the activations.
- `EFFICIENCY`: how fast each architecture's convolutions turn FLOPs into time relative to
  a plain U-Net's. Trials correct the estimate as they run (`CostModel.observe`).

`CostModel.epoch_seconds` puts them together: one epoch trains on one crop or resized
image per training photo (forward and backward, 3x the forward FLOPs and activations) and
validates on every tile of every validation photo (forward only).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Iterable

from autoseg import devices, model_contract

#: Training FLOPs per forward FLOP: the backward pass costs about twice the forward.
TRAIN_FLOPS_PER_FORWARD = 3

#: Relative FLOP efficiency (the GFLOP/s an architecture's convolutions reach over a plain
#: U-Net's), by `config_key`: the FLOP term of `CostModel.epoch_seconds`, its activations
#: being timed apart. Measured with `benchmarks/cost_model.py --precision float32` on both
#: cores of an AMD EPYC (RESULTS.md, "The cost model: FLOPs and activations"): the
#: efficiency that made each row exact. light_unet's came out above 1 (its depthwise FLOPs
#: are a few % of its step; its activations are the rest): 1. U-Net's MobileNetV2 encoder:
#: 0.72, from the check in mixed bfloat16 (in sample there). Not measured: SegNet's and
#: DeepLabV3+'s MobileNetV2 encoders (U-Net's figure) and the VGG16 encoders of U-Net and
#: SegNet (0.9; DeepLabV3+'s measured 1.0).
EFFICIENCY = {
    "unet": 1.0,
    "unet/resnet50": 0.86,
    "unet/vgg16": 0.9,
    "unet/mobilenetv2": 0.72,
    "light_unet": 1.0,
    "segnet": 0.82,
    "segnet/resnet50": 0.74,
    "segnet/vgg16": 0.9,
    "segnet/mobilenetv2": 0.72,
    "deeplabv3plus/resnet50": 0.94,
    "deeplabv3plus/vgg16": 1.0,
    "deeplabv3plus/mobilenetv2": 0.72,
    "pix2pix": 0.93,
}
DEFAULT_EFFICIENCY = 0.5

#: Seconds a trial costs besides its epochs (a fresh process, imports, build, tracing,
#: checkpoint) until trials measure it: 15.7 s for a U-Net of 16 filters at 256 px on CWFID
#: with both cores of a 2-core CPU (RESULTS.md, "The end of a fit"; 30-44 s before tf.data's
#: autotuning was turned off); one core and larger models trace slower.
DEFAULT_FIXED_SECONDS = 20.0


def steady_epochs(seconds: list[float]) -> list[float]:
    """The epoch times after the first (which also traces the model's functions and fills
    caches, ~1.5x a steady one on CWFID), or the first alone while it is the only one."""
    return list(seconds[1:] or seconds)


def steady_epoch_seconds(seconds: list[float]) -> float | None:
    """The median of `steady_epochs(seconds)`: a trial's steady epoch time; None without
    any epoch."""
    return statistics.median(steady_epochs(seconds)) if seconds else None


def config_key(model_name: str, options: dict[str, Any]) -> str:
    """`"unet"`, `"unet/resnet50"`: the architecture and its encoder, what sets efficiency."""
    backbone = options.get("backbone")
    if backbone in (None, "none"):
        return model_name
    return f"{model_name}/{backbone}"


def _call_macs(layer, input_shape, output_shape) -> int:
    """Multiply-accumulates of one call of a conv or dense layer (0 for other layers)."""
    from keras import layers

    out = [int(d) for d in output_shape[1:]]
    inp = [int(d) for d in input_shape[1:]]
    if getattr(layer, "data_format", None) == "channels_first":  # channels last, as below
        out, inp = out[1:] + out[:1], inp[1:] + inp[:1]
    if isinstance(layer, layers.Conv2DTranspose):  # every input pixel scatters a kernel
        return math.prod(inp) * math.prod(layer.kernel_size) * layer.filters
    if isinstance(layer, layers.SeparableConv2D):
        middle = inp[-1] * layer.depth_multiplier
        return math.prod(out[:-1]) * middle * (math.prod(layer.kernel_size) + layer.filters)
    if isinstance(layer, layers.DepthwiseConv2D):
        return math.prod(out) * math.prod(layer.kernel_size)
    if isinstance(layer, layers.Conv2D):
        return math.prod(out) * math.prod(layer.kernel_size) * inp[-1] // layer.groups
    if isinstance(layer, layers.Dense):
        return math.prod(out) * inp[-1]
    return 0


def forward_flops(model) -> int:
    """Per-image FLOPs (2 x MACs) of the conv and dense calls in `model`'s graph.

    Walks the graph as `autoseg.budget.activation_elements` does (a nested model counts as
    its layers), so both count the same calls.
    """
    from autoseg.budget import _graph_of

    total = 0
    for nodes in _graph_of(model)._nodes_by_depth.values():
        for node in nodes:
            operation = node.operation
            if node.is_input or operation is model:
                continue
            if _graph_of(operation) is not None:
                total += forward_flops(operation)
            elif node.input_tensors and node.outputs:
                total += 2 * _call_macs(
                    operation, node.input_tensors[0].shape, node.outputs[0].shape
                )
    return total


def training_forward_flops(model) -> int:
    """Forward FLOPs per image of what a training step runs: the model's graph plus the
    sub-models its `train_step` runs outside it (pix2pix's discriminator, twice)."""
    return forward_flops(model) + sum(
        calls * forward_flops(sub) for sub, calls in model_contract.training_passes(model)
    )


@dataclasses.dataclass
class ModelCost:
    """One model configuration of a space, measured once at a reference input size.

    Attributes:
        model_name, options: The configuration (options as the space draws them).
        key: `config_key`, which selects the efficiency.
        family: The architecture's family.
        train_flops_per_pixel: Forward FLOPs of a training step per input pixel.
        infer_flops_per_pixel: Forward FLOPs of inference per input pixel.
        train_elements_per_pixel: Activation elements a training step's forward pass writes
            (`budget.activation_elements`), per input pixel.
        infer_elements_per_pixel: The same of inference.
        static_bytes: Predicted training memory that does not grow with the batch.
        sample_bytes_per_pixel: Predicted training memory per sample and input pixel.
        params: Parameters.
        precision: The Keras dtype policy the memory was estimated for.
    """

    model_name: str
    options: dict[str, Any]
    key: str
    family: str
    train_flops_per_pixel: float
    infer_flops_per_pixel: float
    static_bytes: int
    sample_bytes_per_pixel: float
    params: int
    precision: str = "float32"
    train_elements_per_pixel: float = 0.0
    infer_elements_per_pixel: float = 0.0

    def memory_bytes(self, input_size: tuple[int, int], batch_size: int) -> int:
        return int(self.static_bytes
                   + batch_size * self.sample_bytes_per_pixel * input_size[0] * input_size[1])


def reference_size(divisor: int) -> tuple[int, int]:
    """The input size models are measured at: 128 px, or the smallest valid size above."""
    side = max(divisor, math.ceil(128 / divisor) * divisor)
    return side, side


def measure_models(combos: Iterable[tuple[str, dict[str, Any]]], num_classes: int,
                   precision_of: Callable[[str], str] = lambda model_name: "float32",
                   channels: int = 3, log: Callable[[str], None] | None = None,
                   cache=None) -> list[ModelCost]:
    """Builds each `(model_name, options)` once and measures its FLOPs and memory, or takes
    the measurement from `cache`.

    Args:
        combos: The model configurations (every combination of each model's options).
        num_classes: Output classes.
        precision_of: The dtype policy an architecture trains under (for the memory estimate).
        channels: Input channels.
        log: Called with a line per model configuration, or None.
        cache: A `cost_cache.CostCache`; None: the on-disk cache (`CostCache.default()`).
    """
    from autoseg import cost_cache

    cache = cost_cache.CostCache.default() if cache is None else cache
    measured = []
    for model_name, options in combos:
        precision = precision_of(model_name)
        key = cost_cache.entry_key(model_name, options, num_classes, channels, precision)
        known = cache.get(key)
        cost = ModelCost(**known) if known else _measure_model(
            model_name, options, num_classes, channels, precision)
        if not known:
            cache.put(key, dataclasses.asdict(cost))
        measured.append(cost)
        if log:
            log(f"{model_name} {options}: {cost.train_flops_per_pixel * 65536 / 1e9:.1f} "
                f"GFLOPs at 256x256, {cost.params / 1e6:.1f}M parameters")
    cache.save()
    return measured


def _measure_model(model_name: str, options: dict[str, Any], num_classes: int, channels: int,
                   precision: str) -> ModelCost:
    """One model configuration built at its reference size and measured."""
    import keras

    from autoseg import budget, models, registry

    spec = registry.ARCHITECTURES.get(model_name)
    size = reference_size(int(spec.input_divisor({**spec.defaults, **options})))
    model = models.build(model_name, num_classes, (*size, channels), **options)
    pixels = size[0] * size[1]
    estimate = budget.estimate_training_memory(model, 1, precision=precision, family=spec.family)
    inference = model_contract.inference_model(model)
    cost = ModelCost(
        model_name=model_name, options=dict(options), key=config_key(model_name, options),
        family=spec.family,
        train_flops_per_pixel=training_forward_flops(model) / pixels,
        infer_flops_per_pixel=forward_flops(inference) / pixels,
        static_bytes=int(estimate.total_bytes - estimate.per_sample_bytes),
        sample_bytes_per_pixel=estimate.per_sample_bytes / pixels,
        params=int(model.count_params()), precision=precision,
        train_elements_per_pixel=budget.activation_elements(model) / pixels,
        infer_elements_per_pixel=budget.activation_elements(inference) / pixels,
    )
    del model, inference
    keras.backend.clear_session()
    return cost


def step_seconds(model, batch_size: int, steps: int = 3) -> float:
    """Seconds of one training step of `model` (compiled) on this machine: the median of
    `steps` timed steps after one that traces, on random images and masks."""
    import numpy as np

    shape = tuple(int(d) for d in model.input_shape[1:])
    classes = int(model.output_shape[-1])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, *shape)).astype("float32")
    masks = rng.integers(0, classes, (batch_size, *shape[:2])).astype("int32")
    model.train_on_batch(images, masks)  # traces
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, masks)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


@dataclasses.dataclass
class Timing:
    """One timed training step in a plain U-Net's float32 terms: its seconds times its
    precision's speed-up, its FLOPs over its architecture's efficiency, its activations."""

    seconds: float
    flops: float  # training FLOPs of the step (forward and backward) over the efficiency
    elements: float  # activation elements of the step (forward and backward)


def timing(cost: ModelCost, input_size: tuple[int, int], batch_size: int, seconds: float,
           efficiency: dict[str, float] | None = None) -> Timing:
    """The `Timing` of a step of `batch_size` images at `input_size` that took `seconds`.

    Args:
        cost: The model's measurement.
        input_size: (H, W) of the step's images.
        batch_size: Images in the step.
        seconds: What the step took.
        efficiency: The table the cost model will use (default `EFFICIENCY`).
    """
    table = EFFICIENCY if efficiency is None else efficiency
    pixels = input_size[0] * input_size[1] * batch_size
    return Timing(
        seconds=seconds * devices.training_speedup(cost.model_name, cost.precision),
        flops=(pixels * TRAIN_FLOPS_PER_FORWARD * cost.train_flops_per_pixel
               / table.get(cost.key, DEFAULT_EFFICIENCY)),
        elements=pixels * TRAIN_FLOPS_PER_FORWARD * cost.train_elements_per_pixel)


#: Two timings are told apart only when their ratio of FLOPs to activations differs by at
#: least this factor (halving a U-Net's filters halves it).
MIN_INTENSITY_RATIO = 1.4

#: FLOPs a plain U-Net computes in the time its other layers take for one activation
#: element, by the recipe's precision, where no second timing measures it (`fit_rates`). On
#: an AMD EPYC with avx512_bf16 (RESULTS.md, "The cost model: FLOPs and activations"): 123 in
#: float32 on both cores (214 GFLOP/s, 1.74 G activations/s); in mixed bfloat16 270 and 306
#: on both cores and 187 on one (bfloat16 speeds the convolutions more than the rest).
FLOPS_PER_ELEMENT = {"float32": 125.0, "mixed_bfloat16": 250.0, "mixed_float16": 250.0}

#: A fit whose ratio of the two rates is further than this factor from `FLOPS_PER_ELEMENT`
#: is taken for timing noise (with a 32/16-filter pair, 10 % off the narrow step moves the
#: activation rate by a third), and the usual ratio is kept.
MAX_RATIO_FACTOR = 3.0


def flops_per_element(precision: str) -> float:
    """`FLOPS_PER_ELEMENT` of a Keras dtype policy (float32's for one not listed)."""
    return FLOPS_PER_ELEMENT.get(precision, FLOPS_PER_ELEMENT["float32"])


def fit_rates(first: Timing, second: Timing | None = None,
              ratio: float = FLOPS_PER_ELEMENT["float32"]) -> tuple[float, float, bool]:
    """The two rates of `CostModel` from timed steps.

    Args:
        first: The recipe's step.
        second: A step of a model with another ratio of FLOPs to activations (its
            sibling), or None.
        ratio: FLOPs per activation to assume when the timings do not split the terms.

    Returns:
        `(gflops, gelements, measured)`: rates such that `flops / gflops + elements /
        gelements` (in G) gives both timings' seconds (`measured` True); from `first` alone,
        or when the two do not tell the terms apart (too alike in intensity, a negative
        term, or a ratio of the rates off `ratio` by more than `MAX_RATIO_FACTOR`: timing
        noise), rates at `ratio` that give `first` exactly (`measured` False).
    """
    gflops = (first.flops + ratio * first.elements) / first.seconds / 1e9
    prior = (gflops, gflops / ratio, False)
    if second is None or min(first.elements, second.elements, first.flops, second.flops) <= 0:
        return prior
    intensity = (first.flops / first.elements) / (second.flops / second.elements)
    if max(intensity, 1 / intensity) < MIN_INTENSITY_RATIO:
        return prior
    det = first.flops * second.elements - second.flops * first.elements
    per_flop = (first.seconds * second.elements - second.seconds * first.elements) / det
    per_element = (first.flops * second.seconds - second.flops * first.seconds) / det
    if per_flop <= 0 or per_element <= 0:
        return prior
    fitted = per_element / per_flop  # FLOPs per activation
    if not 1 / MAX_RATIO_FACTOR <= fitted / ratio <= MAX_RATIO_FACTOR:
        return prior
    return 1 / per_flop / 1e9, 1 / per_element / 1e9, True


@dataclasses.dataclass
class CostModel:
    """Seconds per epoch of any configuration, corrected by what trials measure.

    An epoch's seconds are its FLOPs at `gflops` times the architecture's efficiency, plus
    its activations at `gelements`, over its precision's speed-up, times the correction
    trials measured for its `config_key`.

    The rates are a plain U-Net's in float32 terms: measured in the recipe's precision and
    divided by its speed-up (`devices.training_speedup`, one figure a family for the whole
    step). bfloat16 speeds the convolutions more than the other layers, so rates calibrated
    on a bfloat16 recipe predict a family that trains in float32 less well (1.39x optimistic
    for pix2pix, 0.77 for light_unet: RESULTS.md); its trials correct it.

    Attributes:
        gflops: The GFLOP/s a plain U-Net's convolutions reach in training on this machine.
        gelements: The G activation elements a second its other layers process, or None:
            FLOPs alone (`gflops` then covers both; hand-made cost models and plans saved
            before this term).
        gelements_measured: Whether `gelements` was measured (two timings that split), not
            assumed from `FLOPS_PER_ELEMENT`.
        fixed_seconds: A trial's cost besides its epochs.
        efficiency: Relative efficiency by `config_key` (`EFFICIENCY` by default).
        observed: Measured over uncorrected predicted epoch time, by `config_key`, one
            ratio per trial that ran.
    """

    gflops: float
    fixed_seconds: float = DEFAULT_FIXED_SECONDS
    gelements: float | None = None
    gelements_measured: bool = False
    efficiency: dict[str, float] = dataclasses.field(default_factory=lambda: dict(EFFICIENCY))
    observed: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def correction(self, key: str | None = None) -> float:
        """Measured over predicted: the key's own trials, else every trial's, else 1."""
        ratios = self.observed.get(key) or [r for rs in self.observed.values() for r in rs]
        return statistics.geometric_mean(ratios) if ratios else 1.0

    def epoch_seconds(self, cost: ModelCost, input_size: tuple[int, int], train_images: int,
                      val_units: int, corrected: bool = True) -> float:
        """One epoch: `train_images` crops or images at `input_size`, forward and backward,
        and `val_units` validation tiles or images, forward only."""
        pixels = input_size[0] * input_size[1]
        flops = pixels * (train_images * TRAIN_FLOPS_PER_FORWARD * cost.train_flops_per_pixel
                          + val_units * cost.infer_flops_per_pixel)
        seconds = flops / 1e9 / (self.gflops * self.efficiency.get(cost.key, DEFAULT_EFFICIENCY))
        if self.gelements:
            elements = pixels * (
                train_images * TRAIN_FLOPS_PER_FORWARD * cost.train_elements_per_pixel
                + val_units * cost.infer_elements_per_pixel)
            seconds += elements / 1e9 / self.gelements
        seconds /= devices.training_speedup(cost.model_name, cost.precision)
        return seconds * self.correction(cost.key) if corrected else seconds

    def observe(self, key: str, predicted: float, measured: float) -> None:
        """Records one trial's steady epoch time against its uncorrected prediction."""
        if predicted > 0 and measured > 0:
            self.observed.setdefault(key, []).append(round(measured / predicted, 4))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostModel":
        return cls(**data)
