"""Class names from mask colours: the named-colour table, CIELAB distance, unique names."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from autoseg.data import masks
from autoseg.data.color_names import (
    NAMED_COLORS,
    color_class_names,
    nearest_color_name,
    rgb_to_lab,
)
from autoseg.data.sources import prepare


def write_colour_pair(root, stem, rgb):
    """images/<stem>.png (grey) and masks/<stem>.png (the RGB array)."""
    rgb = np.asarray(rgb, np.uint8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.new("RGB", rgb.shape[1::-1], (90, 90, 90)).save(root / "images" / f"{stem}.png")
    Image.fromarray(rgb).save(root / "masks" / f"{stem}.png")


@pytest.mark.parametrize("color, name", [
    ((0, 255, 0), "green"), ((255, 0, 0), "red"), ((0, 0, 255), "blue"),
    ((255, 255, 0), "yellow"), ((255, 255, 255), "white"), ((0, 255, 255), "cyan"),
    ((255, 0, 255), "magenta"), ((128, 128, 128), "grey"), ((128, 0, 0), "dark_red"),
], ids=lambda v: str(v))
def test_basic_colours_get_their_exact_names(color, name):
    assert nearest_color_name(color) == (name, 0.0)


def test_every_table_colour_is_its_own_nearest_and_names_have_no_suffix_form():
    for name, color in NAMED_COLORS.items():
        assert nearest_color_name(color) == (name, 0.0)
        assert not name.rsplit("_", 1)[-1].isdigit()  # `green_2` can only be a suffixed name
    assert len(set(NAMED_COLORS.values())) == len(NAMED_COLORS)


def test_lab_matches_reference_values():
    lab = rgb_to_lab([(255, 255, 255), (255, 0, 0), (0, 0, 0)])
    np.testing.assert_allclose(lab, [[100, 0, 0], [53.24, 80.09, 67.20], [0, 0, 0]], atol=0.01)


@pytest.mark.parametrize("color, name", [
    ((250, 5, 10), "red"), ((0, 200, 0), "green"), ((0, 100, 0), "dark_green"),
    ((9, 9, 9), "black"), ((255, 128, 0), "orange"), ((160, 82, 45), "brown"),
], ids=lambda v: str(v))
def test_other_colours_take_the_nearest_name(color, name):
    got, distance = nearest_color_name(color)
    assert got == name and 0 < distance < 30


def test_distance_is_perceptual_not_rgb():
    darkolivegreen = (85, 107, 47)
    in_rgb = min(NAMED_COLORS, key=lambda n: sum((a - b) ** 2 for a, b in
                                                 zip(NAMED_COLORS[n], darkolivegreen)))
    assert in_rgb == "dark_grey"
    assert nearest_color_name(darkolivegreen)[0] == "olive"


def test_shared_names_are_suffixed_nearest_first_whatever_the_order():
    colors = [(0, 250, 0), (0, 255, 0), (255, 0, 0), (0, 230, 0)]
    assert color_class_names(colors) == ["green_2", "green", "red", "green_3"]
    expected = dict(zip(colors, color_class_names(colors)))
    for order in itertools.permutations(colors):
        assert dict(zip(order, color_class_names(list(order)))) == expected


def test_discovered_palette_names_colours_black_is_background(tmp_path):
    write_colour_pair(tmp_path / "a", "m", [[[0, 0, 0], [0, 250, 0], [0, 255, 0], [255, 255, 0]]])
    palette = masks.discover_palette(masks.find_pairs(tmp_path / "a"))
    assert palette.colors == [(0, 0, 0), (0, 250, 0), (0, 255, 0), (255, 255, 0)]
    assert palette.classes == ["background", "green_2", "green", "yellow"]
    write_colour_pair(tmp_path / "b", "m", [[[255, 255, 255], [0, 0, 255]]])
    palette = masks.discover_palette(masks.find_pairs(tmp_path / "b"))
    assert palette.classes == ["blue", "white"]  # no black: index 0 is a colour like the rest


def test_labels_and_palette_names_win_over_colour_names(tmp_path):
    src = tmp_path / "src"
    write_colour_pair(src, "m", [[[0, 0, 0], [0, 255, 0], [255, 0, 0]]])
    assert prepare(src, tmp_path / "d").classes == ["background", "green", "red"]
    (src / "labels.txt").write_text("soil\ncrop\nweed\n")
    assert prepare(src, tmp_path / "l").classes == ["soil", "crop", "weed"]
    palette = tmp_path / "p.yaml"
    palette.write_text("soil: [0, 0, 0]\nweed: [255, 0, 0]\ncrop: [0, 255, 0]\n")
    assert prepare(src, tmp_path / "p", palette=palette).classes == ["soil", "weed", "crop"]
