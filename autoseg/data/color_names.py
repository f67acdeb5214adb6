"""Names for mask colours: `(0, 255, 0)` is "green", `(250, 128, 10)` is "orange".

Colour masks without a palette file still need class names a person can read. Each colour
takes the name of the nearest entry of `NAMED_COLORS`, a small fixed table of basic colour
names (CSS/X11 colours, with the descriptive `dark_red` for CSS `maroon`, `green` for CSS
`lime` and so on), so an exact basic colour gets its exact name.

"Nearest" is measured in CIELAB (sRGB, D65 white) by the Euclidean distance, CIE76
delta-E: unlike a distance in RGB, equal steps in Lab are roughly equal steps to the eye, so
CSS `darkolivegreen` (85, 107, 47) is called "olive" rather than "dark_grey", its nearest
name in RGB.

Names are unique: when several colours take one name, the colour nearest the named colour
keeps the bare name and the others follow as `<name>_2`, `<name>_3`, ... in order of
distance (ties: in the given order). No table name ends in `_<digit>`, so a suffixed name
never collides with another colour's.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

# name -> (R, G, B). Descriptive names rather than CSS's (maroon, navy, lime, silver).
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "light_grey": (192, 192, 192),
    "dark_grey": (64, 64, 64),
    "red": (255, 0, 0),
    "dark_red": (128, 0, 0),
    "green": (0, 255, 0),
    "dark_green": (0, 128, 0),
    "light_green": (144, 238, 144),
    "blue": (0, 0, 255),
    "dark_blue": (0, 0, 128),
    "sky_blue": (135, 206, 235),
    "yellow": (255, 255, 0),
    "olive": (128, 128, 0),
    "cyan": (0, 255, 255),
    "teal": (0, 128, 128),
    "magenta": (255, 0, 255),
    "purple": (128, 0, 128),
    "orange": (255, 165, 0),
    "brown": (139, 69, 19),
    "pink": (255, 192, 203),
}

# sRGB (D65) -> CIE XYZ, and the D65 reference white.
_RGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(colors: Iterable[Sequence[int]]) -> np.ndarray:
    """CIELAB `(L, a, b)` rows of 8-bit sRGB colours.

    Args:
        colors: `(R, G, B)` triples, 0-255.

    Returns:
        A float64 `(n, 3)` array.
    """
    rgb = np.asarray(list(colors), np.float64).reshape(-1, 3) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1
    )


_NAMES = list(NAMED_COLORS)
_EXACT = {color: name for name, color in NAMED_COLORS.items()}
_TABLE_LAB = rgb_to_lab(NAMED_COLORS.values())


def nearest_color_name(color: Sequence[int]) -> tuple[str, float]:
    """The `NAMED_COLORS` name nearest `color` in CIELAB, and its delta-E (0 = exact).

    Example:
    ```python
    nearest_color_name((0, 255, 0))   # ("green", 0.0)
    nearest_color_name((250, 5, 10))  # ("red", 3.85...)
    ```
    """
    exact = _EXACT.get(tuple(int(v) for v in color))
    if exact is not None:
        return exact, 0.0
    distances = np.linalg.norm(_TABLE_LAB - rgb_to_lab([color]), axis=1)
    best = int(np.argmin(distances))
    return _NAMES[best], float(distances[best])


def color_class_names(colors: Sequence[Sequence[int]]) -> list[str]:
    """One unique name per colour, in order: the nearest named colour, suffixed on clashes.

    Args:
        colors: `(R, G, B)` triples, 0-255, all different.

    Returns:
        Names such as `["green", "red", "green_2"]`: among colours sharing a name, the
        nearest to it keeps the bare name and the others get `_2`, `_3`, ... by distance
        (then by position).

    Example:
    ```python
    color_class_names([(0, 250, 0), (0, 255, 0), (255, 0, 0)])
    # ["green_2", "green", "red"]
    ```
    """
    nearest = [nearest_color_name(c) for c in colors]
    names = [name for name, _ in nearest]
    for name in set(names):
        sharing = sorted(
            (distance, i) for i, (n, distance) in enumerate(nearest) if n == name
        )
        for rank, (_, i) in enumerate(sharing[1:], 2):
            names[i] = f"{name}_{rank}"
    return names
