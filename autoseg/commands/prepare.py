"""`autoseg prepare SRC --out DATASET`: convert raw annotations to the canonical layout."""

from __future__ import annotations

import argparse

from autoseg.data.sources import FORMATS

DESCRIPTION = """\
Convert Labelme files or images/ + masks/ folders into a canonical dataset:
DATASET/images/, DATASET/masks/ (class-index PNGs, 255 = ignore) and DATASET/dataset.yaml.
The dataset is written whole or not at all.

formats (--format auto picks one):
  labelme  *.json files with `shapes` (polygon, rectangle, circle, line, linestrip,
           point, mask); classes from --labels, SRC/labels.txt, or the labels found
  color    SRC/images/ + SRC/masks/ RGB masks; one colour per class, from --palette
           or discovered (black = background, then sorted by R, G, B)
  index    SRC/images/ + SRC/masks/ single-channel masks holding class indices
           (255 = ignore; masks holding only 0 and 255 are refused: use binary)
  binary   SRC/images/ + SRC/masks/ masks of 0 (background) and one other value,
           e.g. 255 or 1 (foreground); auto picks it for masks of only 0 and 255
           or only 0 and 1

--ignore-values V [V ...] (index and binary masks): those mask values become 255
(ignored) and their names leave the class list, e.g. CamVid's void:
  autoseg prepare camvid --out data/camvid --format index \\
      --labels camvid/labels.txt --ignore-values 11

Photos: grey photos stay single-channel when every photo is grey; photos deeper than
8 bits (16-bit or float PNG/TIFF) are read at full depth and scaled to 0..255 by a
rule recorded in dataset.yaml (`intensity`, the 0.5th-99.5th percentiles).

--palette YAML, classes in index order:
  background: [0, 0, 0]
  crop: [0, 255, 0]
  weed: [255, 0, 0]
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="convert Labelme files or colour/index masks into a canonical dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="the raw source folder")
    parser.add_argument("--out", required=True, metavar="DATASET", help="the folder to write")
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="source format (default: auto)"
    )
    parser.add_argument(
        "--labels", metavar="FILE",
        help="class names, one a line, in index order (labelme2voc labels.txt: "
        "__ignore__ -> 255, _background_ -> 0, then 1, 2, ...)",
    )
    parser.add_argument(
        "--palette", metavar="FILE", help="YAML mapping class name -> [R, G, B] for colour masks"
    )
    parser.add_argument(
        "--ignore-values", metavar="V", nargs="+", type=int, default=None,
        help="index or binary mask values to ignore: they become 255 and their names leave "
        "the class list (e.g. --ignore-values 11 for CamVid's void)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DATASET if it exists and is not empty"
    )
    parser.add_argument(
        "--skip-orphans", action="store_true",
        help="leave out images without annotation and masks without image (with a warning)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from autoseg.commands.info import format_fingerprint
    from autoseg.data.dataset import check_trainable, warn
    from autoseg.data.sources import prepare
    from autoseg.errors import DatasetError

    dataset = prepare(
        args.src, args.out, format=args.format, labels=args.labels, palette=args.palette,
        overwrite=args.overwrite, skip_orphans=args.skip_orphans,
        ignore_values=args.ignore_values,
    )
    print(f"Prepared {dataset.root}: {len(dataset.stems)} images, {dataset.num_classes} classes.")
    print(format_fingerprint(dataset, dataset.fingerprint))
    try:
        check_trainable(dataset)
    except DatasetError as exc:  # written as asked, but search, export and evaluate refuse it
        warn(f"{exc}")
    return 0
