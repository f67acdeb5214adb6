"""Mask folders: `SRC/images/` photos and `SRC/masks/` colour or class-index masks.

Images and masks are paired by file stem (`images/017.jpg` with `masks/017.png`).

Which kind of mask (`--format auto`): RGB and RGBA masks are colour masks; single-channel
masks (modes L, 1, I;16, and palette-mode P) are class-index masks. Palette-mode PNGs count
as index masks because PASCAL VOC and labelme2voc write their class indices that way (the
palette only colours them in a viewer); pass `--format color` to map their palette colours
instead. JPEG masks are refused: lossy compression changes colours and indices at edges.

Colour masks map each colour to a class. The palette is either

- given as YAML (`--palette FILE`), classes in index order, as a mapping of name to colour
  ```yaml
  background: [0, 0, 0]
  crop: [0, 255, 0]
  weed: [255, 0, 0]
  __ignore__: [255, 255, 255]   # optional: pixels of this colour become 255 (ignored)
  ```
  or as a list `[{name: background, color: [0, 0, 0]}, ...]`, or as a dataset.yaml-style
  mapping with `classes` and `palette` lists; a colour not in it is an error; or
- discovered: every distinct colour is a class, black (if present) is `background` at
  index 0, the others follow sorted by (R, G, B) and are named after their colour (`green`,
  `red`, `dark_blue`, ...: the nearest basic colour name, see `autoseg.data.color_names`;
  `green_2` when two colours share a name), or by the names in `--labels` /
  `SRC/labels.txt` (one a line, in that index order). Rename classes later in the prepared
  dataset's `dataset.yaml` (`classes:`, in index order).

Index masks are used as they are. Class names come from `--labels`, `--palette`,
`SRC/dataset.yaml` or `SRC/labels.txt`, else `class_0` ... `class_<max>`. A value of
`num_classes` or more (other than 255, the ignore index) is an error. `--ignore-values V ...`
turns the values listed into 255 and drops their names from the class list; the classes
above them move down (CamVid's void, value 11, with `--ignore-values 11`).

Binary masks (`--format binary`) hold 0 (background) and one other value (1 or 255, say:
foreground), single-channel or grey RGB; they become classes 0 and 1, named `background` and
`foreground` unless `--labels` names two classes. With `--format auto`, single-channel masks
holding only 0 and 255, or only 0 and 1, are binary (with a note saying so). `--format index`
refuses masks whose only value besides 0 is 255: read as index masks, every foreground pixel
would be ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import yaml
from PIL import Image

from autoseg.data import imageio
from autoseg.data.color_names import color_class_names
from autoseg.data.dataset import IGNORE_INDEX, IMAGE_EXTENSIONS, default_palette, warn
from autoseg.data.labelme import BACKGROUND_CLASS, IGNORE_LABEL, read_labels_file
from autoseg.errors import ConfigError, DatasetError

COLOR_MODES = ("RGB", "RGBA", "RGBX")
INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "LA", "PA")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
UNKNOWN = 0xFFFF  # colour lookup tables: a colour outside the palette


class Pair(NamedTuple):
    """An image and its mask, matched by stem."""

    stem: str
    image: Path
    mask: Path


@dataclasses.dataclass
class Palette:
    """Colour -> class, for colour masks.

    Attributes:
        classes: Class names in index order.
        colors: One RGB triple per class.
        ignore_colors: Colours whose pixels become the ignore index (255).
        source: Where it came from, for messages.
    """

    classes: list[str]
    colors: list[tuple[int, int, int]]
    ignore_colors: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    source: str = "the palette"

    def lookup_table(self) -> np.ndarray:
        """A `2**24` table from packed colour to mask value; `UNKNOWN` for other colours."""
        table = np.full(1 << 24, UNKNOWN, np.uint16)
        for i, color in enumerate(self.colors):
            table[pack_color(color)] = i
        for color in self.ignore_colors:
            table[pack_color(color)] = IGNORE_INDEX
        return table


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _by_stem(files: list[Path], folder: str) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise DatasetError(
                f"{folder}/{by_stem[p.stem].name} and {folder}/{p.name} share the stem "
                f"{p.stem!r}; images and masks are matched by stem. Rename or remove one."
            )
        by_stem[p.stem] = p
    return by_stem


def find_pairs(src: Path, skip_orphans: bool = False) -> list[Pair]:
    """Pairs `src/images/*` with `src/masks/*` by stem.

    Args:
        src: The folder holding `images/` and `masks/`.
        skip_orphans: Leave out (with a warning) images without a mask and masks without an
            image instead of failing.

    Raises:
        DatasetError: missing folders, JPEG masks, shared stems, orphans, or no pair at all.
    """
    for folder in ("images", "masks"):
        if not (src / folder).is_dir():
            raise DatasetError(
                f"{src} has no {folder}/ folder. Expected {src}/images/ and {src}/masks/."
            )
    mask_files = _files(src / "masks")
    lossy = [p.name for p in mask_files if p.suffix.lower() in LOSSY_EXTENSIONS]
    if lossy:
        raise DatasetError(
            f"masks/{lossy[0]} is a JPEG ({len(lossy)} JPEG mask(s) in total): lossy "
            "compression changes class colours and indices at edges. Export masks as PNG."
        )
    images = _by_stem(_files(src / "images"), "images")
    masks = _by_stem(mask_files, "masks")
    lonely_images = [f"images/{images[s].name}" for s in images if s not in masks]
    lonely_masks = [f"masks/{masks[s].name}" for s in masks if s not in images]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) have no mask: {_listing(lonely_images)}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) have no image: {_listing(lonely_masks)}")
        if not skip_orphans:
            raise DatasetError(
                f"{src}: {'; '.join(parts)}. Add the missing files, or pass --skip-orphans "
                "to leave them out."
            )
        warn(f"skipping orphans in {src}: {'; '.join(parts)}.")
    pairs = [Pair(s, images[s], masks[s]) for s in images if s in masks]
    if not pairs:
        raise DatasetError(
            f"{src} holds no image/mask pair: put photos in images/ and masks with the same "
            f"stems in masks/ ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return pairs


def _listing(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def mask_kind(path: Path, name: str) -> str:
    """"color" or "index", from the mask's mode (read from its header only).

    Raises:
        DatasetError: unreadable, or a mode that is neither (CMYK, floating point, ...).
    """
    with imageio.open_header(path, name) as image:
        mode = image.mode
    if mode in COLOR_MODES:
        return "color"
    if mode in INDEX_MODES:
        return "index"
    raise DatasetError(
        f"{name} is a {mode} image: a mask must be RGB (colour) or single-channel "
        "(class index). Re-export it as an RGB or 8-bit grayscale PNG."
    )


def detect_kind(src: Path) -> str:
    """The kind ("color" or "index") shared by every mask in `src/masks/`.

    Raises:
        DatasetError: no mask, or a mix of colour and index masks.
    """
    kinds: dict[str, str] = {}
    for p in _files(src / "masks"):
        if p.suffix.lower() in LOSSY_EXTENSIONS:
            continue  # refused with its own message by find_pairs
        kinds.setdefault(mask_kind(p, f"masks/{p.name}"), p.name)
    if len(kinds) > 1:
        raise DatasetError(
            f"{src}/masks mixes colour masks (e.g. {kinds['color']}) and single-channel "
            f"index masks (e.g. {kinds['index']}). Convert them to one kind, or pass "
            "--format color or --format index."
        )
    return next(iter(kinds), "color")


def pack_color(color) -> int:
    """Packs an `(R, G, B)` triple into the integer `0xRRGGBB`."""
    r, g, b = (int(v) for v in color)
    return (r << 16) | (g << 8) | b


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Packs an `(H, W, 3)` uint8 array into `(H, W)` uint32 `0xRRGGBB` values."""
    packed = rgb[..., 0].astype(np.uint32)
    packed <<= 8
    packed |= rgb[..., 1]
    packed <<= 8
    packed |= rgb[..., 2]
    return packed


def unpack_color(packed: int) -> tuple[int, int, int]:
    """The `(R, G, B)` triple of a packed `0xRRGGBB` integer."""
    packed = int(packed)
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


_PALETTE_FORM_HELP = (
    "Write one `name: [R, G, B]` line per class in index order, e.g. "
    "`background: [0, 0, 0]`."
)


def read_palette_file(path: str | Path) -> Palette:
    """Reads a `--palette` YAML file (see the module docstring for its forms).

    Raises:
        ConfigError: unreadable, malformed, a bad colour, or a repeated name or colour.
    """
    path = Path(path)
    palette = _palette_from_entries(_palette_entries(_load_palette_yaml(path), path), path)
    if not palette.classes:
        raise ConfigError(f"--palette {path} names no class. {_PALETTE_FORM_HELP}")
    if len(palette.classes) > IGNORE_INDEX:
        raise ConfigError(
            f"--palette {path} has {len(palette.classes)} classes; at most {IGNORE_INDEX} fit "
            "in 8-bit masks."
        )
    return palette


def _load_palette_yaml(path: Path):
    """The parsed YAML of a `--palette` file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--palette {path} cannot be read: {exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--palette {path} is not valid YAML: {exc}") from None


def _palette_entries(data, path: Path) -> list[tuple]:
    """`(name, colour)` pairs, in file order, from any of the three palette forms."""
    if isinstance(data, dict) and set(data) >= {"classes", "palette"} and isinstance(
        data["classes"], list
    ):
        names, colors = data["classes"], data["palette"]
        if not isinstance(colors, list) or len(colors) != len(names):
            raise ConfigError(
                f"--palette {path}: `palette` must hold one [R, G, B] per class "
                f"({len(names)} classes). Received: {colors!r:.200}."
            )
        return list(zip(names, colors))
    if isinstance(data, dict):
        return list(data.items())
    if isinstance(data, list) and all(
        isinstance(e, dict) and set(e) == {"name", "color"} for e in data
    ):
        return [(e["name"], e["color"]) for e in data]
    raise ConfigError(
        f"--palette {path} must be a mapping of class name to colour. {_PALETTE_FORM_HELP}"
    )


def _palette_from_entries(entries: list[tuple], path: Path) -> Palette:
    """A `Palette` of checked `(name, colour)` pairs: `__ignore__` colours set apart."""
    palette = Palette([], [], [], source=f"--palette {path}")
    seen: dict[int, str] = {}
    for name, color in entries:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"--palette {path}: class names must be text. Received: {name!r}.")
        if not (
            isinstance(color, (list, tuple)) and len(color) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)
        ):
            raise ConfigError(
                f"--palette {path}: {name!r} must be [R, G, B] with values 0-255. "
                f"Received: {color!r}."
            )
        key = pack_color(color)
        if key in seen:
            raise ConfigError(
                f"--palette {path}: {name!r} and {seen[key]!r} have the same colour "
                f"{tuple(color)}. Each colour must map to one class."
            )
        seen[key] = name
        if name == IGNORE_LABEL:
            palette.ignore_colors.append(tuple(color))
        elif name in palette.classes:
            raise ConfigError(f"--palette {path}: class {name!r} is listed twice.")
        else:
            palette.classes.append(name)
            palette.colors.append(tuple(color))
    return palette


def _read_rgb_mask(path: Path, name: str) -> np.ndarray:
    _, image = imageio.read_image(path, name)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def discover_palette(pairs: list[Pair], names: list[str] | None = None) -> Palette:
    """One class per distinct mask colour: black first (`background`), then sorted.

    Args:
        pairs: The image/mask pairs (every mask is read).
        names: Class names in index order. Defaults to `background` for black and the
            colour's name for the others (see `autoseg.data.color_names`).

    Raises:
        DatasetError: unreadable masks, more colours than 8-bit masks hold, or a `names`
            list of the wrong length.
    """
    seen = np.zeros(1 << 24, bool)
    for pair in pairs:
        seen[pack_rgb(_read_rgb_mask(pair.mask, f"masks/{pair.mask.name}"))] = True
        count = int(np.count_nonzero(seen))
        if count > IGNORE_INDEX:
            raise DatasetError(
                f"The colour masks hold over {IGNORE_INDEX} distinct colours (masks/"
                f"{pair.mask.name} brought the count to {count}): masks with antialiased "
                "or blended edges cannot be read as classes. Pass --palette FILE to name the "
                "class colours (others are then reported), or re-export the masks without "
                "antialiasing."
            )
    found = set(np.flatnonzero(seen).tolist())
    black = pack_color((0, 0, 0))
    ordered = ([black] if black in found else []) + sorted(found - {black})
    colors = [unpack_color(c) for c in ordered]
    if names is None:
        first = 1 if colors[:1] == [(0, 0, 0)] else 0  # black, if any, is first
        names = [BACKGROUND_CLASS] * first + color_class_names(colors[first:])
    elif len(names) != len(colors):
        raise DatasetError(
            f"The masks hold {len(colors)} colours ({', '.join(map(str, colors[:12]))}"
            f"{' ...' if len(colors) > 12 else ''}) but {len(names)} class names were given. "
            "Give one name per colour (black first, then by R, G, B), or pass --palette FILE."
        )
    return Palette(list(names), colors, [], source="the discovered palette")


def colors_to_index(
    rgb: np.ndarray, palette: Palette, name: str, table: np.ndarray | None = None
) -> np.ndarray:
    """Maps an `(H, W, 3)` colour mask to a `(H, W)` uint8 class-index mask.

    Args:
        rgb: The colour mask.
        palette: Colour -> class.
        name: The mask file, for error messages.
        table: `palette.lookup_table()`, to reuse it across masks.

    Raises:
        DatasetError: a colour is not in `palette` (with the colour and its pixel count).
    """
    table = palette.lookup_table() if table is None else table
    packed = pack_rgb(rgb)
    index = np.take(table, packed)
    unknown = index == UNKNOWN
    if unknown.any():
        colors, counts = np.unique(packed[unknown], return_counts=True)
        ranked = sorted(zip(counts.tolist(), colors.tolist()), reverse=True)
        shown = ", ".join(f"{unpack_color(c)} on {n:,} pixels" for n, c in ranked[:5])
        more = f" and {len(ranked) - 5} more" if len(ranked) > 5 else ""
        classes = ", ".join(f"{n} {c}" for n, c in zip(palette.classes, palette.colors))
        raise DatasetError(
            f"{name} has colour(s) not in {palette.source}: {shown}{more}. Palette: {classes}. "
            "Add the colour to the palette (name __ignore__ to ignore it) or fix the mask."
        )
    return index.astype(np.uint8)


def _source_metadata(src: Path) -> tuple[list[str] | None, list | None, int]:
    """Class names, palette and ignore index from `src/dataset.yaml`, if there is one."""
    meta_path = src / "dataset.yaml"
    if not meta_path.is_file():
        return None, None, IGNORE_INDEX
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"{meta_path} cannot be read as YAML: {exc}") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise DatasetError(
            f"{meta_path}: `classes` must be a non-empty list of names. "
            f"Received: {classes!r:.200}."
        )
    palette = meta.get("palette")
    if not (isinstance(palette, list) and len(palette) == len(classes)):
        palette = None
    ignore_index = meta.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
        raise DatasetError(
            f"{meta_path}: `ignore_index` must be 0-255. Received: {ignore_index!r}."
        )
    return classes, palette, ignore_index


def convert_folder(
    src: Path,
    out: Path,
    kind: str,
    labels: str | Path | None = None,
    palette: str | Path | None = None,
    skip_orphans: bool = False,
    *,
    ignore_values: Sequence[int] = (),
    detect_binary: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Converts `src/images/` + `src/masks/` into `out/images/` and `out/masks/`.

    Args:
        src: The source folder.
        out: A folder with empty `images/` and `masks/` subfolders.
        kind: "color", "index" or "binary".
        labels: A file of class names, one a line, in index order.
        palette: A palette YAML file (see the module docstring).
        skip_orphans: Leave out unpaired files with a warning instead of failing.
        ignore_values: Index or binary mask values that become 255 (see the module
            docstring). Defaults to none.
        detect_binary: Read index masks holding only 0 and 255 (or 0 and 1) as binary
            masks, with a note through `log` (`--format auto`). Defaults to False.
        log: Where the note goes. Defaults to print.

    Returns:
        `(classes, palette)` of the converted dataset.

    Raises:
        ConfigError: both `labels` and a colour `palette` are given.
        DatasetError: any unreadable, invalid or inconsistent input.
    """
    if labels is not None and palette is not None:
        raise ConfigError(
            "--labels and --palette both name the classes; pass only one (the palette file "
            "names each colour's class)."
        )
    pairs = find_pairs(src, skip_orphans)
    names = read_labels_file(labels).classes if labels is not None else None
    given = read_palette_file(palette) if palette is not None else None
    if kind == "color":
        return _convert_color_masks(src, out, pairs, names, given)

    names, colors, source_ignore, from_dataset_yaml = _index_class_source(
        src, kind, names, given
    )
    ignored = set(ignore_values)
    seen = _mask_values(pairs, kind)
    present = set().union(*seen.values())
    remaining = present - ignored
    if kind == "index" and detect_binary and not from_dataset_yaml:
        if _reads_as_binary(remaining, names, log):
            kind = "binary"
    if kind == "binary":
        lut, names, colors = _binary_lookup(seen, ignored, names, colors)
    else:
        lut, names, colors = _index_lookup(seen, ignored, names, colors, source_ignore)

    def convert(image: Image.Image, name: str) -> np.ndarray:
        return np.take(lut, _mask_array(image, name, kind))

    _convert_pairs(pairs, out, convert)
    if colors is None:
        colors = default_palette(len(names))
    return list(names), [tuple(int(v) for v in c) for c in colors]


def _convert_color_masks(
    src: Path, out: Path, pairs: list[Pair], names: list[str] | None, given: Palette | None
) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Converts colour masks with the `given` palette, else one discovered from the masks."""
    if given is None:
        if names is None and (src / "labels.txt").is_file():
            names = read_labels_file(src / "labels.txt").classes
        given = discover_palette(pairs, names)
    table = given.lookup_table()

    def convert_colors(image: Image.Image, name: str) -> np.ndarray:
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return colors_to_index(rgb, given, name, table)

    _convert_pairs(pairs, out, convert_colors)
    return given.classes, given.colors


def _index_class_source(
    src: Path, kind: str, names: list[str] | None, given: Palette | None
) -> tuple[list[str] | None, list | None, int, bool]:
    """Class names, colours and source ignore index for index or binary masks.

    In order: the `--palette`, then `src/dataset.yaml` (index masks without `--labels`),
    then `src/labels.txt`. The last item says whether they came from `src/dataset.yaml`.
    """
    source_ignore = IGNORE_INDEX
    colors = None
    from_dataset_yaml = False
    if given is not None:
        names, colors = given.classes, given.colors
    elif names is None and kind == "index":
        names, colors, source_ignore = _source_metadata(src)
        from_dataset_yaml = names is not None
    if names is None and (src / "labels.txt").is_file():
        names = read_labels_file(src / "labels.txt").classes
    return names, colors, source_ignore, from_dataset_yaml


def _reads_as_binary(
    remaining: set[int], names: list[str] | None, log: Callable[[str], None]
) -> bool:
    """Whether index masks holding `remaining` values are binary (`--format auto`).

    When they are, the note saying so goes through `log`.
    """
    binary_value = _binary_foreground(remaining)
    if binary_value is None or not (names is None or len(names) == 2):
        return False
    if binary_value == IGNORE_INDEX:
        other = "if 255 marks pixels to ignore, pass --format index --ignore-values 255"
    else:
        other = f"pass --format index to keep them as class indices 0 and {binary_value}"
    log(
        f"Note: the masks hold only 0 and {binary_value}: read as binary masks, 2 "
        f"classes, background (0) and foreground ({binary_value}). Name them with "
        f"--labels FILE; {other}."
    )
    return True


def _mask_array(image: Image.Image, name: str, kind: str) -> np.ndarray:
    """The values of a decoded index or binary mask; binary masks may be grey RGB."""
    if kind == "binary" and image.mode in COLOR_MODES:
        rgb = np.asarray(image.convert("RGB"))
        red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        if not (np.array_equal(red, green) and np.array_equal(red, blue)):
            raise DatasetError(
                f"{name} is a colour mask, not a binary one (0 = background, one other value "
                "= foreground). Use --format color for colour masks."
            )
        return red
    return imageio.index_array(image, name)


def _mask_values(pairs: list[Pair], kind: str) -> dict[str, set[int]]:
    """`masks/<name>` -> the set of values it holds, for every pair, in order."""
    seen: dict[str, set[int]] = {}
    for pair in pairs:
        name = f"masks/{pair.mask.name}"
        _, image = imageio.read_image(pair.mask, name)
        counts = np.bincount(_mask_array(image, name, kind).ravel(), minlength=256)
        seen[name] = set(np.flatnonzero(counts).tolist())
    return seen


def _binary_foreground(values: set[int]) -> int | None:
    """255 or 1 when `values` are only 0 and that value (binary masks), else None."""
    for foreground in (IGNORE_INDEX, 1):
        if foreground in values and values <= {0, foreground}:
            return foreground
    return None


def _listing_values(values) -> str:
    values = sorted(values)
    return ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")


def _binary_lookup(seen: dict[str, set[int]], ignored: set[int], names, colors):
    """The value table of binary masks: 0 -> 0, the foreground value -> 1, ignored -> 255."""
    foreground: dict[int, str] = {}
    for name, values in seen.items():
        for value in sorted(values - ignored - {0}):
            foreground.setdefault(value, name)
    if len(foreground) > 1:
        shown = "; ".join(f"{v} (e.g. {n})" for v, n in list(foreground.items())[:5])
        raise DatasetError(
            f"Binary masks hold 0 (background) and one other value (foreground), but these "
            f"masks hold {len(foreground)} values besides 0: {shown}. Use --format index for "
            "class-index masks, or list the values to ignore with --ignore-values."
        )
    if names is not None and len(names) != 2:
        raise DatasetError(
            f"Binary masks have 2 classes (background, foreground) but {len(names)} class "
            f"names were given ({', '.join(names[:10])}). Give two names, or use --format index."
        )
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[0] = 0
    for value in foreground:
        lut[value] = 1
    return lut, list(names or ["background", "foreground"]), colors


def _index_lookup(seen: dict[str, set[int]], ignored: set[int], names, colors, source_ignore: int):
    """The value table of index masks: classes renumbered around the ignored values.

    `names` (and `colors`) name the masks' values in order, ignored values included: their
    names leave the class list and the classes above them move down.
    """
    present = set().union(*seen.values())
    only_255 = present - ignored - {0} == {IGNORE_INDEX}
    if source_ignore == IGNORE_INDEX and IGNORE_INDEX not in ignored and only_255:
        example = next(n for n, v in seen.items() if IGNORE_INDEX in v)
        raise DatasetError(
            f"The masks hold only 0 and 255 (e.g. {example}). With --format index, 255 means "
            "ignore, so every pixel but the background would be dropped and one class would "
            "remain. These look like binary masks (0 = background, 255 = foreground): use "
            "--format binary. If 255 really marks pixels to ignore, say so "
            "with --ignore-values 255."
        )
    unlabelled = {source_ignore, IGNORE_INDEX}
    if names is None:
        highest = max(present - ignored - unlabelled, default=0)
        kept = [v for v in range(highest + 1) if v not in ignored | unlabelled]
        names = [f"class_{v}" for v in kept]
    else:
        for name, values in seen.items():
            bad = sorted(v for v in values - ignored - unlabelled if v >= len(names))
            if bad:
                raise DatasetError(
                    f"{name} holds value(s) {_listing_values(bad)} but there are only "
                    f"{len(names)} classes (0-{len(names) - 1}; 255 = ignore). Fix the mask, "
                    "list every class in --labels, or list the values to ignore with "
                    "--ignore-values."
                )
        kept = [v for v in range(len(names)) if v not in ignored]
        if colors is not None:
            colors = [colors[v] for v in kept]
        names = [names[v] for v in kept]
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for index, value in enumerate(kept):
        lut[value] = index
    lut[list(unlabelled)] = IGNORE_INDEX
    return lut, names, colors


def _convert_pairs(pairs: list[Pair], out: Path, convert) -> None:
    """Reads, checks and writes each pair; `convert(mask_image, name)` returns the indices."""
    for pair in pairs:
        image_name, mask_name = f"images/{pair.image.name}", f"masks/{pair.mask.name}"
        photo = imageio.read_photo(pair.image, image_name)
        _, mask_image = imageio.read_image(pair.mask, mask_name)
        if mask_image.size != photo.size:
            raise imageio.size_mismatch(mask_name, mask_image.size, image_name, photo.size)
        index = convert(mask_image, mask_name)
        image_bytes, ext = imageio.canonical_image(photo.data, photo.image, pair.image.suffix, False)
        (out / "images" / f"{pair.stem}{ext}").write_bytes(image_bytes)
        imageio.write_mask(out / "masks" / f"{pair.stem}.png", index)
