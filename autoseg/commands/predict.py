"""`autoseg predict MODEL_DIR INPUT... --out DIR`: class masks, colour masks and overlays."""

from __future__ import annotations

import sys

FORMATS = ("keras", "saved_model", "tflite", "onnx")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images with an exported model",
        description=(
            "Segment image files and folders with a model folder written by `autoseg export`. "
            "For each image, at its original size: <stem>_mask.png (class index), "
            "<stem>_color.png (palette colours) and <stem>_overlay.png (photo, mask and legend). "
            "Unreadable images are reported and skipped; the exit code is then 1."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by `autoseg export`")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--format", choices=FORMATS, default="keras",
                   help="model file to run (default: keras; tflite and onnx are faster on CPU)")
    p.add_argument("--tile-overlap", type=int, default=0, metavar="PIXELS",
                   help="pixels shared by neighbouring tiles for a crop-policy model; overlapping "
                        "scores are averaged (default: 0, the tiling validation scored)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false",
                   help="do not write <stem>_overlay.png")
    p.set_defaults(run=run)


def run(args) -> int:
    from autoseg.predict import predict

    report = predict(args.model_dir, args.inputs, args.out, format=args.format,
                     tile_overlap=args.tile_overlap, overlay=args.overlay)
    done = len(report.written)
    print(f"Predicted {done} image(s) into {args.out} (flip TTA: {report.tta})"
          + (f"; {len(report.failed)} could not be read" if report.failed else ""))
    if report.failed:
        print(
            f"Error: {len(report.failed)} of {done + len(report.failed)} input(s) failed: "
            + ", ".join(str(path) for path, _ in report.failed[:5])
            + (" ..." if len(report.failed) > 5 else ""),
            file=sys.stderr,
        )
        return 1
    return 0
