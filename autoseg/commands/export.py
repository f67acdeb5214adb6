"""`autoseg export best|TRIAL_ID [--run RUNDIR]`: a trial as a self-describing model folder."""

from __future__ import annotations

from autoseg.tta import CHOICES as TTA_CHOICES  # no TensorFlow: keeps --help quick

FORMAT_NAMES = "keras,saved_model,tflite,onnx"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trial of a search (Keras, SavedModel, TFLite, ONNX)",
        description=(
            "Rebuild a trial's model, load its best-epoch weights and write it as model.keras, "
            "saved_model/, model.tflite and model.onnx with autoseg.json (classes, palette, "
            "input size, policy, metrics) and a copy of the leaderboard. Each format is "
            "checked against model.keras on sample images before the folder is written."
        ),
    )
    p.add_argument("trial", metavar="best|TRIAL_ID",
                   help="`best` (the top COMPLETED trial by the run's objective) or a trial id")
    p.add_argument("--run", metavar="RUNDIR", dest="rundir",
                   help="run folder of `autoseg search` (default: the latest run under ./runs)")
    p.add_argument("--out", metavar="DIR",
                   help="model folder to write (default: exports/<run name>-<trial id>)")
    p.add_argument("--format", metavar="FORMATS", dest="formats",
                   help=f"comma-separated subset of {FORMAT_NAMES} (default: all four; without "
                        "the export extra, all but onnx)")
    p.add_argument("--refit", action="store_true",
                   help="retrain the configuration on train+val for its best epoch count first, "
                        "in the precision the trial trained in")
    p.add_argument("--tta", choices=TTA_CHOICES, default="auto",
                   help="flip test-time augmentation inside every format: h (mirror), hv (mirror "
                        "and upside down), none (the single model, bit for bit); auto (default) "
                        "keeps the best on the run's validation photos")
    p.add_argument("--ensemble", metavar="K", type=int, default=1,
                   help="export the trial averaged with the next best trials that can join it "
                        "(same resizing or crop scale), K models in all, as one model; "
                        "autoseg.json lists the members and each one's validation mean IoU "
                        "and the ensemble's (default: 1, the trial alone)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.set_defaults(run=run)


def run(args) -> int:
    from autoseg.export import export
    from autoseg.tta import describe

    result = export(
        args.trial, run=args.rundir, out=args.out, formats=args.formats, refit=args.refit,
        overwrite=args.overwrite, tta=args.tta, ensemble=args.ensemble,
    )
    for note in result.notes:
        print(f"Note: {note}")
    files = ", ".join(
        name + ("/" if fmt == "saved_model" else "") for fmt, name in result.formats.items()
    )
    members = [m["trial_id"] for m in (result.metadata.get("ensemble") or {}).get("members", [])]
    what = f"the ensemble of trials {', '.join(members)}" if members else f"trial {result.trial_id}"
    print(f"Exported {what} to {result.out}: {files}, autoseg.json, leaderboard.csv")
    print(describe(result.metadata.get("tta")))
    return 0
