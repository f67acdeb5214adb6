"""`autoseg prepare SRC --out DATASET`: convert raw annotations to the canonical layout."""

from __future__ import annotations

import argparse

from autoseg.data.dataset import FORMATS

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
    from autoseg.data.dataset import prepare

    dataset = prepare(
        args.src, args.out, format=args.format, labels=args.labels, palette=args.palette,
        overwrite=args.overwrite, skip_orphans=args.skip_orphans,
    )
    print(f"Prepared {dataset.root}: {len(dataset.stems)} images, {dataset.num_classes} classes.")
    print(format_fingerprint(dataset, dataset.fingerprint))
    return 0
