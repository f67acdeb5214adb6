"""The datasets benchmarks run on, made canonical through autoseg's own `prepare`."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CWFID = REPO.parent / "shared" / "datasets" / "cwfid_carrot_weed"
#: CWFID's colour masks (its SOURCE.md): black soil, green crop, red weed.
CWFID_PALETTE = {"soil": [0, 0, 0], "crop": [0, 255, 0], "weed": [255, 0, 0]}


def canonical_dataset(source: Path, tmp: Path):
    """`(Dataset, how)`: `source` as it is if prepared, else prepared into `tmp/dataset`.

    Colour-mask sources (images/ + masks/, as CWFID) are prepared with the CWFID palette;
    anything else (Labelme folders such as sample/) with `prepare`'s auto-detection.
    """
    from autoseg.data.dataset import is_canonical, load_dataset, prepare

    source, tmp = Path(source), Path(tmp)
    if is_canonical(source):
        return load_dataset(source), "as prepared"
    if (source / "masks").is_dir():
        palette = tmp / "palette.yaml"
        palette.write_text(yaml.safe_dump(CWFID_PALETTE, sort_keys=False))
        return (prepare(source, tmp / "dataset", format="color", palette=palette),
                "autoseg prepare --format color with the CWFID palette")
    return prepare(source, tmp / "dataset"), "autoseg prepare"
