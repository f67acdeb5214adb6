"""`BatchNormalization`: Keras' layer, trained with TensorFlow's fused kernel.

Keras 3 computes a training step's batch normalization on TensorFlow as separate ops (the
moments as two reductions, then the normalization and their gradients op by op), each a
pass over the activation in memory. TensorFlow's `FusedBatchNormV3` and its gradient do it
in one pass each way, and read bfloat16 activations as they are. On a 2-core AMD EPYC with
`avx512_bf16` (benchmarks/RESULTS.md, "Batch normalization with the fused kernel"), the
fused layer trains the 32-filter U-Net 1.16x faster in float32 and 1.29x in mixed bfloat16,
SegNet 1.09x / 1.36x, U-Net on ResNet-50 1.11x / 1.18x, and light_unet, whose depthwise and
pointwise convolutions are cheap beside their normalizations, 1.69x / 2.40x.

The layer is Keras' `BatchNormalization` with the same constructor, config, variables and
class name (weight files address layers by class name, so checkpoints load either way).
Only the training-mode forward pass changes, and only where the fused kernel computes what
Keras does: the TensorFlow backend, the channel axis last, a 4-D input, no mask, no
renormalization or cross-replica statistics. It normalizes by the batch's (biased)
variance as Keras does, and updates the moving statistics with Keras' rule and Keras'
biased variance (the kernel returns Bessel's corrected one, which is undone). Inference and
everything else run Keras' own code, so exported graphs are unchanged.
"""

from __future__ import annotations

import keras
from keras import layers, ops


#: The smallest epsilon TensorFlow's fused kernel accepts (it raises smaller ones to it).
MIN_EPSILON = 1.001e-5


def _fusable(layer: layers.BatchNormalization, inputs, mask) -> bool:
    axis = layer.axis if isinstance(layer.axis, int) else None
    return (keras.backend.backend() == "tensorflow" and mask is None and not layer.renorm
            and not layer.synchronized and len(inputs.shape) == 4 and axis in (-1, 3)
            and layer.epsilon >= MIN_EPSILON)


@keras.saving.register_keras_serializable(package="autoseg")
class BatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, trained with TensorFlow's fused kernel (module doc)."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and _fusable(self, inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = int(inputs.shape[-1])
        # The kernel reads 16-bit inputs as they are and computes its statistics in float32,
        # as Keras does after casting them up (a third less memory traffic in bfloat16).
        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else ops.cast(
            inputs, "float32")
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = variance * (count - 1.0) / tf.maximum(count, 2.0)  # Keras' biased variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(y, self.compute_dtype)
