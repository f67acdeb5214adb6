"""One module per CLI subcommand: `add_parser(subparsers)` and `run(args) -> int`.

These modules must not import TensorFlow or Keras at module level: `--help` stays fast.
"""
