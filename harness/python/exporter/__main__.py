"""Command line: `python -m exporter export|info ...`."""

from __future__ import annotations

import argparse
import json
import sys

from .export import export, main_progress
from .gguf_model import ExportError, GGUFModel
from .graph import PRECISIONS, TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="export a GGUF file to an ONNX model folder")
    ex.add_argument("gguf", help="path to the .gguf file")
    ex.add_argument("--out", required=True, help="model folder to write (replaced if present)")
    ex.add_argument("--target", choices=TARGETS, default="cpu",
                    help="cpu: float32 activations; cuda: float16 activations")
    ex.add_argument("--precision", choices=PRECISIONS, default="int4",
                    help="weight precision of the linear layers")
    info = sub.add_parser("info", help="print the hyper-parameters of a GGUF file as JSON")
    info.add_argument("gguf")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            model = GGUFModel(args.gguf)
            print(json.dumps({"hparams": model.hp.to_dict(), "tensor_types": model.tensor_types()},
                             indent=2))
            return 0
        result = export(args.gguf, args.out, args.target, args.precision, main_progress)
        print(json.dumps(result))
        return 0
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
