"""The datasets benchmarks run on, made canonical through autoseg's own `prepare`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CWFID = REPO.parent / "shared" / "datasets" / "cwfid_carrot_weed"
CAMVID = REPO.parent / "shared" / "datasets" / "camvid11_train"
#: CWFID's colour masks (its SOURCE.md): black soil, green crop, red weed.
CWFID_PALETTE = {"soil": [0, 0, 0], "crop": [0, 255, 0], "weed": [255, 0, 0]}


def set_threads(threads: int) -> None:
    """Before TensorFlow's import: its thread pools at `threads` each (0: its default), and
    albumentations' update check off."""
    if threads:
        os.environ.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def canonical_dataset(source: Path, tmp: Path, **prepare_options):
    """`(Dataset, how)`: `source` as it is if prepared, else prepared into `tmp/dataset`.

    With `prepare_options` (`prepare`'s own: `format`, `labels`, `ignore_values`, as for
    CamVid) the source is prepared with them. Without, colour-mask sources (images/ + masks/,
    as CWFID) are prepared with the CWFID palette; anything else (Labelme folders such as
    sample/) with `prepare`'s auto-detection. A `tmp/dataset` prepared by an earlier run is
    reused. `tmp` must lie outside the repository: the shared datasets' licences forbid
    copying them into it.
    """
    from autoseg.data.dataset import is_canonical, load_dataset
    from autoseg.data.sources import prepare

    source, tmp = Path(source), Path(tmp).resolve()
    if is_canonical(source):
        return load_dataset(source), "as prepared"
    if tmp.is_relative_to(REPO):
        raise SystemExit(f"{tmp} is inside the repository; prepare datasets outside it "
                         "(their licences forbid redistribution).")
    if is_canonical(tmp / "dataset"):
        return load_dataset(tmp / "dataset"), "prepared by an earlier run"
    tmp.mkdir(parents=True, exist_ok=True)
    if prepare_options:
        return (prepare(source, tmp / "dataset", **prepare_options),
                "autoseg prepare " + ", ".join(f"{k}={v}" for k, v in prepare_options.items()))
    if (source / "masks").is_dir():
        palette = tmp / "palette.yaml"
        palette.write_text(yaml.safe_dump(CWFID_PALETTE, sort_keys=False))
        return (prepare(source, tmp / "dataset", format="color", palette=palette),
                "autoseg prepare --format color with the CWFID palette")
    return prepare(source, tmp / "dataset"), "autoseg prepare"
