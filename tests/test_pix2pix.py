"""pix2pix: registration, one adversarial training epoch, metrics, `.keras` round trips."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from autoseg import metrics, models
from autoseg.architectures.pix2pix import Pix2Pix
from autoseg.errors import ConfigError
from autoseg.losses import CrossEntropyLoss, get_loss
from autoseg.registry import ARCHITECTURES
from test_registry import register_toy_family

CLASSES = ["background", "crop", "weed"]
SHAPE = (32, 32, 3)
TINY = dict(generator_options={"depth": 3, "filters": 8}, disc_filters=8, disc_layers=2)


def _data(seed=0, n=4):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n,) + SHAPE).astype(np.float32)
    y = rng.integers(0, 3, (n,) + SHAPE[:2])
    y[:, :4] = 255
    return x, y


def _build_compiled():
    keras.utils.set_random_seed(0)
    model = models.build("pix2pix", 3, SHAPE, **TINY)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=get_loss("ce", 3),
        metrics=metrics.segmentation_metrics(CLASSES),
        jit_compile=False,
    )
    return model


@pytest.fixture(scope="module")
def trained():
    """A tiny pix2pix after one epoch (2 steps) with validation data."""
    model = _build_compiled()
    x, y = _data()
    disc_before = [v.numpy().copy() for v in model.discriminator.trainable_variables]
    gen_before = [v.numpy().copy() for v in model.generator.trainable_variables]
    history = model.fit(
        x[:2], y[:2], batch_size=1, epochs=1, validation_data=(x[2:], y[2:]), verbose=0
    )
    return model, history.history, disc_before, gen_before, (x, y)


def test_registered_with_defaults_alias_and_generator_divisor():
    spec = ARCHITECTURES.get("pix2pix")
    assert spec.family == "pix2pix"
    assert dict(spec.defaults) == {
        "generator": "unet",
        "generator_options": None,
        "lambda_seg": 100.0,
        "disc_filters": 64,
        "disc_layers": 3,
    }
    assert set(spec.choices["generator"]) == {"unet", "segnet", "deeplabv3plus", "light_unet"}
    alias_spec, preset = ARCHITECTURES.resolve("pix2pixunet")
    assert alias_spec is spec and preset == {"generator": "unet"}
    assert models.input_divisor("pix2pix", generator_options={"depth": 3}) == 8
    assert models.input_divisor("pix2pix") == models.input_divisor("unet") == 16


def test_alias_builds_a_unet_generator():
    model = models.build("pix2pixunet", 3, SHAPE, **TINY)
    assert isinstance(model, Pix2Pix)
    assert model.generator.name == "unet"
    assert model.discriminator.output_shape == (None, 8, 8, 1)  # 32 / 2**disc_layers


GENERATORS = {
    "unet": {"depth": 3, "filters": 8},
    "segnet": {"depth": 3, "filters": 8},
    "deeplabv3plus": {"backbone": "tiny", "aspp_filters": 8, "decoder_filters": 8},
    "light_unet": {"depth": 3, "filters": 8},
}


def test_the_generators_are_the_registered_architectures_of_other_families():
    assert set(GENERATORS) == set(ARCHITECTURES.get("pix2pix").choices["generator"])


def test_an_architecture_registered_later_is_a_generator(monkeypatch):
    # A family registered at run time (as a user's own file would) joins the choices.
    register_toy_family(monkeypatch)
    assert "toy_seg" in ARCHITECTURES.get("pix2pix").choices["generator"]
    toy = {"generator": "toy_seg", "generator_options": {"depth": 2}}
    model = models.build("pix2pix", 3, SHAPE, **toy, disc_filters=8, disc_layers=2)
    assert model.generator.name == "toy_seg"
    assert model(np.zeros((1,) + SHAPE, np.float32)).shape == (1, 32, 32, 3)
    assert models.input_divisor("pix2pix", **toy) == 4


def test_pix2pix_is_not_its_own_generator():
    with pytest.raises(ConfigError, match="Invalid generator .*'segnet', 'unet'") as info:
        models.build("pix2pix", 3, SHAPE, generator="pix2pix")
    assert "'pix2pix'." not in str(info.value).split("Valid values:")[1]


@pytest.mark.parametrize("generator", sorted(GENERATORS), ids=sorted(GENERATORS))
def test_every_generator_builds_with_its_divisor(generator):
    options = GENERATORS[generator]
    model = models.build(
        "pix2pix", 3, SHAPE, generator=generator, generator_options=options,
        disc_filters=8, disc_layers=2,
    )
    assert model.generator.name == generator
    assert model(np.zeros((1,) + SHAPE, np.float32)).shape == (1, 32, 32, 3)
    assert models.input_divisor(
        "pix2pix", generator=generator, generator_options=options
    ) == models.input_divisor(generator, **options)


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["segnet", "deeplabv3plus"])
def test_other_generators_train_and_round_trip(generator, tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build(
        "pix2pix", 3, SHAPE, generator=generator, generator_options=GENERATORS[generator],
        disc_filters=8, disc_layers=2,
    )
    model.compile(optimizer="adam", loss=get_loss("dice", 3),
                  metrics=metrics.segmentation_metrics(CLASSES), jit_compile=False)
    x, y = _data(n=2)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    assert all(math.isfinite(history[k][0]) for k in ("loss", "seg_loss", "d_loss", "mean_iou"))
    model.save(tmp_path / "p.keras")
    revived = keras.saving.load_model(tmp_path / "p.keras", safe_mode=True)
    np.testing.assert_allclose(
        revived.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "options, match",
    [
        ({"lambda_seg": 0.0}, "lambda_seg must be a number > 0"),
        ({"disc_layers": 0}, "disc_layers must be an integer >= 1"),
        ({"generator": "pix2pix"}, "Invalid generator"),
        ({"generator_options": {"depth": 3, "colour": 1}}, "pix2pix generator 'unet'.*colour"),
    ],
)
def test_bad_options_raise_config_error(options, match):
    with pytest.raises(ConfigError, match=match):
        models.build("pix2pix", 3, SHAPE, **{**TINY, **options})


def test_one_epoch_logs_finite_losses_that_add_up(trained):
    _, history, _, _, _ = trained
    for prefix in ("", "val_"):
        for key in ("loss", "seg_loss", "g_adv_loss", "d_loss", "mean_iou", "iou_weed"):
            assert math.isfinite(history[prefix + key][0]), prefix + key
        # loss = g_adv_loss + lambda_seg * seg_loss (epoch means of a linear combination).
        assert history[prefix + "loss"][0] == pytest.approx(
            history[prefix + "g_adv_loss"][0] + 100.0 * history[prefix + "seg_loss"][0], rel=1e-5
        )


def test_both_networks_train_with_their_own_optimizers(trained):
    model, _, disc_before, gen_before, _ = trained
    for before, variables in (
        (disc_before, model.discriminator.trainable_variables),
        (gen_before, model.generator.trainable_variables),
    ):
        changed = [not np.allclose(b, v.numpy()) for b, v in zip(before, variables)]
        assert sum(changed) > len(changed) // 2
    assert int(model.disc_optimizer.iterations) == 2
    assert int(model.optimizer.iterations) == 2
    # Adam: iterations, learning rate and two slots per generator weight, none for the critic.
    assert len(model.optimizer.variables) == 2 + 2 * len(model.generator.trainable_variables)


def test_call_is_the_generator_and_metrics_are_its(trained):
    model, history, _, _, (x, y) = trained
    probabilities = model.predict(x[2:], verbose=0)
    assert probabilities.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities, model.generator.predict(x[2:], verbose=0))
    scores = metrics.scores_from_confusion(metrics.confusion_matrix(y[2:], probabilities, 3))
    assert history["val_mean_iou"][0] == pytest.approx(scores["mean_iou"], rel=1e-5)
    assert model.inference_model is model.generator
    assert model.export_model() is model.generator


def test_critic_inputs_mask_ignored_pixels_in_real_and_fake():
    model = models.build("pix2pix", 3, SHAPE, **TINY)
    x, y = _data(n=1)
    probabilities = model.generator(x)
    real, fake = (np.asarray(t) for t in model._critic_inputs(y, probabilities))
    ignored = y == 255
    assert (real[ignored] == 0).all() and (fake[ignored] == 0).all()
    np.testing.assert_array_equal(real[~ignored], np.eye(3)[y[~ignored]])
    np.testing.assert_allclose(fake[~ignored], np.asarray(probabilities)[~ignored])


def test_generator_alone_round_trips_as_a_plain_model(trained, tmp_path):
    model, _, _, _, (x, _) = trained
    model.inference_model.save(tmp_path / "generator.keras")
    revived = keras.saving.load_model(tmp_path / "generator.keras", safe_mode=True)
    assert not isinstance(revived, Pix2Pix)
    np.testing.assert_allclose(
        revived.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_whole_pix2pix_round_trips_with_critic_and_its_optimizer(trained, tmp_path):
    model, history, _, _, (x, y) = trained
    model.save(tmp_path / "pix2pix.keras")
    revived = keras.saving.load_model(tmp_path / "pix2pix.keras", safe_mode=True)
    assert isinstance(revived, Pix2Pix) and revived.lambda_seg == 100.0
    assert isinstance(revived.loss, CrossEntropyLoss)
    np.testing.assert_allclose(
        revived.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    for a, b in zip(revived.discriminator.variables, model.discriminator.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(revived.disc_optimizer.iterations) == 2
    for a, b in zip(revived.disc_optimizer.variables, model.disc_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Validation ran after the last step, so it saw the saved weights: evaluating the
    # revived model (compiled from the file) on the same data must repeat it.
    result = revived.evaluate(x[2:], y[2:], batch_size=1, verbose=0, return_dict=True)
    for key in ("loss", "seg_loss", "g_adv_loss", "d_loss", "mean_iou", "iou_crop"):
        assert result[key] == pytest.approx(history["val_" + key][0], rel=1e-5), key
