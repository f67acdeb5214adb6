"""pix2pix for segmentation: a segmentation generator trained with a PatchGAN critic.

Isola et al. (2017) train an image-to-image generator with a conditional PatchGAN
discriminator plus an L1 term; here the generator is any registered segmentation model
outside this family (`generators()`), its output is the class-probability map, and the L1 term
is the compiled segmentation loss (Luc et al., 2016, "Semantic Segmentation using
Adversarial Networks"). The discriminator sees (image, mask) pairs: real pairs carry the
one-hot target, fake pairs the generator's probabilities.

What a trained `Pix2Pix` predicts with, saves for inference and exports is its generator
alone (`Pix2Pix.inference_model`): a plain segmentation model.

`lambda_seg` defaults to 100, pix2pix's weight of its L1 term: the segmentation loss (about
0.1-2 nats per pixel for cross-entropy) then outweighs the adversarial loss (about 0.7) by
two orders of magnitude, so the adversarial term shapes the masks without trading accuracy
for realism. Adam, used for both networks, is insensitive to the overall scale of the
generator loss, so only this ratio matters.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from autoseg import builder
from autoseg.errors import ConfigError
from autoseg.losses import replica_share
from autoseg.registry import ARCHITECTURES, register_architecture, register_architecture_alias


def generators() -> tuple[str, ...]:
    """The architectures a pix2pix can train as its generator: every registered one outside
    the pix2pix family, as registered now (a family registered later is one too)."""
    return tuple(name for name in ARCHITECTURES.names()
                 if ARCHITECTURES.get(name).family != "pix2pix")


def build_patchgan(
    image_shape: tuple[int, int, int],
    num_classes: int,
    filters: int = 64,
    num_layers: int = 3,
    name: str = "patchgan",
) -> keras.Model:
    """The pix2pix PatchGAN critic on (image, mask) pairs; outputs one logit per patch.

    With `num_layers = 3` this is pix2pix's 70x70 PatchGAN: `num_layers` stride-2 4x4
    convolutions (widths filters, 2x, 4x, ... capped at 8x), one stride-1 convolution and a
    1-channel stride-1 convolution. Instance normalisation (not batch normalisation) keeps the
    critic independent of the batch size the search draws. The image is standardised per
    image and channel first, so the critic does not depend on the pipeline's pixel range.

    Args:
        image_shape: `(H, W, channels)` of the images.
        num_classes: Channels of the mask input.
        filters: Width of the first convolution. Defaults to 64.
        num_layers: Number of stride-2 convolutions. Defaults to 3.
        name: Model name. Defaults to "patchgan".

    Returns:
        A functional model `[image, mask] -> logits (B, H / 2**num_layers, W / 2**num_layers, 1)`.
    """
    image = keras.Input(shape=tuple(image_shape), name=f"{name}_image")
    mask = keras.Input(shape=tuple(image_shape[:2]) + (num_classes,), name=f"{name}_mask")
    x = layers.GroupNormalization(groups=-1, epsilon=1e-3, name=f"{name}_image_norm")(image)
    x = layers.Concatenate(name=f"{name}_pair")([x, mask])
    for i in range(num_layers + 1):
        stride = 2 if i < num_layers else 1
        x = layers.Conv2D(
            filters * min(2**i, 8), 4, strides=stride, padding="same", name=f"{name}_conv{i + 1}"
        )(x)
        if i > 0:  # pix2pix leaves the first block unnormalised.
            x = layers.GroupNormalization(groups=-1, epsilon=1e-3, name=f"{name}_norm{i + 1}")(x)
        x = layers.LeakyReLU(0.2, name=f"{name}_relu{i + 1}")(x)
    logits = layers.Conv2D(1, 4, padding="same", dtype="float32", name=f"{name}_logits")(x)
    return keras.Model([image, mask], logits, name=name)


@keras.saving.register_keras_serializable(package="autoseg")
class Pix2Pix(keras.Model):
    """A segmentation generator trained against a PatchGAN discriminator.

    Behaves like the generator for `call`, `predict`, `evaluate` and the compiled metrics:
    `call(x)` returns the generator's `(B, H, W, C)` probabilities. Compile it like a plain
    model; the compiled optimizer and loss are the generator's. `train_step` also trains the
    discriminator with its own `Adam(disc_learning_rate, beta_1=0.5)`.

    Losses, per batch (BCE on the critic's patch logits, mean over patches):
    - `d_loss = (BCE(1, D(x, real)) + BCE(0, D(x, fake))) / 2`,
    - `g_adv_loss = BCE(1, D(x, fake))`,
    - `seg_loss` = the compiled loss on the generator's probabilities,
    - `loss = g_adv_loss + lambda_seg * seg_loss` (+ the generator's regularisation losses),
      what the generator minimises. `val_seg_loss`, not `val_loss`, compares with a plain
      model's `val_loss`.
    `real` is the one-hot target and `fake` the probabilities, both zeroed on ignored pixels,
    so the critic cannot tell them apart by where labels are missing.

    Args:
        generator: A segmentation model `(B, H, W, 3) -> (B, H, W, C)` probabilities.
        discriminator: A model `[image, mask] -> patch logits`, e.g. `build_patchgan`.
        lambda_seg: Weight of the segmentation loss. Defaults to 100.
        disc_learning_rate: Learning rate of the discriminator's Adam. Defaults to 2e-4.
        ignore_index: Label value masked out of the critic's inputs. Defaults to 255.
        name: Model name. Defaults to "pix2pix".

    Example:
    ```python
    model = autoseg.models.build("pix2pix", 3, (64, 64, 3), generator="unet")
    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
                  loss=get_loss("ce", 3), metrics=segmentation_metrics(classes))
    model.fit(train, validation_data=val)
    model.inference_model.save("model.keras")  # the generator alone
    ```
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        lambda_seg: float = 100.0,
        disc_learning_rate: float = 2e-4,
        ignore_index: int = 255,
        name: str = "pix2pix",
        **kwargs,
    ):
        inputs = keras.Input(shape=tuple(generator.input_shape[1:]), name=f"{name}_input")
        outputs = generator(inputs)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.lambda_seg = float(lambda_seg)
        self.disc_learning_rate = float(disc_learning_rate)
        self.ignore_index = int(ignore_index)
        self.num_classes = int(generator.output_shape[-1])
        self.disc_optimizer = keras.optimizers.Adam(
            self.disc_learning_rate, beta_1=0.5, name="disc_optimizer"
        )
        if any(layer.compute_dtype == "float16" for layer in discriminator.layers):
            # What compile() does for the generator's optimizer under mixed_float16. Read
            # from the critic's layers, which a saved model restores, not the global policy.
            self.disc_optimizer = keras.optimizers.LossScaleOptimizer(
                self.disc_optimizer, name="disc_loss_scale_optimizer"
            )
        # Built here, outside any traced function, so that its state exists before training
        # and loads back from a saved file.
        self.disc_optimizer.build(discriminator.trainable_variables)
        self.seg_loss_tracker = keras.metrics.Mean(name="seg_loss")
        self.g_adv_loss_tracker = keras.metrics.Mean(name="g_adv_loss")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")

    @property
    def inference_model(self) -> keras.Model:
        """The generator alone: the plain segmentation model to predict with and export."""
        return self.generator

    @property
    def training_passes(self) -> list[tuple[keras.Model, int]]:
        """What a training step runs besides the generator (`autoseg.model_contract`): the
        discriminator, twice (on the real pair and on the generated one)."""
        return [(self.discriminator, 2)]

    def export_model(self) -> keras.Model:
        """Returns `inference_model`, the generator, for saving and export."""
        return self.generator

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`; the optimizer is built for the generator's weights only
        (by default Keras would also give it slots for the discriminator's)."""
        super().compile(*args, **kwargs)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.generator.trainable_variables)

    def compile_from_config(self, config):
        # Keras skips compile() on load for models that override it, unless this is defined.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _critic_inputs(self, y, probabilities):
        """The real (one-hot) and fake (probabilities) masks, zeroed on ignored pixels."""
        if len(y.shape) == len(probabilities.shape):
            y = ops.squeeze(y, axis=-1)
        labels = ops.cast(y, "int32")
        valid = ops.logical_and(
            ops.not_equal(labels, self.ignore_index),
            ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, self.num_classes)),
        )
        valid = ops.cast(valid, "float32")[..., None]
        real = ops.one_hot(ops.where(valid[..., 0] > 0, labels, 0), self.num_classes) * valid
        fake = ops.cast(probabilities, "float32") * valid
        return real, fake

    @staticmethod
    def _bce(target: float, logits):
        return replica_share(ops.mean(
            ops.binary_crossentropy(ops.full_like(logits, target), logits, from_logits=True)
        ))

    def _forward(self, x, y, sample_weight, training):
        """Forward pass of both networks; returns probabilities and the four losses.

        Under a `tf.distribute` strategy the losses are this replica's share
        (`autoseg.losses.replica_share`, as the compiled loss is), since the replicas'
        gradients are summed; `_track` reports them multiplied back.
        """
        probabilities = self.generator(x, training=training)
        seg_loss = self._compile_loss(y, probabilities, sample_weight)
        real, fake = self._critic_inputs(y, probabilities)
        real_logits = self.discriminator([x, real], training=training)
        fake_logits = self.discriminator([x, fake], training=training)
        g_adv_loss = self._bce(1.0, fake_logits)
        d_loss = 0.5 * (self._bce(1.0, real_logits) + self._bce(0.0, fake_logits))
        g_loss = g_adv_loss + self.lambda_seg * seg_loss
        regularisation = self.generator.losses
        if regularisation:
            penalty = ops.sum(ops.stack([ops.sum(r) for r in regularisation]))
            g_loss = g_loss + replica_share(penalty)
        return probabilities, g_loss, seg_loss, g_adv_loss, d_loss

    def _track(self, x, g_loss, seg_loss, g_adv_loss, d_loss):
        batch_size = ops.shape(x)[0]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self._loss_tracker.update_state(g_loss * replicas, sample_weight=batch_size)
        self.seg_loss_tracker.update_state(seg_loss * replicas, sample_weight=batch_size)
        self.g_adv_loss_tracker.update_state(g_adv_loss * replicas, sample_weight=batch_size)
        self.d_loss_tracker.update_state(d_loss * replicas, sample_weight=batch_size)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = ops.convert_to_tensor(x)  # eager steps may hand over numpy arrays
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            probabilities, g_loss, seg_loss, g_adv_loss, d_loss = self._forward(
                x, y, sample_weight, training=True
            )
            scaled_g_loss = self.optimizer.scale_loss(g_loss)
            scaled_d_loss = self.disc_optimizer.scale_loss(d_loss)
        g_vars = self.generator.trainable_variables
        self.optimizer.apply_gradients(zip(g_tape.gradient(scaled_g_loss, g_vars), g_vars))
        d_vars = self.discriminator.trainable_variables
        self.disc_optimizer.apply_gradients(zip(d_tape.gradient(scaled_d_loss, d_vars), d_vars))
        self._track(x, g_loss, seg_loss, g_adv_loss, d_loss)
        return self.compute_metrics(x, y, probabilities, sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = ops.convert_to_tensor(x)
        probabilities, g_loss, seg_loss, g_adv_loss, d_loss = self._forward(
            x, y, sample_weight, training=False
        )
        self._track(x, g_loss, seg_loss, g_adv_loss, d_loss)
        return self.compute_metrics(x, y, probabilities, sample_weight=sample_weight)

    def get_config(self):
        return {
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "lambda_seg": self.lambda_seg,
            "disc_learning_rate": self.disc_learning_rate,
            "ignore_index": self.ignore_index,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("generator", "discriminator"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)


def _generator_spec(options) -> tuple:
    """`(spec, options)` of the generator an options dict names, defaults filled in."""
    generator, valid = options.get("generator", "unet"), generators()
    if not isinstance(generator, str) or generator.lower() not in valid:
        raise ConfigError(
            f"pix2pix generator must be one of {', '.join(valid)}. "
            f"Received: generator={generator!r}."
        )
    generator_options = options.get("generator_options") or {}
    if not isinstance(generator_options, dict):
        raise ConfigError(
            "pix2pix generator_options must be a mapping of the generator's options. "
            f"Received: generator_options={generator_options!r}."
        )
    spec, preset = ARCHITECTURES.resolve(generator)
    return spec, {**spec.defaults, **preset, **generator_options}


def _input_divisor(options) -> int:
    spec, generator_options = _generator_spec(options)
    return spec.input_divisor(generator_options)


@register_architecture(
    "pix2pix",
    family="pix2pix",
    choices={"generator": generators},
    input_divisor=_input_divisor,
    description="Conditional GAN: a segmentation generator trained with a PatchGAN critic.",
)
def build_pix2pix(
    num_classes: int,
    input_shape: tuple[int, int, int],
    generator: str = "unet",
    generator_options: dict | None = None,
    lambda_seg: float = 100.0,
    disc_filters: int = 64,
    disc_layers: int = 3,
) -> Pix2Pix:
    """Builds a `Pix2Pix` around a registered segmentation generator.

    Args:
        num_classes: Number of classes C.
        input_shape: `(H, W, 3)`; H and W multiples of the generator's input divisor.
        generator: A registered architecture outside the pix2pix family (`generators()`):
            "unet", "segnet", "deeplabv3plus", "light_unet", ... Defaults to "unet".
        generator_options: Options passed to the generator's builder. Defaults to {}.
        lambda_seg: Weight of the segmentation loss (see the module docstring).
            Defaults to 100.
        disc_filters: Width of the discriminator's first convolution. Defaults to 64.
        disc_layers: Stride-2 convolutions in the discriminator. Defaults to 3.

    Returns:
        A `Pix2Pix` model; compile it like a plain segmentation model.

    Raises:
        ConfigError: an unknown generator or a bad option.
    """
    spec, _ = _generator_spec(
        {"generator": generator, "generator_options": generator_options}
    )
    if not isinstance(lambda_seg, (int, float)) or isinstance(lambda_seg, bool) or lambda_seg <= 0:
        raise ConfigError(f"pix2pix lambda_seg must be a number > 0. Received: {lambda_seg!r}.")
    for key, value, low in (("disc_filters", disc_filters, 1), ("disc_layers", disc_layers, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"pix2pix {key} must be an integer >= {low}. Received: {value!r}.")
    try:
        generator_model = builder.build(
            spec.name, num_classes, tuple(input_shape), **(generator_options or {})
        )
    except ConfigError as error:
        raise ConfigError(f"pix2pix generator {spec.name!r}: {error}") from error
    discriminator = build_patchgan(
        tuple(input_shape), num_classes, disc_filters, disc_layers, name="pix2pix_disc"
    )
    return Pix2Pix(generator_model, discriminator, lambda_seg=lambda_seg, name="pix2pix")


register_architecture_alias("pix2pixunet", "pix2pix", generator="unet")
