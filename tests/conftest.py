"""Shared fixtures: real-data locations (skipped where absent) and tiny synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True, scope="session")
def _private_dataset_cache(tmp_path_factory):
    """Raw sources that tests resolve are cached in a temp dir, not in ~/.cache."""
    os.environ["AUTOSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("dataset-cache"))


@pytest.fixture(autouse=True, scope="session")
def _no_model_cost_cache():
    """Every test measures its models (some patch what a measurement depends on); the
    cache's own tests point `AUTOSEG_MODEL_CACHE` at a temp file."""
    os.environ["AUTOSEG_MODEL_CACHE"] = "off"


@pytest.fixture
def explore_at_any_budget(monkeypatch):
    """Exploration wherever it fits (`--explore always`), for the tests of exploration itself
    (forks, brackets, the finish), whose budgets are a CPU's: whether a plan explores at all
    (`plan.EXPLORE_AFTER_IMAGES`) is tests/test_explore.py's. This process only: a search
    whose trials run in their own processes needs `explore="always"`, which its plan carries."""
    from autoseg import plan

    monkeypatch.setattr(plan, "EXPLORE_AFTER_IMAGES", 0)


def _shared(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/datasets beside the repo)")
    return path


@pytest.fixture
def cwfid_dir() -> Path:
    """CWFID carrot/weed photos with RGB colour masks (../shared/datasets)."""
    return _shared("cwfid_carrot_weed")


@pytest.fixture
def camvid_dir() -> Path:
    """CamVid frames with index masks, 11 = void (../shared/datasets)."""
    return _shared("camvid11_train")


@pytest.fixture
def labelme_examples_dir() -> Path:
    """Real Labelme files with labelme's own reference masks (../shared/datasets)."""
    return _shared("labelme_examples")


def write_canonical_dataset(
    root: Path,
    num_images: int = 6,
    size: tuple[int, int] = (48, 64),
    classes: tuple[str, ...] = ("background", "crop", "weed"),
    seed: int = 0,
) -> Path:
    """Writes a tiny learnable canonical dataset: coloured discs on textured soil.

    Each class > 0 is drawn as discs of its own colour, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    colours = np.array([[120, 90, 60], [40, 200, 40], [220, 40, 40], [40, 40, 220]])
    yy, xx = np.mgrid[:h, :w]
    for i in range(num_images):
        mask = np.zeros((h, w), np.uint8)
        for c in range(1, len(classes)):
            for _ in range(2):
                cy, cx = rng.integers(0, h), rng.integers(0, w)
                r = rng.integers(max(3, h // 10), max(4, h // 4))
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c
        image = colours[mask % len(colours)] + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            root / "images" / f"img{i:03d}.png"
        )
        Image.fromarray(mask).save(root / "masks" / f"img{i:03d}.png")
    meta = {
        "classes": list(classes),
        "palette": [[0, 0, 0], [0, 255, 0], [255, 0, 0], [0, 0, 255]][: len(classes)],
        "ignore_index": 255,
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A canonical dataset of 6 images, 48x64, 3 classes."""
    return write_canonical_dataset(tmp_path / "tiny")
