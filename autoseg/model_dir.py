"""The layout of an exported model folder: its formats' file names and its metadata file.

`autoseg.export` writes the folder, `autoseg.predict` reads it; both take the names from here,
so neither imports the other for them.
"""

from __future__ import annotations

#: The formats a model folder may hold, in the order export writes them.
FORMATS = ("keras", "saved_model", "tflite", "onnx")
#: Format -> its file (or folder) in the model folder.
FORMAT_FILES = {
    "keras": "model.keras",
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "onnx": "model.onnx",
}
#: The model's description: classes, palette, input size, policy, tta, trial, ...
METADATA_FILE = "autoseg.json"
METADATA_VERSION = 1
