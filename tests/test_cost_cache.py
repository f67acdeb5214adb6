"""autoseg.cost_cache: model measurements reused across searches, never across a change."""

from __future__ import annotations

import dataclasses
import json

import pytest

from autoseg import cost_cache, speed

TINY = [("unet", {"depth": 3, "filters": 4, "backbone": "none"}),
        ("light_unet", {"depth": 3, "filters": 8})]


@pytest.fixture
def builds(monkeypatch):
    """Counts the models `measure_models` builds (it still builds them)."""
    calls = []
    real = speed._measure_model
    monkeypatch.setattr(speed, "_measure_model",
                        lambda *args: calls.append(args[0]) or real(*args))
    return calls


def test_a_second_search_builds_nothing_and_gets_the_same_measurements(tmp_path, builds):
    path = tmp_path / "costs.json"
    first = speed.measure_models(TINY, 3, cache=cost_cache.CostCache(path))
    assert builds == ["unet", "light_unet"] and path.is_file()
    cache = cost_cache.CostCache(path)
    second = speed.measure_models(TINY, 3, cache=cache)
    assert builds == ["unet", "light_unet"]  # nothing built again
    assert cache.hits == 2
    assert [dataclasses.asdict(c) for c in second] == [dataclasses.asdict(c) for c in first]


@pytest.mark.parametrize("change", ["classes", "channels", "precision", "code"])
def test_anything_a_measurement_depends_on_misses_the_cache(tmp_path, builds, monkeypatch,
                                                             change):
    path = tmp_path / "costs.json"
    speed.measure_models(TINY[:1], 3, cache=cost_cache.CostCache(path))
    kwargs = {"num_classes": 3}
    if change == "classes":
        kwargs["num_classes"] = 4
    elif change == "channels":
        kwargs["channels"] = 1
    elif change == "precision":
        kwargs["precision_of"] = lambda name: "mixed_bfloat16"
    else:
        monkeypatch.setattr(cost_cache, "code_digest", lambda: "another version")
    cache = cost_cache.CostCache(path)
    speed.measure_models(TINY[:1], cache=cache, **kwargs)
    assert builds == ["unet", "unet"] and cache.hits == 0
    assert len(json.loads(path.read_text())["entries"]) == 2


def test_an_unreadable_cache_counts_as_empty_and_is_rewritten(tmp_path, builds):
    path = tmp_path / "costs.json"
    path.write_text("{not json")
    speed.measure_models(TINY[:1], 3, cache=cost_cache.CostCache(path))
    assert builds == ["unet"]
    assert len(json.loads(path.read_text())["entries"]) == 1


def test_the_cache_file_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSEG_MODEL_CACHE", "off")
    assert cost_cache.cache_path() is None
    cache = cost_cache.CostCache.default()
    cache.put("k", {"x": 1})
    cache.save()  # nothing to write to
    assert cache.get("k") is None
    monkeypatch.setenv("AUTOSEG_MODEL_CACHE", str(tmp_path / "c.json"))
    assert cost_cache.cache_path() == tmp_path / "c.json"
    monkeypatch.delenv("AUTOSEG_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cost_cache.cache_path() == tmp_path / "xdg" / "autoseg" / "model_costs.json"


def test_the_oldest_entries_go_first(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_cache, "MAX_ENTRIES", 3)
    path = tmp_path / "costs.json"
    cache = cost_cache.CostCache(path)
    for i in range(5):
        cache.put(f"k{i}", {"i": i})
    cache.put("k2", {"i": 2})  # used again: newest
    cache.save()
    assert list(json.loads(path.read_text())["entries"]) == ["k3", "k4", "k2"]
