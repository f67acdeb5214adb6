"""The architecture contract (`autoseg.model_contract`): what autoseg reads from a model."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from autoseg import budget, model_contract, models  # noqa: E402


def test_a_plain_model_predicts_as_itself_and_trains_nothing_else():
    model = models.build("unet", 3, (32, 32, 3), depth=3, filters=4)
    assert model_contract.inference_model(model) is model
    assert model_contract.training_passes(model) == []
    assert model_contract.backbone_of(model) is None
    on_backbone = models.build("unet", 3, (32, 32, 3), depth=3, filters=4,
                               backbone="mobilenetv2")
    assert model_contract.backbone_of(on_backbone) == "mobilenetv2"


def test_pix2pix_declares_its_generator_and_its_critic():
    model = models.build("pix2pix", 3, (32, 32, 3), generator="unet",
                         generator_options={"depth": 3, "filters": 4}, disc_filters=4,
                         disc_layers=1)
    assert model_contract.inference_model(model) is model.generator
    assert model_contract.training_passes(model) == [(model.discriminator, 2)]
    # The memory estimate counts the critic's two passes: more than the generator alone.
    alone = budget.estimate_training_memory(model.generator, 2).activation_elements
    assert budget.estimate_training_memory(model, 2).activation_elements > alone


def test_a_model_of_ones_own_joins_the_contract_by_its_two_attributes():
    inner = models.build("unet", 3, (32, 32, 3), depth=3, filters=4)

    class Wrapper:
        inference_model = inner
        training_passes = ((inner, 3),)

    assert model_contract.inference_model(Wrapper()) is inner
    assert model_contract.training_passes(Wrapper()) == [(inner, 3)]

    class PredictsOnly:  # each attribute stands alone
        inference_model = inner

    assert model_contract.inference_model(PredictsOnly()) is inner
    assert model_contract.training_passes(PredictsOnly()) == []
