"""Read images and masks with a full decode, so corrupt and truncated files fail early.

Every reader takes a display `name` (such as ``masks/017.png``) used in its error messages.
Pillow only: nothing here imports TensorFlow, Keras or OpenCV.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autoseg.errors import DatasetError

# Pillow format name -> the extensions a canonical image of that format may have (first: default).
FORMAT_EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
}
_EXIF_ORIENTATION = 0x0112


def read_bytes(path: str | Path, name: str) -> bytes:
    """Returns the bytes of `path`.

    Raises:
        DatasetError: the file cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"{name} cannot be read: {exc.strerror or exc}.") from None


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decodes image bytes completely (pixels included) and returns the image.

    Args:
        data: The encoded file (JPEG, PNG, ...).
        name: How error messages refer to the file, e.g. ``images/017.jpg``.

    Raises:
        DatasetError: the data is empty, not an image, corrupt or truncated.
    """
    if not data:
        raise DatasetError(
            f"{name} is empty (0 bytes). Replace it with a valid image or remove it."
        )
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise DatasetError(
            f"{name} is not an image Pillow can read (unknown or damaged header). "
            "Replace it with a valid image or remove it."
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{name} is corrupt or truncated ({exc}). Re-export it or remove it."
        ) from None
    return image


def open_header(path: str | Path, name: str) -> Image.Image:
    """Opens an image lazily: mode and size are read, pixels are not decoded.

    Raises:
        DatasetError: the file is unreadable, empty or not an image.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DatasetError(
                f"{name} is empty (0 bytes). Replace it with a valid image or remove it."
            )
        return Image.open(path)
    except UnidentifiedImageError:
        raise DatasetError(
            f"{name} is not an image Pillow can read (unknown or damaged header). "
            "Replace it with a valid image or remove it."
        ) from None
    except OSError as exc:
        raise DatasetError(f"{name} cannot be read: {exc.strerror or exc}.") from None


def read_image(path: str | Path, name: str) -> tuple[bytes, Image.Image]:
    """Reads and fully decodes an image file.

    Returns:
        `(file_bytes, image)`: the original bytes (to copy them unchanged) and the decoded image.

    Raises:
        DatasetError: the file is unreadable, empty, not an image, corrupt or truncated.
    """
    data = read_bytes(path, name)
    return data, decode_image(data, name)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when absent)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block says nothing about orientation
        return 1


def canonical_image(
    data: bytes, image: Image.Image, suffix: str, apply_orientation: bool
) -> tuple[bytes, str]:
    """Returns the bytes and extension to store for an image in a canonical dataset.

    The original bytes are kept when the format has a canonical extension and no EXIF
    rotation is pending. Otherwise the pixels are written as PNG without EXIF, so every
    reader (Pillow ignores EXIF rotation, OpenCV applies it) sees the same pixel grid.

    Args:
        data: The original file bytes.
        image: `data` decoded.
        suffix: The original extension (".JPG", ...), or "" for embedded data.
        apply_orientation: Rotate per EXIF first (what Labelme showed the annotator).
    """
    if exif_orientation(image) != 1:
        if apply_orientation:
            image = ImageOps.exif_transpose(image)
        return encode_png(image), ".png"
    extensions = FORMAT_EXTENSIONS.get(image.format or "")
    if not extensions:
        return encode_png(image), ".png"
    # A PNG named .jpg is stored as .png: the extension then tells the truth.
    ext = suffix.lower()
    return data, ext if ext in extensions else extensions[0]


def encode_png(image: Image.Image) -> bytes:
    """Encodes a Pillow image (or a 2-D uint8 array) as PNG bytes without metadata."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Writes a class-index mask as a single-channel 8-bit PNG (mode ``L``)."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"A mask must be a 2-D uint8 array. Received: {mask.dtype} {mask.shape}.")
    Image.fromarray(mask).save(path, format="PNG", compress_level=1)


def read_index_mask(path: str | Path, name: str) -> np.ndarray:
    """Reads a single-channel class-index mask (modes L, P, 1, I, I;16, LA, PA) as uint8.

    Palette (``P``) masks are read as their indices, as PASCAL VOC and Labelme write them.

    Raises:
        DatasetError: unreadable, colour (RGB) masks, or values above 255.
    """
    _, image = read_image(path, name)
    return index_array(image, name)


def index_array(image: Image.Image, name: str) -> np.ndarray:
    """The class indices of a decoded single-channel mask image, as a 2-D uint8 array.

    Raises:
        DatasetError: the image has colour channels or values above 255.
    """
    if image.mode in ("LA", "PA"):
        array = np.asarray(image)[..., 0]
    elif image.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        array = np.asarray(image)
    else:
        raise DatasetError(
            f"{name} is a {image.mode} image, not a single-channel class-index mask. "
            "Use --format color for colour masks."
        )
    if array.dtype != np.uint8:
        high = int(array.max()) if array.size else 0
        if array.dtype != bool and (high > 255 or int(array.min()) < 0):
            raise DatasetError(
                f"{name} holds value {high}, above 255: a class-index mask stores one byte "
                "per pixel (255 = ignore). Re-export it as an 8-bit PNG."
            )
        array = array.astype(np.uint8)
    return array


def size_mismatch(mask_name: str, mask_size: tuple[int, int], image_name: str,
                  image_size: tuple[int, int]) -> DatasetError:
    """The error for a mask whose (width, height) differs from its image's."""
    return DatasetError(
        f"{mask_name} is {mask_size[0]}x{mask_size[1]} but {image_name} is "
        f"{image_size[0]}x{image_size[1]}. Masks must match their image."
    )
