"""The bundled demo dataset: synthetic top-down field scenes annotated as Labelme JSON.

Every scene is built from polygons first and then rendered from them, so the labels are
exact when the polygons are rasterised the way labelme does (`ImageDraw.polygon(points,
outline=1, fill=1)`, later shapes over earlier). Same seed, same bytes.

Example:
```
python -m autoseg.sample --out sample --count 32 --size 320x256 --seed 0
```
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from autoseg import atomic
from autoseg.errors import AutosegError, ConfigError

CLASSES = ("background", "crop", "broadleaf_weed", "grass_weed")
LABELME_VERSION = "5.5.0"
JPEG_QUALITY = 88
COORD_DECIMALS = 1
REFERENCE_SHORT_SIDE = 256  # every length below is in pixels at this short side
MIN_SHORT_SIDE = 64
STEM_FORMAT = "field_{:03d}"

# Soil: albedo, relief (lit from the top left) and slow illumination changes.
SOIL_RGB = (112, 86, 66)
SOIL_MOISTURE_JITTER = 0.12  # darker (wet) or lighter (dry) soil per scene
SOIL_NOISE_CELLS = ((64, 0.12), (16, 0.08), (4, 0.06))  # (cell px, albedo amplitude)
SOIL_GRAIN = 0.06
SOIL_ROUGHNESS_CELLS = ((6, 0.25), (2, 0.1))  # (cell px, height amplitude)
SOIL_RELIEF = 1.5
ILLUMINATION_VARIATION = 0.08
CLODS_PER_SCENE = (40, 80)
CLOD_RADIUS = (3.0, 9.0)
CLOD_HEIGHT = (0.4, 1.0)
CLOD_SMOOTHING = 2.0  # blur sigma of clods and stones in the height map
STONES_PER_SCENE = (10, 30)
STONE_RADIUS = (2.0, 5.0)
STONE_RGB = (168, 158, 142)
STONE_EDGE_SIGMA = 0.7
PLANT_SHADOW = 0.35
SHADOW_OFFSET = (3, 2)  # (dx, dy): the sun is at the top left
SHADOW_SIGMA = 3.0

# Plants: colour, leaf texture and shading.
PLANT_RGB = {
    "crop": (52, 118, 40),
    "broadleaf_weed": (128, 150, 48),
    "grass_weed": (88, 148, 104),
}
PLANT_BRIGHTNESS_JITTER = 0.08
LEAF_BRIGHTNESS_JITTER = 0.06
LEAF_TEXTURE = 0.06
EDGE_DARKENING = 0.45
LEAF_SHADING_SIGMA = 1.2
LEAF_RELIEF = 3.0
VEIN_BRIGHTENING = 0.18

# Crop rosettes in rows.
CROP_ROWS = (2, 3)
ROW_ANGLE = 0.3  # radians either side of horizontal
CROP_SPACING = (40.0, 56.0)
CROP_GAP_PROBABILITY = 0.1
CROP_LEAVES = (4, 6)
CROP_LEAF_LENGTH = (21.0, 31.0)
CROP_LEAF_ASPECT = (0.3, 0.42)  # width / length
CROP_LEAF_SKEW = 1.4  # > 1 moves the widest part towards the tip: a stalk, then a blade
CROP_LEAF_BLUNTNESS = 0.7  # < 1 rounds the blade
CROP_LEAF_ANGLE_JITTER = 0.3  # radians off an even spread around the rosette
CROP_ROW_JITTER = 0.1  # fraction of the row spacing
LEAF_SIDE_POINTS = 6
# Broadleaf weeds: rounded lobed leaves around a centre.
BROADLEAF_PER_SCENE = (5, 8)
BROADLEAF_LEAVES = (2, 4)
BROADLEAF_RADIUS = (11.0, 17.0)
BROADLEAF_LOBES = (5, 6)
BROADLEAF_LOBE_DEPTH = (0.12, 0.22)
BROADLEAF_POINTS = 24
BROADLEAF_WOBBLE = 0.05  # random relative change of each outline radius
# Grass weeds: tufts of thin tapering blades.
GRASS_PER_SCENE = (4, 7)
GRASS_BLADES = (4, 7)
GRASS_BLADE_LENGTH = (32.0, 70.0)
GRASS_BLADE_WIDTH = (3.0, 6.0)
GRASS_SIDE_POINTS = 4
GRASS_TAPER = 0.6  # < 1 keeps the blade wide until near its tip
GRASS_FAN = 0.9  # radians either side of the tuft's main direction
LEAF_BEND = 0.25  # largest sideways bend of a leaf tip, as a fraction of its length
PLANT_POSITION_JITTER = 2.0  # px, of crops off their row and of blades off their tuft

LABELS_TXT = "__ignore__\n_background_\n" + "".join(f"{c}\n" for c in CLASSES[1:])


@dataclasses.dataclass
class Shape:
    """One annotated polygon and what is needed to paint it."""

    label: str
    points: np.ndarray  # (n, 2) x, y in image coordinates, rounded as written
    group_id: int
    rgb: np.ndarray
    vein: np.ndarray | None = None  # a centre line painted lighter, crop leaves only


def parse_size(text: str) -> tuple[int, int]:
    """Parses `WIDTHxHEIGHT` (e.g. `320x256`) into `(width, height)`.

    Raises:
        ConfigError: the text is malformed or the short side is below `MIN_SHORT_SIDE`.
    """
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or min(int(match[1]), int(match[2])) < MIN_SHORT_SIDE:
        raise ConfigError(
            f"--size must be WIDTHxHEIGHT with both sides >= {MIN_SHORT_SIDE}. "
            f"Received: size={text!r}. Example: --size 320x256"
        )
    return int(match[1]), int(match[2])


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Returns value noise in about [-1, 1] with features about `cell` pixels wide."""
    grid = rng.uniform(-1.0, 1.0, (height // cell + 2, width // cell + 2)).astype(np.float32)
    size = (grid.shape[1] * cell, grid.shape[0] * cell)
    return cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)[:height, :width]


def relief_shading(height_map: np.ndarray, strength: float) -> np.ndarray:
    """Returns a brightness factor that lights a height map from the top left."""
    grad_y, grad_x = np.gradient(height_map)
    return 1.0 - strength * (grad_x + grad_y)


def render_soil(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Paints bare soil (float RGB in 0..255): multi-scale albedo, clods, stones, shading."""
    def noise(cells):
        return sum(a * smooth_noise(rng, height, width, max(1, round(c * scale))) for c, a in cells)

    albedo = 1.0 + rng.uniform(-1, 1) * SOIL_MOISTURE_JITTER + noise(SOIL_NOISE_CELLS)
    albedo = albedo + SOIL_GRAIN * rng.standard_normal((height, width)).astype(np.float32)
    clods = np.zeros((height, width), np.float32)
    stones = np.zeros((height, width), np.float32)
    for canvas, count, radius in ((clods, CLODS_PER_SCENE, CLOD_RADIUS),
                                  (stones, STONES_PER_SCENE, STONE_RADIUS)):
        for _ in range(rng.integers(*count, endpoint=True)):
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            axes = tuple(max(1, round(r * scale)) for r in rng.uniform(*radius, 2))
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                        float(rng.uniform(*CLOD_HEIGHT)), -1)
    relief = cv2.GaussianBlur(clods + stones, (0, 0), CLOD_SMOOTHING * scale)
    relief = relief + noise(SOIL_ROUGHNESS_CELLS)
    stone_mask = cv2.GaussianBlur((stones > 0).astype(np.float32), (0, 0), STONE_EDGE_SIGMA)
    rgb = np.array(SOIL_RGB, np.float32) * albedo[..., None]
    rgb = rgb + (np.array(STONE_RGB, np.float32) - rgb) * stone_mask[..., None]
    illumination = 1.0 + ILLUMINATION_VARIATION * smooth_noise(
        rng, height, width, max(height, width))
    return rgb * (relief_shading(relief, SOIL_RELIEF) * illumination)[..., None]


def place(points: np.ndarray, angle: float, origin: np.ndarray) -> np.ndarray:
    """Rotates local (x along the leaf) points by `angle` and moves them to `origin`."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + origin


def bent(points: np.ndarray, length: float, bend: float) -> np.ndarray:
    """Bends a leaf sideways by `bend * length` at its tip.

    `y += f(x)` is one-to-one, so a simple outline stays simple.
    """
    return points + np.stack([np.zeros(len(points)), bend * points[:, 0] ** 2 / length], 1)


def crop_leaf(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns a beet-like leaf outline (narrow stalk, broad rounded blade) and its midrib."""
    length = rng.uniform(*CROP_LEAF_LENGTH) * scale
    half_width = 0.5 * length * rng.uniform(*CROP_LEAF_ASPECT)
    t = np.linspace(0.0, 1.0, LEAF_SIDE_POINTS)
    side = half_width * np.clip(np.sin(np.pi * t ** CROP_LEAF_SKEW), 0, None) ** CROP_LEAF_BLUNTNESS
    upper = np.stack([t * length, side], 1)
    lower = np.stack([t * length, -side], 1)[-2:0:-1]
    bend = rng.uniform(-LEAF_BEND, LEAF_BEND)
    return bent(np.concatenate([upper, lower]), length, bend), bent(upper * [1, 0], length, bend)


def lobed_leaf(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Returns a round lobed leaf outline centred at 0 (star-shaped, hence simple)."""
    phi = np.linspace(0.0, 2 * np.pi, BROADLEAF_POINTS, endpoint=False)
    lobes = rng.integers(*BROADLEAF_LOBES, endpoint=True)
    radius = rng.uniform(*BROADLEAF_RADIUS) * scale * (
        1 + rng.uniform(*BROADLEAF_LOBE_DEPTH) * np.cos(lobes * phi + rng.uniform(0, 2 * np.pi))
    ) * (1 + rng.uniform(-BROADLEAF_WOBBLE, BROADLEAF_WOBBLE, len(phi)))
    return np.stack([radius * np.cos(phi), radius * np.sin(phi)], 1)


def grass_blade(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Returns a thin tapering grass blade outline from its base at 0 to its tip."""
    length = rng.uniform(*GRASS_BLADE_LENGTH) * scale
    half_width = 0.5 * rng.uniform(*GRASS_BLADE_WIDTH) * scale
    t = np.linspace(0.0, 1.0, GRASS_SIDE_POINTS, endpoint=False)
    side = half_width * (1 - t) ** GRASS_TAPER
    outline = np.concatenate([np.stack([t * length, side], 1), [[length, 0.0]],
                              np.stack([t * length, -side], 1)[::-1]])
    return bent(outline, length, rng.uniform(-LEAF_BEND, LEAF_BEND))


def make_plant(rng: np.random.Generator, label: str, centre: np.ndarray, scale: float):
    """Returns `(outlines, veins)` of one plant of class `label` around `centre`."""
    outlines, veins = [], []
    if label == "crop":
        count = rng.integers(*CROP_LEAVES, endpoint=True)
        angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
        angles = angles + rng.uniform(-1, 1, count) * CROP_LEAF_ANGLE_JITTER
        for angle in angles:
            outline, vein = crop_leaf(rng, scale)
            outlines.append(place(outline, angle, centre))
            veins.append(place(vein, angle, centre))
    elif label == "broadleaf_weed":
        for _ in range(rng.integers(*BROADLEAF_LEAVES, endpoint=True)):
            # Leaves sit around the centre, no further out than the smallest leaf radius.
            direction = rng.uniform(0, 2 * np.pi)
            distance = rng.uniform(0, BROADLEAF_RADIUS[0] * scale)
            base = centre + distance * np.array([np.cos(direction), np.sin(direction)])
            outlines.append(place(lobed_leaf(rng, scale), direction, base))
            veins.append(None)
    else:
        base_angle = rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(*GRASS_BLADES, endpoint=True)):
            base = centre + rng.uniform(-1, 1, 2) * PLANT_POSITION_JITTER * scale
            angle = base_angle + rng.uniform(-GRASS_FAN, GRASS_FAN)
            outlines.append(place(grass_blade(rng, scale), angle, base))
            veins.append(None)
    return outlines, veins


def plant_centres(rng: np.random.Generator, width: int, height: int, scale: float):
    """Yields `(label, centre)`: crops along slanted rows, weeds scattered anywhere."""
    rows = rng.integers(*CROP_ROWS, endpoint=True)
    angle = rng.uniform(-ROW_ANGLE, ROW_ANGLE)
    along = np.array([np.cos(angle), np.sin(angle)])
    across = np.array([-along[1], along[0]])
    middle, spacing = np.array([width, height]) / 2, height / rows
    for row in range(rows):
        offset = (row + 0.5) * spacing - height / 2 + rng.uniform(-1, 1) * CROP_ROW_JITTER * spacing
        s = -np.hypot(width, height) / 2 + rng.uniform(0, CROP_SPACING[0] * scale)
        while s < np.hypot(width, height) / 2:
            centre = (middle + s * along + offset * across
                      + rng.uniform(-1, 1, 2) * PLANT_POSITION_JITTER * scale)
            if (0 <= centre[0] < width and 0 <= centre[1] < height
                    and rng.uniform() > CROP_GAP_PROBABILITY):
                yield "crop", centre
            s += rng.uniform(*CROP_SPACING) * scale
    for label, count in (("broadleaf_weed", BROADLEAF_PER_SCENE), ("grass_weed", GRASS_PER_SCENE)):
        for _ in range(rng.integers(*count, endpoint=True)):
            yield label, rng.uniform([0, 0], [width, height])


def layout_shapes(rng: np.random.Generator, width: int, height: int, scale: float) -> list[Shape]:
    """Builds the scene's plants as shapes in drawing order (one group_id per plant)."""
    plants = list(plant_centres(rng, width, height, scale))
    shapes = []
    for group_id, index in enumerate(rng.permutation(len(plants)), start=1):
        label, centre = plants[index]
        outlines, veins = make_plant(rng, label, centre, scale)
        # Move the whole plant inside the image so that no polygon needs clipping.
        every = np.concatenate(outlines)
        shift = np.maximum(0, -every.min(0)) - np.maximum(0, every.max(0) - [width - 1, height - 1])
        rgb = np.array(PLANT_RGB[label]) * (1 + rng.uniform(-1, 1) * PLANT_BRIGHTNESS_JITTER)
        for outline, vein in zip(outlines, veins):
            leaf_rgb = rgb * (1 + rng.uniform(-1, 1) * LEAF_BRIGHTNESS_JITTER)
            shapes.append(Shape(label, np.round(outline + shift, COORD_DECIMALS), group_id,
                                leaf_rgb, None if vein is None else vein + shift))
    return shapes


def polygon_mask(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rasterises one polygon exactly as labelme does; returns a bool (height, width) mask."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], outline=1, fill=1)
    return np.asarray(canvas, bool)


def paint_leaf(image: np.ndarray, shape: Shape, mask: np.ndarray, texture: np.ndarray,
               scale: float) -> None:
    """Paints `shape` over the pixels of `mask` with darkened edges, relief and a midrib."""
    margin = int(np.ceil(LEAF_SHADING_SIGMA * 3 * scale)) + 2
    x0, y0 = np.maximum(np.floor(shape.points.min(0)).astype(int) - margin, 0)
    x1, y1 = np.ceil(shape.points.max(0)).astype(int) + margin + 1
    window = (slice(y0, y1), slice(x0, x1))
    inside = mask[window]
    soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), LEAF_SHADING_SIGMA * scale)
    shade = (1 - EDGE_DARKENING * (1 - soft)) * relief_shading(soft, LEAF_RELIEF) * texture[window]
    if shape.vein is not None:
        vein = Image.new("L", (inside.shape[1], inside.shape[0]), 0)
        ImageDraw.Draw(vein).line([tuple(p) for p in (shape.vein - [x0, y0]).tolist()], fill=1)
        shade = shade * (1 + VEIN_BRIGHTENING * np.asarray(vein, np.float32))
    image[window][inside] = shape.rgb * shade[inside][:, None]


def render_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[Shape]]:
    """Renders one field scene; returns the RGB uint8 image and its shapes in drawing order."""
    scale = min(width, height) / REFERENCE_SHORT_SIDE
    shapes = layout_shapes(rng, width, height, scale)
    image = render_soil(rng, height, width, scale)
    masks = [polygon_mask(shape.points, width, height) for shape in shapes]
    if masks:
        cover = np.any(masks, axis=0).astype(np.float32)
        shift = np.float32([[1, 0, SHADOW_OFFSET[0]], [0, 1, SHADOW_OFFSET[1]]])
        shadow = cv2.warpAffine(cover, shift, (width, height))
        shadow = cv2.GaussianBlur(shadow, (0, 0), SHADOW_SIGMA)
        image *= 1 - PLANT_SHADOW * shadow[..., None]
    texture = 1 + LEAF_TEXTURE * smooth_noise(rng, height, width, max(1, round(2 * scale)))
    for shape, mask in zip(shapes, masks):
        paint_leaf(image, shape, mask, texture, scale)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), shapes


def labelme_json(shapes: list[Shape], image_name: str, width: int, height: int) -> str:
    """Returns the Labelme 5 JSON text of a scene, one shape per line.

    Labelme reads any JSON layout; its own (a line per coordinate) would make the sample
    four times larger.
    """
    record = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": "SHAPES",
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }
    lines = ",\n".join(
        "    " + json.dumps({"label": s.label, "points": s.points.tolist(), "group_id": s.group_id,
                             "description": "", "shape_type": "polygon", "flags": {}, "mask": None})
        for s in shapes
    )
    return json.dumps(record, indent=2).replace('"SHAPES"', f"[\n{lines}\n  ]") + "\n"


def readme(count: int, width: int, height: int, seed: int) -> str:
    """Returns the sample's README, which records the exact command that made it."""
    return f"""# autoseg demo dataset

{count} synthetic top-down field scenes ({width}x{height} RGB JPEG) with Labelme 5 polygon
annotations, one `<stem>.json` next to each `<stem>.jpg`. Crop rosettes grow in slanted rows
on textured soil among broadleaf weeds (round lobed leaves, yellower green) and grass weeds
(thin blades, bluish green). Each leaf or blade is one polygon; the leaves of a plant share a
`group_id`. The images are painted from the polygons, so the labels are exact when rasterised
the way labelme does (later shapes over earlier).

Classes (`labels.txt`, labelme2voc style): {", ".join(CLASSES)}.

Made by the project's own generator (`autoseg/sample.py`), with no outside data; add
`--overwrite` to replace an existing folder:

```
python -m autoseg.sample --out sample --count {count} --size {width}x{height} --seed {seed}
```

Licence: generated by the autoseg project; Apache-2.0, and also dedicated to the public
domain under CC0-1.0, at your choice.
"""


def generate_sample(out: str | Path, count: int = 32, size: tuple[int, int] = (320, 256),
                    seed: int = 0, overwrite: bool = False) -> Path:
    """Writes the demo dataset to `out`, whole or not at all.

    Args:
        out: The folder to write.
        count: Number of scenes. Defaults to 32.
        size: `(width, height)` of every image. Defaults to `(320, 256)`.
        seed: Random seed; the same seed writes byte-identical files. Defaults to 0.
        overwrite: Replace `out` if it exists and is not empty. Defaults to False.

    Returns:
        The output folder.

    Raises:
        ConfigError: `count` < 1, or `out` is not empty and `overwrite` is False.
    """
    if count < 1:
        raise ConfigError(f"--count must be at least 1. Received: count={count}")
    width, height = size
    with atomic.output_dir(out, overwrite=overwrite) as tmp:
        for index in range(count):
            image, shapes = render_scene(np.random.default_rng([seed, index]), width, height)
            stem = STEM_FORMAT.format(index)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY)
            (tmp / f"{stem}.jpg").write_bytes(buffer.getvalue())
            (tmp / f"{stem}.json").write_text(labelme_json(shapes, f"{stem}.jpg", width, height))
        (tmp / "labels.txt").write_text(LABELS_TXT)
        (tmp / "README.md").write_text(readme(count, width, height, seed))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """Runs `python -m autoseg.sample`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m autoseg.sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--count", type=int, default=32, help="number of scenes (default 32)")
    parser.add_argument("--size", default="320x256", help="WIDTHxHEIGHT (default 320x256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
        out = generate_sample(args.out, args.count, size, args.seed, args.overwrite)
    except AutosegError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"Wrote {args.count} scenes to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
