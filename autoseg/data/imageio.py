"""Read images and masks with a full decode, so corrupt and truncated files fail early.

Every reader takes a display `name` (such as ``masks/017.png``) used in its error messages.
Pillow checks files, reads headers and masks; `decode_pixels` reads a photo's pixels at
their full depth with OpenCV (Pillow cuts 16-bit RGB to 8 bits and cannot open float RGB
TIFFs). Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import cv2
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
# Formats whose files Pillow may not decode (float RGB TIFF) while OpenCV does.
_OPENCV_ONLY_EXTENSIONS = (".tif", ".tiff")


class Photo(NamedTuple):
    """A photo read and checked by `read_photo`.

    Attributes:
        data: The file's bytes.
        image: The decoded Pillow image, or None for a TIFF only OpenCV decodes.
        size: `(width, height)`.
    """

    data: bytes
    image: Image.Image | None
    size: tuple[int, int]


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


def image_size(path: str | Path, name: str) -> tuple[int, int]:
    """`(width, height)` of an image, from its header (all pixels for a TIFF Pillow cannot open).

    Raises:
        DatasetError: the file is unreadable, empty or not an image.
    """
    try:
        with open_header(path, name) as image:
            return image.size
    except DatasetError:
        if Path(path).suffix.lower() not in _OPENCV_ONLY_EXTENSIONS:
            raise
        pixels = read_pixels(path, name)
        return pixels.shape[1], pixels.shape[0]


def read_image(path: str | Path, name: str) -> tuple[bytes, Image.Image]:
    """Reads and fully decodes an image file.

    Returns:
        `(file_bytes, image)`: the original bytes (to copy them unchanged) and the decoded image.

    Raises:
        DatasetError: the file is unreadable, empty, not an image, corrupt or truncated.
    """
    data = read_bytes(path, name)
    return data, decode_image(data, name)


def read_photo(path: str | Path, name: str) -> Photo:
    """Reads and fully decodes a photo: with Pillow, or OpenCV for TIFFs Pillow cannot open.

    Raises:
        DatasetError: the file is unreadable, empty, not an image, corrupt or truncated.
    """
    data = read_bytes(path, name)
    try:
        image = decode_image(data, name)
    except DatasetError:
        if Path(path).suffix.lower() not in _OPENCV_ONLY_EXTENSIONS or not data:
            raise
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise
        return Photo(data, None, (pixels.shape[1], pixels.shape[0]))
    return Photo(data, image, image.size)


def decode_pixels(data: bytes, name: str) -> np.ndarray:
    """Decodes a photo's pixels at full depth, as stored.

    EXIF orientation is ignored, as Pillow does, so images and the masks drawn on them stay
    aligned. Palette images are expanded to their colours.

    Returns:
        `(H, W, C)` in the file's own dtype (uint8, uint16, float32, ...): C = 1 grey,
        3 RGB or 4 RGBA (channels in that order).

    Raises:
        DatasetError: the data is not a readable image.
    """
    pixels = None
    if data:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:  # e.g. 32-bit integer TIFFs: Pillow reads those
        try:
            image = decode_image(data, name)
        except DatasetError as exc:
            reason = str(exc).removeprefix(f"{name} ")
            raise DatasetError(
                f"{name} is not a readable image: OpenCV could not decode it, and it {reason}"
            ) from None
        if image.mode == "1":
            pixels = np.asarray(image, np.uint8) * np.uint8(255)
        elif image.mode in ("L", "I", "F") or image.mode.startswith("I;16"):
            pixels = np.asarray(image)
        else:
            rgba = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            return np.asarray(image.convert("RGBA" if rgba else "RGB"))
        return pixels[..., None]
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * np.uint8(255)
    if pixels.ndim == 2:
        return pixels[..., None]
    if pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    return pixels


def read_pixels(path: str | Path, name: str) -> np.ndarray:
    """Reads a photo file's pixels at full depth; see `decode_pixels`.

    Raises:
        DatasetError: the file is unreadable or not an image.
    """
    return decode_pixels(read_bytes(path, name), name)


def to_channels(image: np.ndarray, channels: int, name: str, error=DatasetError) -> np.ndarray:
    """Brings `(H, W, C)` pixels to `channels` (1 grey or 3 RGB) channels.

    Alpha is dropped; grey is repeated over RGB; RGB becomes grey only when its three
    channels are equal (a grey photo stored as RGB): a colour photo is refused rather than
    silently converted.

    Args:
        image: `(H, W)` or `(H, W, C)`, C = 1 (grey), 3 (RGB) or 4 (RGBA).
        channels: 1 or 3.
        name: The file or array, for the error message.
        error: The exception class to raise. Defaults to `DatasetError`.

    Raises:
        error: a colour image where grey is expected, or an unsupported shape.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise error(
            f"{name} must be (height, width) grey, (height, width, 3) RGB or (height, width, "
            f"4) RGBA. Received: shape={image.shape}."
        )
    if image.shape[2] == 4:
        image = image[..., :3]
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
        return image[..., :1]
    raise error(
        f"{name} is a colour image, but the model takes single-channel (grey) images, as "
        "it was trained on. Convert it to greyscale first."
    )


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when absent)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block says nothing about orientation
        return 1


def canonical_image(
    data: bytes, image: Image.Image | None, suffix: str, apply_orientation: bool
) -> tuple[bytes, str]:
    """Returns the bytes and extension to store for an image in a canonical dataset.

    The original bytes are kept when the format has a canonical extension and no EXIF
    rotation is pending. Otherwise the pixels are written as PNG without EXIF, so every
    reader (Pillow ignores EXIF rotation, OpenCV applies it) sees the same pixel grid.

    Args:
        data: The original file bytes.
        image: `data` decoded, or None for a TIFF only OpenCV reads (kept as it is).
        suffix: The original extension (".JPG", ...), or "" for embedded data.
        apply_orientation: Rotate per EXIF first (what Labelme showed the annotator).
    """
    if image is None:
        return data, suffix.lower()
    if exif_orientation(image) != 1:
        pixels = decode_pixels(data, "image")
        if pixels.dtype != np.uint8:  # Pillow would cut 16-bit RGB to 8 bits
            if apply_orientation:
                raise DatasetError(
                    f"{suffix or 'an embedded image'}: a {pixels.dtype} photo with a pending "
                    "EXIF rotation, which autoseg rotates only for 8-bit photos. Save it "
                    "upright without the EXIF orientation tag."
                )
            return _encode_deep(pixels)
        if apply_orientation:
            image = ImageOps.exif_transpose(image)
        return encode_png(image), ".png"
    extensions = FORMAT_EXTENSIONS.get(image.format or "")
    if not extensions:
        return encode_png(image), ".png"
    # A PNG named .jpg is stored as .png: the extension then tells the truth.
    ext = suffix.lower()
    return data, ext if ext in extensions else extensions[0]


def _encode_deep(pixels: np.ndarray) -> tuple[bytes, str]:
    """`(H, W, C)` RGB(A) pixels deeper than 8 bits, re-encoded at full depth without EXIF:
    PNG for 16-bit integers, TIFF otherwise."""
    order = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}.get(pixels.shape[2])
    stored = cv2.cvtColor(pixels, order) if order is not None else pixels[..., 0]
    ext = ".png" if pixels.dtype == np.uint16 else ".tif"
    ok, encoded = cv2.imencode(ext, stored)
    if not ok:
        raise DatasetError(f"A {pixels.dtype} photo could not be re-encoded as {ext}.")
    return encoded.tobytes(), ext


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
