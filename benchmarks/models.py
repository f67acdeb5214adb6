"""CPU speed of every registered architecture: FLOPs, training and inference throughput,
training memory, and the share of the float32 matmul peak that training reaches.

Rows: every architecture of `autoseg.registry.ARCHITECTURES` at its default options (and
default backbone), plus `unet` on `resnet50` and `deeplabv3plus` on `vgg16`; `--ablations`
adds variants that test a suspected cost inside a whole model. Each row runs in a fresh
subprocess, so memory and thread-pool state do not leak from one model into the next (a
subprocess costs ~10 s of imports; a row costs 1 to 4 minutes).

Per row, at `--size`² and `--classes` classes, in each `--precision` (a Keras dtype policy:
float32, or mixed_bfloat16 with the model built under it; a row key gains `@policy`),
`jit_compile=False`:
- Forward GFLOPs per image, counted from the model graph: 2 x the multiply-accumulates of
  every Conv2D, SeparableConv2D, DepthwiseConv2D, Conv2DTranspose and Dense call, from its
  input and output shapes, kernel size, channels and groups. Batch norm, activations,
  pooling, resizing, unpooling and the loss are not counted (TensorFlow counts them at
  0.07% of a U-Net's total). The "TF graph" column is TensorFlow's own FLOP statistics of
  the frozen batch-1 inference graph (conv and matmul ops): it equals the count for plain
  convolutions and exceeds it for dilated ones, which TensorFlow runs as SpaceToBatchND +
  Conv2D + BatchToSpaceND on an input padded to a multiple of the rate. pix2pix predicts
  with its generator, so its forward count is the generator's.
- Training img/s: `model.fit` on a prefetched `tf.data` dataset repeating one batch of
  random tensors (the input pipeline costs nothing), Adam, loss `ce` from
  `autoseg.losses.get_loss`, no metrics: `--warmup` steps, then the median step time
  (`on_train_batch_begin` to `on_train_batch_end`) of `--steps` steps, fewer (at least 3)
  once the timed steps have taken `--max-timed-seconds`.
- Training GFLOP/s = 3 x training forward FLOPs per image x img/s (the backward pass costs
  about twice the forward); pix2pix's training forward is the generator plus two
  discriminator passes (on the real and the fake pair).
- "% of peak": training GFLOP/s over the float32 matmul peak, the best GFLOP/s of numpy
  `a @ b` and `tf.linalg.matmul` on 2048x2048 float32 (best of 5 calls) over every
  measurement of the run (a subprocess at the start and at the end, and each row's
  subprocess after its inference timings).
- "% of peak per CPU-second": the same ratio with both speeds per CPU-second of the process
  (`time.process_time`, all threads) instead of per wall-clock second. Other jobs on the
  machine take cores away from a row for part of its wall time, not for its CPU time, so
  this one compares rows measured under different loads; it misses time when the process
  leaves a core idle on its own (serial stretches), which "Cores busy" (CPU-seconds per
  wall-second of the timed steps, at most 2) shows together with the load. The host's other
  tenants still shift it by about +-10% (matmul per CPU-second varies that much).
- Training memory: `autoseg.budget.PeakMemory` growth over the `fit` call (tracing,
  warm-up and timed steps; the model is built and compiled before, and nothing else runs
  before it in the process).
- Inference: batch 1, `model(x, training=False)` in a `tf.function` (median of up to 5
  calls after 2 warm-up calls), and `model.predict` of 8 images at batch 8 (one call after
  one warm-up call). pix2pix's inference network is the `unet` row's and is not re-timed.
- Where the training time goes (unless `--no-breakdown`): one more step runs under the
  TensorFlow profiler. Every executed op is attributed to the Keras layer whose name scope
  it ran in (forward and backward), and grouped by layer class; "conv kernels" are the
  convolution and matmul kernels of conv layers, "conv extras" their other ops (bias, the
  space-to-batch reshuffles of dilated convolutions); "loss", "optimizer" and "other" have
  no layer. The two executor threads run ops concurrently, so each moment of the step is
  shared equally among the ops running then, and "idle" is the time no op ran. Other jobs
  on the machine stretch whichever ops they interrupt: read shares to +-5 points. The last
  column divides the row's "% of peak per CPU-second" by the conv-kernel share: roughly how
  fast the conv kernels themselves run.

`--ablations` also adds rows ending in `/keras_bn`: the model with Keras' own (unfused)
batch norm in place of `autoseg.batch_norm.BatchNormalization`, same weights; and
`deeplabv3plus/keras_conv`: DeepLabV3+ with each dilated
`autoseg.backbones.Conv2D` turned back into the `keras.layers.Conv2D` autoseg built before
issue #13 (every tap, run by TensorFlow as space-to-batch), same weights and outputs: that
issue's before/after in one run. With several `--precision` values, a "Precision" table
compares each model's rows.

`--experiments` adds single-layer timings (forward + both backward passes, batch
`--batch`, median of 5 after 2 warm-up calls) that test the usual suspects one at a time;
their GFLOP per CPU-second is compared with the matmul's.

The machine is shared: each row records the 1-minute load average at its start, and the run
prints the load average before and after. Compare rows as ratios within one run.

    python benchmarks/models.py [--size 256] [--classes 3] [--batch 2] [--steps 5]
                                [--warmup 3] [--only unet,deeplabv3plus/vgg16]
                                [--precision float32,mixed_bfloat16]
                                [--ablations] [--experiments] [--no-breakdown]
                                [--json rows.json]
"""

from __future__ import annotations

import argparse
import collections
import glob
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np

from autoseg.speed import _call_macs, forward_flops, training_forward_flops

MATMUL_SIZE = 2048
#: Rows beyond each architecture's defaults: (key, architecture, options).
EXTRA_ROWS = [
    ("unet/resnet50", "unet", {"backbone": "resnet50"}),
    ("deeplabv3plus/vgg16", "deeplabv3plus", {"backbone": "vgg16"}),
    # The plan's recipe on CPU is a 32-filter U-Net; the bfloat16 speed-up shrinks with width.
    ("unet/f32", "unet", {"filters": 32}),
    ("unet/f16", "unet", {"filters": 16}),
]
#: `--ablations`: whole-model variants that remove one suspected cost.
ABLATION_ROWS = [
    # Keras 3 batch norm on TensorFlow is unfused (moments, then normalise): several
    # memory-bound passes over every conv output, forward and backward.
    ("unet/no_bn", "unet", {"batch_norm": False}),
    # Dilated convolutions as TensorFlow runs a plain Conv2D: space-to-batch, every tap.
    ("deeplabv3plus/keras_conv", "deeplabv3plus", {}),
]
#: Rows with Keras' own batch norm (the unfused form autoseg trained with before
#: `autoseg.batch_norm`): compare each with the row of the same key without `/keras_bn`.
KERAS_BN_ROWS = [
    ("unet/f32/keras_bn", "unet", {"filters": 32}),
    ("unet/f16/keras_bn", "unet", {"filters": 16}),
    ("light_unet/keras_bn", "light_unet", {}),
    ("segnet/keras_bn", "segnet", {}),
    ("unet/resnet50/keras_bn", "unet", {"backbone": "resnet50"}),
]
ABLATION_ROWS += KERAS_BN_ROWS
#: Row keys whose model is rebuilt by a function after `models.build` (benchmark-only paths).
REBUILT_ROWS = {"deeplabv3plus/keras_conv": "as_keras_convolutions",
                **{key: "as_keras_batch_norm" for key, _, _ in KERAS_BN_ROWS}}
#: `--precision` values: Keras dtype policies a row can be built under.
PRECISIONS = ("float32", "mixed_bfloat16")
#: pix2pix predicts with its generator (`Pix2Pix.call`), by default the `unet` row's network.
SAME_INFERENCE_AS = {"pix2pix": "unet"}
#: Profiled training steps of the time breakdown.
BREAKDOWN_STEPS = 1
#: Op types that are convolution or matmul kernels (TensorFlow's and oneDNN's names).
_KERNEL_OP = re.compile(r"Conv2D|Conv3D|Depthwise|MatMul|Einsum")
_CONV_LAYERS = ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense")
#: Ops that only call functions: their time is the time of the ops inside.
_CALL_OPS = {"PartitionedCall", "StatefulPartitionedCall", "While", "If", "StatelessIf",
             "StatelessWhile"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="training batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--max-timed-seconds", type=float, default=45,
                        help="stop timing a row after this long (at least 3 timed steps)")
    parser.add_argument("--only", help="comma-separated row keys, e.g. unet,unet/resnet50")
    parser.add_argument("--precision", default="float32",
                        help=f"comma-separated dtype policies, each a set of rows: "
                             f"{', '.join(PRECISIONS)}")
    parser.add_argument("--ablations", action="store_true",
                        help="add the whole-model variants of ABLATION_ROWS")
    parser.add_argument("--experiments", action="store_true",
                        help="add the single-layer timings of `_experiments`")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the profiled step and the time-breakdown table")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--json", help="also write the raw rows to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- measurements (run inside a worker subprocess) -----------------------------------------


def _matmul_calls(size: int = MATMUL_SIZE) -> dict:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    ta, tb = tf.constant(a), tf.constant(b)
    return {"numpy": lambda: a @ b, "tf": lambda: tf.linalg.matmul(ta, tb).numpy()}


class Clock:
    """Wall time and this process's CPU time (all threads) of a block, in seconds."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def matmul_peak_gflops(repeats: int = 5) -> dict[str, float]:
    """Best float32 matmul speed of numpy and TensorFlow on two 2048² matrices.

    Returns:
        `{"numpy": GFLOP/s, "tf": GFLOP/s, "numpy_cpu": GFLOP per CPU-second, "tf_cpu": ...}`,
        each the best of `repeats` calls.
    """
    flops = 2 * MATMUL_SIZE**3 / 1e9
    result = {}
    for name, call in _matmul_calls().items():
        call()  # the first call allocates and picks kernels
        clocks = []
        for _ in range(repeats):
            with Clock() as clock:
                call()
            clocks.append(clock)
        result[name] = flops / min(c.wall for c in clocks)
        result[f"{name}_cpu"] = flops / min(c.cpu for c in clocks)
    return result


def tf_graph_flops(function) -> dict[str, int]:
    """TensorFlow's FLOP statistics of a concrete function's frozen graph, by op type."""
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler.internal import flops_registry  # noqa: F401 (registers)

    graph = convert_variables_to_constants_v2(function).graph
    by_type: dict[str, int] = collections.Counter()
    for op in graph.get_operations():
        try:
            value = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
        except ValueError:  # statistics that need shapes the graph does not have
            continue
        if value:
            by_type[op.type] += int(value)
    return dict(by_type)


def _layer_index(model) -> tuple[dict[str, str], set[str]]:
    """`{layer name: class name}` over `model` and its nested models, and the model names."""
    classes, model_names = {}, {model.name}
    for layer in model._flatten_layers(include_self=False):
        if hasattr(layer, "layers"):
            model_names.add(layer.name)
        else:
            classes[layer.name] = type(layer).__name__
    return classes, model_names


def _attribute(scope: str, op_type: str, classes: dict, model_names: set) -> tuple[str, str]:
    """`(category, layer)` of one executed op from its name scope and type.

    A conv kernel counts as one wherever it ran: oneDNN fuses Conv2D + BiasAdd + Relu into
    one op named after the Relu, i.e. in the scope of a following Activation layer.
    """
    for part in reversed(scope.split("/")):
        for name in (part, re.sub(r"_\d+$", "", part)):
            if name in model_names or name not in classes:
                continue
            if _KERNEL_OP.search(op_type):
                return ("depthwise kernels" if "Depthwise" in op_type else "conv kernels"), name
            if classes[name] in _CONV_LAYERS:
                return "conv extras", name
            return classes[name], name
    lowered = scope.lower()
    if "loss" in lowered:
        return "loss", "loss"
    if "adam" in lowered or "optimizer" in lowered or op_type.startswith("Assign"):
        return "optimizer", "optimizer"
    return "other", "other"


def _share_time(intervals: list[tuple[int, int, tuple]]) -> tuple[dict, float]:
    """Splits time among concurrent intervals `(start, end, key)`: each moment goes in equal
    parts to the intervals open then. Returns `({key: seconds}, seconds covered)`."""
    edges = sorted([(start, 1, i) for i, (start, _, _) in enumerate(intervals)]
                   + [(end, -1, i) for i, (_, end, _) in enumerate(intervals)])
    shares: dict = collections.Counter()
    open_now: set[int] = set()
    covered, last = 0.0, None
    for at, kind, index in edges:
        if open_now and last is not None and at > last:
            part = (at - last) / 1e12 / len(open_now)
            for i in open_now:
                shares[intervals[i][2]] += part
            covered += (at - last) / 1e12
        last = at
        (open_now.add if kind == 1 else open_now.discard)(index)
    return shares, covered


def time_breakdown(model, dataset, steps: int) -> dict:
    """Where `steps` profiled training steps spend their time (see the module docstring)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    classes, model_names = _layer_index(model)
    intervals, op_types = [], collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                match = re.fullmatch(r"([^\s:]+/[^\s:]+):(\w+)", name)
                if match is None or match.group(2) in _CALL_OPS:
                    continue
                scope, op_type = match.groups()
                begin = line.timestamp_ns * 1000 + event.offset_ps
                key = (*_attribute(scope, op_type, classes, model_names), op_type)
                intervals.append((begin, begin + event.duration_ps, key))
    seconds, covered = _share_time(intervals)
    # The step, not fit()'s set-up: from the first op to the last.
    wall = (max(end for _, end, _ in intervals) - min(start for start, _, _ in intervals)) / 1e12
    categories, layers, op_types = (collections.Counter() for _ in range(3))
    for (category, layer, op_type), value in seconds.items():
        categories[category] += value
        layers[layer] += value
        op_types[op_type] += value
    categories["idle"] = max(0.0, wall - covered)
    return {
        "steps": steps,
        "wall_seconds": wall,
        "categories": {k: v / wall for k, v in categories.most_common()},
        "layers": {k: v / wall for k, v in layers.most_common(8)},
        "op_types": {k: v / wall for k, v in op_types.most_common(8)},
    }


def as_keras_convolutions(model):
    """`model` with autoseg's dilated `Conv2D` / `DepthwiseConv2D` as the Keras layers of the
    same configuration and weights (the dilated convolutions of autoseg before #13)."""
    import keras

    from autoseg import backbones

    return _with_classes(model, {backbones.Conv2D: keras.layers.Conv2D,
                                 backbones.DepthwiseConv2D: keras.layers.DepthwiseConv2D})


def as_keras_batch_norm(model):
    """`model` with `autoseg.batch_norm.BatchNormalization` (trained with the fused kernel)
    as Keras' own layer of the same configuration and weights (autoseg before it)."""
    import keras

    from autoseg.batch_norm import BatchNormalization

    return _with_classes(model, {BatchNormalization: keras.layers.BatchNormalization})


def _with_classes(model, classes: dict):
    """`model` rebuilt with each layer of a class in `classes` as the class it maps to, from
    the same configuration, and the same weights."""
    import keras

    def clone(layer):
        return classes.get(type(layer), type(layer)).from_config(layer.get_config())

    with _policy_of(model):
        rebuilt = keras.models.clone_model(model, clone_function=clone)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _policy_of(model):
    from autoseg import devices

    return devices.dtype_policy(model.dtype_policy.name)


def measure_row(config: dict) -> dict:
    """Everything for one model row.

    Training runs first, in a process that has only built and compiled the model, so that
    the memory growth is training's own.
    """
    import keras
    import tensorflow as tf

    from autoseg import models
    from autoseg.budget import PeakMemory
    from autoseg.losses import get_loss

    from autoseg import devices

    row = {"load_start": os.getloadavg()[0]}
    size, classes, batch = config["size"], config["classes"], config["batch"]
    with devices.dtype_policy(config["precision"]):
        model = models.build(config["name"], classes, (size, size, 3), **config["options"])
        if config["base_key"] in REBUILT_ROWS:
            model = globals()[REBUILT_ROWS[config["base_key"]]](model)
        model.compile(optimizer="adam", loss=get_loss("ce", classes), jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, (batch, size, size)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(tf.data.AUTOTUNE)
    warmup, timed_cap = config["warmup"], config["max_timed_seconds"]
    clocks = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.clock = Clock().__enter__()

        def on_train_batch_end(self, batch, logs=None):
            self.clock.__exit__()
            clocks.append(self.clock)
            timed = clocks[warmup:]
            if len(timed) >= 3 and sum(c.wall for c in timed) > timed_cap:
                self.model.stop_training = True

    with PeakMemory() as peak:
        model.fit(dataset, epochs=1, steps_per_epoch=warmup + config["steps"], verbose=0,
                  callbacks=[StepTimer()])
    row["first_step_seconds"] = clocks[0].wall
    row["step_seconds"] = [c.wall for c in clocks[warmup:]]
    row["step_cpu_seconds"] = [c.cpu for c in clocks[warmup:]]
    row["train_img_s"] = batch / statistics.median(row["step_seconds"])
    row["train_img_cpu_s"] = batch / statistics.median(row["step_cpu_seconds"])
    row["train_memory_bytes"] = int(peak.growth_bytes)
    if config["breakdown"]:
        row["breakdown"] = time_breakdown(model, dataset, steps=BREAKDOWN_STEPS)

    row["params"] = int(model.count_params())
    row["forward_flops"] = forward_flops(model)
    row["train_forward_flops"] = training_forward_flops(model)
    if config["name"] not in SAME_INFERENCE_AS:
        predict_one = tf.function(lambda image: model(image, training=False))
        one = tf.constant(x[:1])
        row["tf_graph_flops"] = tf_graph_flops(
            predict_one.get_concrete_function(tf.TensorSpec(one.shape, tf.float32))
        )
        for _ in range(2):
            predict_one(one).numpy()
        durations, begun = [], time.perf_counter()
        while len(durations) < 5 and (len(durations) < 2 or time.perf_counter() - begun < 10):
            start = time.perf_counter()
            predict_one(one).numpy()
            durations.append(time.perf_counter() - start)
        row["infer_b1_img_s"] = 1 / statistics.median(durations)
        eight = rng.uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        model.predict(eight, batch_size=8, verbose=0)
        start = time.perf_counter()
        model.predict(eight, batch_size=8, verbose=0)
        row["predict_b8_img_s"] = 8 / (time.perf_counter() - start)
    row["peak"] = matmul_peak_gflops()
    row["load_end"] = os.getloadavg()[0]
    return row


def _experiments(batch: int) -> list[tuple[str, Callable[[], list], tuple]]:
    """`(description, make_layers, input_shape)` of the single-layer timings."""
    from keras import layers

    from autoseg.architectures.segnet import MaxPoolingWithArgmax2D, MaxUnpooling2D

    def conv(filters, kernel=3, **kwargs):
        return lambda: [layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                                      **kwargs)]

    def atrous(filters, rate):
        from autoseg import backbones

        return lambda: [backbones.Conv2D(filters, 3, padding="same", use_bias=False,
                                         dilation_rate=rate)]

    def argmax_unpool():
        pool, unpool = MaxPoolingWithArgmax2D(), MaxUnpooling2D()
        return [lambda x: unpool(list(pool(x)))]

    def pool_upsample():
        pool, up = layers.MaxPooling2D(2), layers.UpSampling2D(2, interpolation="nearest")
        return [lambda x: up(pool(x))]

    b = batch
    return [
        ("3x3 conv 64->64 at 256² (unet enc1_conv2)", conv(64), (b, 256, 256, 64)),
        ("3x3 conv 64->64 at 256², channels_first", conv(64, data_format="channels_first"),
         (b, 64, 256, 256)),
        ("3x3 conv 192->64 at 256² (unet dec1_conv1)", conv(64), (b, 256, 256, 192)),
        ("3x3 conv 512->512 at 32² (unet enc4_conv2)", conv(512), (b, 32, 32, 512)),
        ("3x3 conv 16->16 at 256² (light_unet enc1)", conv(16), (b, 256, 256, 16)),
        ("3x3 depthwise at 256²x16 (light_unet)",
         lambda: [layers.DepthwiseConv2D(3, padding="same", use_bias=False)],
         (b, 256, 256, 16)),
        ("BatchNormalization at 256²x64", lambda: [layers.BatchNormalization()],
         (b, 256, 256, 64)),
        ("3x3 conv 2048->256 at 16², rate 1 (ASPP, undilated)", conv(256), (b, 16, 16, 2048)),
        ("3x3 conv 2048->256 at 16², rate 6 (ASPP)", conv(256, dilation_rate=6),
         (b, 16, 16, 2048)),
        ("3x3 conv 2048->256 at 16², rate 12 (ASPP)", conv(256, dilation_rate=12),
         (b, 16, 16, 2048)),
        ("3x3 conv 2048->256 at 16², rate 18 (ASPP)", conv(256, dilation_rate=18),
         (b, 16, 16, 2048)),
        ("autoseg Conv2D 2048->256 at 16², rate 6 (ASPP now)", atrous(256, 6), (b, 16, 16, 2048)),
        ("autoseg Conv2D 2048->256 at 16², rate 12 (ASPP now)", atrous(256, 12),
         (b, 16, 16, 2048)),
        ("autoseg Conv2D 2048->256 at 16², rate 18 (ASPP now: its 1x1 centre tap; FLOPs "
         "counted as 3x3)", atrous(256, 18), (b, 16, 16, 2048)),
        ("3x3 conv 512->512 at 16², rate 2 (resnet50 conv5, os16)", conv(512, dilation_rate=2),
         (b, 16, 16, 512)),
        ("autoseg Conv2D 512->512 at 16², rate 2 (resnet50 conv5 now)", atrous(512, 2),
         (b, 16, 16, 512)),
        ("1x1 conv 256->48 at 64² (deeplab decoder_skip)", conv(48, 1), (b, 64, 64, 256)),
        ("argmax pool + unpool at 256²x64 (segnet)", argmax_unpool, (b, 256, 256, 64)),
        ("max pool + nearest upsampling at 256²x64", pool_upsample, (b, 256, 256, 64)),
    ]


def measure_experiments(config: dict) -> dict:
    """Forward + backward time of single layers (see `_experiments`)."""
    import tensorflow as tf

    results = []
    for description, make_layers, shape in _experiments(config["batch"]):
        stack = make_layers()
        x = tf.random.uniform(shape)

        def forward(inputs):
            for layer in stack:
                inputs = layer(inputs, training=True) if hasattr(layer, "weights") else layer(
                    inputs)
            return inputs

        forward(x)
        weights = [w.value for layer in stack for w in getattr(layer, "trainable_weights", [])]

        @tf.function
        def step(inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(forward(inputs))
            # The loss is returned so that the forward pass runs: the gradients of a sum do
            # not need it, and TensorFlow would prune it.
            return [loss, *tape.gradient(loss, [inputs, *weights])]

        step(x)
        step(x)
        clocks = []
        for _ in range(5):
            with Clock() as clock:
                [g.numpy() for g in step(x)]
            clocks.append(clock)
        macs = shape[0] * sum(_call_macs(layer, shape, layer.compute_output_shape(shape))
                              for layer in stack if hasattr(layer, "kernel_size"))
        results.append({
            "experiment": description,
            "seconds": statistics.median(c.wall for c in clocks),
            "cpu_seconds": statistics.median(c.cpu for c in clocks),
            "flops": 3 * 2 * macs,
        })
    return {"experiments": results, "peak": matmul_peak_gflops(),
            "load_start": config.get("load", 0.0)}


def measure(config: dict) -> dict:
    if config["key"] == "peak":
        return {"load_start": os.getloadavg()[0], "peak": matmul_peak_gflops()}
    if config["key"] == "experiments":
        return measure_experiments(config)
    return measure_row(config)


def measure_in_subprocess(config: dict, timeout: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(config)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {result.returncode}: {tail}"}
    return json.loads(lines[-1])


# --- rows and tables (parent process) ------------------------------------------------------


def rows_to_run(only: str | None, ablations: bool) -> list[tuple[str, str, dict]]:
    """`(key, architecture, options)` of the rows to run, in table order."""
    import autoseg.architectures  # noqa: F401 (registers every architecture)
    from autoseg.registry import ARCHITECTURES

    rows = [(name, name, {}) for name in ARCHITECTURES.names()] + EXTRA_ROWS
    if not only:
        return rows + (ABLATION_ROWS if ablations else [])
    rows += ABLATION_ROWS
    wanted = [token.strip().lower() for token in only.split(",") if token.strip()]
    keys = [key for key, _, _ in rows]
    unknown = [token for token in wanted if token not in keys]
    if unknown:
        sys.exit(f"Error: unknown --only key(s) {', '.join(unknown)}. Valid keys: "
                 f"{', '.join(keys)}.")
    return [row for row in rows if row[0] in wanted]


def label(name: str, options: dict, key: str | None = None) -> str:
    """`name (backbone)` plus the options a row sets beyond it; pix2pix names its parts; a
    rebuilt row (`REBUILT_ROWS`) names its rebuild."""
    from autoseg import models

    spec, merged = models.resolve(name, **options)
    parts = []
    if merged.get("backbone", "none") != "none":
        parts.append(merged["backbone"])
    if "generator" in merged:
        parts.append(f"{merged['generator']} + PatchGAN")
    parts += [f"{k}={v}" for k, v in options.items() if k != "backbone"]
    if key in REBUILT_ROWS:
        parts.append(f"{REBUILT_ROWS[key]}")
    return f"{spec.name} ({', '.join(parts)})" if parts else spec.name


def _gflops(flops: float) -> str:
    return f"{flops / 1e9:.1f}" if flops >= 1e10 else f"{flops / 1e9:.2f}"


def _percent(shares: dict, minimum: float = 0.02, limit: int = 6) -> str:
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(shares.items())[:limit]
                     if v >= minimum)


def main_table(rows: list[dict], peak: float, cpu_peak: float) -> str:
    lines = [
        "| Model | Precision | Parameters | Forward GFLOPs/img | TF graph GFLOPs/img | Train img/s "
        "| Timed steps | Train GFLOP/s | % of peak | Cores busy | % of peak per CPU-second "
        "| Infer b1 img/s | predict b8 img/s | Train memory growth (MiB) | Load at start |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | {row.get('precision', '')} | {row['error']} |"
                         + " |" * 12)
            continue
        train_gflops = 3 * row["train_forward_flops"] * row["train_img_s"] / 1e9
        if "tf_graph_flops" in row:
            graph = _gflops(sum(v for k, v in row["tf_graph_flops"].items()
                                if _KERNEL_OP.search(k)))
            b1, b8 = f"{row['infer_b1_img_s']:.2f}", f"{row['predict_b8_img_s']:.2f}"
        else:
            graph = b1 = b8 = f"as `{SAME_INFERENCE_AS[row['name']]}`"
        busy = statistics.median(row["step_cpu_seconds"]) / statistics.median(
            row["step_seconds"])
        lines.append(
            f"| {row['label']} | {row['precision']} | {row['params']:,} "
            f"| {_gflops(row['forward_flops'])} "
            f"| {graph} | {row['train_img_s']:.2f} | {len(row['step_seconds'])} "
            f"| {train_gflops:.0f} | {100 * train_gflops / peak:.0f}% | {busy:.2f} "
            f"| {100 * _cpu_share(row, cpu_peak):.0f}% | {b1} | {b8} "
            f"| {row['train_memory_bytes'] / 2**20:,.0f} | {row['load_start']:.1f} |"
        )
    return "\n".join(lines)


def precision_table(rows: list[dict], precisions: list[str]) -> str:
    """Per model: train and inference img/s in each precision, and each over the first's."""
    first, others = precisions[0], precisions[1:]
    header = ["Model"] + [f"{what} img/s {p}" for what in ("train", "infer b1", "predict b8")
                          for p in precisions]
    header += [f"{what} {p} / {first}" for p in others for what in ("train", "infer b1",
                                                                     "predict b8")]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    by_model: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for row in rows:
        by_model[row["base_key"]][row["precision"]] = row
    fields = ("train_img_s", "infer_b1_img_s", "predict_b8_img_s")
    for base_key, runs in by_model.items():
        label_ = next(iter(runs.values()))["label"]

        def value(precision, field):
            return runs.get(precision, {}).get(field)

        cells = [f"{value(p, f):.2f}" if value(p, f) else "-" for f in fields for p in precisions]
        for p in others:
            cells += [f"{value(p, f) / value(first, f):.2f}x"
                      if value(p, f) and value(first, f) else "-" for f in fields]
        lines.append(f"| {label_} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_share(row: dict, cpu_peak: float) -> float:
    """Training FLOPs per CPU-second as a share of matmul FLOPs per CPU-second."""
    return 3 * row["train_forward_flops"] * row["train_img_cpu_s"] / 1e9 / cpu_peak


def breakdown_table(rows: list[dict], cpu_peak: float) -> str:
    lines = [
        "| Model | Step time by category | Top layers | Top op types "
        "| Conv kernels at % of peak per CPU-second |",
        "|---|---|---|---|---:|",
    ]
    for row in rows:
        breakdown = row.get("breakdown")
        if not breakdown:
            continue
        categories = breakdown["categories"]
        kernel_share = categories.get("conv kernels", 0) + categories.get("depthwise kernels", 0)
        kernels = _cpu_share(row, cpu_peak) / kernel_share if kernel_share else 0.0
        lines.append(
            f"| {row['label']} | {_percent(categories, limit=8)} "
            f"| {_percent(breakdown['layers'], limit=4)} "
            f"| {_percent(breakdown['op_types'], limit=4)} | {100 * kernels:.0f}% |"
        )
    return "\n".join(lines)


def experiments_table(result: dict, cpu_peak: float) -> str:
    lines = ["| Single layer, forward + backward | ms | CPU-ms | GFLOP per CPU-second "
             "| % of peak per CPU-second |",
             "|---|---:|---:|---:|---:|"]
    for e in result["experiments"]:
        speed = "- | -"
        if e["flops"]:
            gflops = e["flops"] / e["cpu_seconds"] / 1e9
            speed = f"{gflops:.0f} | {100 * gflops / cpu_peak:.0f}%"
        lines.append(f"| {e['experiment']} | {1000 * e['seconds']:.1f} "
                     f"| {1000 * e['cpu_seconds']:.1f} | {speed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0

    selected = rows_to_run(args.only, args.ablations)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        sys.exit(f"Error: --precision {args.precision!r} is unknown. Valid values (comma-"
                 f"separated): {', '.join(PRECISIONS)}.")
    started = time.time()
    load_before = os.getloadavg()
    print(f"python {' '.join(sys.argv)}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}", flush=True)
    peaks = [("start", measure_in_subprocess({"key": "peak"}, args.timeout))]
    results = []
    # Precisions inner: a model's rows run back to back, under the most similar load.
    for (base_key, name, options), precision in itertools.product(selected, precisions):
        key = base_key if len(precisions) == 1 else f"{base_key}@{precision}"
        config = {"key": key, "base_key": base_key, "name": name, "options": options,
                  "precision": precision, "size": args.size,
                  "classes": args.classes, "batch": args.batch, "steps": args.steps,
                  "warmup": args.warmup, "max_timed_seconds": args.max_timed_seconds,
                  "breakdown": not args.no_breakdown}
        begun = time.time()
        row = measure_in_subprocess(config, args.timeout)
        row.update(key=key, base_key=base_key, name=name, precision=precision,
                   label=label(name, options, base_key), batch=args.batch)
        results.append(row)
        print(f"  {key}: {time.time() - begun:.0f} s"
              + (f" ({row['error']})" if "error" in row else ""), flush=True)
        if "peak" in row:
            peaks.append((key, row))
    experiments = None
    if args.experiments:
        begun = time.time()
        experiments = measure_in_subprocess(
            {"key": "experiments", "batch": args.batch, "load": os.getloadavg()[0]},
            args.timeout,
        )
        print(f"  experiments: {time.time() - begun:.0f} s", flush=True)
        if "peak" in experiments:
            peaks.append(("experiments", experiments))
    peaks.append(("end", measure_in_subprocess({"key": "peak"}, args.timeout)))
    load_after = os.getloadavg()

    measured = [(where, r["peak"]) for where, r in peaks if "peak" in r]
    peak = max(max(p["numpy"], p["tf"]) for _, p in measured)
    cpu_peak = max(max(p["numpy_cpu"], p["tf_cpu"]) for _, p in measured)
    print()
    print(f"{args.size}x{args.size}, {args.classes} classes, {', '.join(precisions)}, training batch "
          f"{args.batch}, {args.warmup} warm-up steps then the median of up to {args.steps} "
          f"timed steps, one subprocess per row; the run took "
          f"{(time.time() - started) / 60:.1f} min.")
    print(f"float32 matmul peak ({MATMUL_SIZE}², best of numpy and tf.linalg.matmul, best of "
          f"5 calls): {peak:.0f} GFLOP/s, {cpu_peak:.0f} GFLOP per CPU-second. Per "
          "measurement (GFLOP/s numpy/tf; per CPU-second numpy/tf): "
          + ", ".join(f"{where} {p['numpy']:.0f}/{p['tf']:.0f}; "
                      f"{p['numpy_cpu']:.0f}/{p['tf_cpu']:.0f}" for where, p in measured))
    print(f"Load average before: {' '.join(f'{v:.2f}' for v in load_before)}; after: "
          f"{' '.join(f'{v:.2f}' for v in load_after)}")
    print()
    print(main_table(results, peak, cpu_peak))
    if len(precisions) > 1:
        print()
        print(precision_table(results, precisions))
    if not args.no_breakdown:
        print()
        print(breakdown_table(results, cpu_peak))
    if experiments is not None:
        print()
        print(experiments_table(experiments, cpu_peak) if "experiments" in experiments
              else f"experiments: {experiments['error']}")
    if args.json:  # whole or not at all
        temporary = f"{args.json}.tmp"
        with open(temporary, "w") as f:
            json.dump({"peak": peak, "cpu_peak": cpu_peak, "peaks": measured,
                       "rows": results, "experiments": experiments}, f, indent=1)
        os.replace(temporary, args.json)
    return 1 if any("error" in row for row in results) else 0


if __name__ == "__main__":
    sys.exit(main())
