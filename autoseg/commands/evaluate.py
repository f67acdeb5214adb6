"""`autoseg evaluate MODEL_DIR --dataset PATH`: IoU, dice and accuracy at full resolution."""

from __future__ import annotations

SPLITS = ("val", "test", "all")
FORMATS = ("keras", "saved_model", "tflite", "onnx")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score an exported model on a dataset (IoU, dice, confusion matrix)",
        description=(
            "Predict every image of a split at its original size and score it against its "
            "mask with the training metrics' code (255 = ignore): mean and per-class IoU, "
            "dice, pixel accuracy, and the confusion matrix as CSV and PNG."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by `autoseg export`")
    p.add_argument("--dataset", required=True, metavar="PATH", help="a prepared dataset")
    p.add_argument(
        "--split", choices=SPLITS, default="val",
        help="val (default): the search's validation split if PATH is the run's dataset, "
             "else dataset.yaml's splits.val, else every image; test: dataset.yaml's "
             "splits.test; all: every image",
    )
    p.add_argument("--out", metavar="DIR",
                   help="results folder (default: MODEL_DIR/eval-<dataset name>)")
    p.add_argument("--format", choices=FORMATS, default="keras",
                   help="model file to run (default: keras)")
    p.add_argument("--tile-overlap", type=int, default=0, metavar="PIXELS",
                   help="pixels shared by neighbouring tiles for a crop-policy model; overlapping "
                        "scores are averaged (default: 0, the tiling validation scored)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that does not hold an earlier evaluation")
    p.set_defaults(run=run)


def run(args) -> int:
    from autoseg.evaluate import evaluate, format_report

    result = evaluate(args.model_dir, args.dataset, split=args.split, out=args.out,
                      format=args.format, overwrite=args.overwrite,
                      tile_overlap=args.tile_overlap)
    print(format_report(result))
    print(f"Wrote {result.out}/: metrics.json, confusion_matrix.csv, confusion_matrix.png, "
          "per_image.csv")
    return 0
