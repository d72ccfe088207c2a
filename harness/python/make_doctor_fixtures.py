#!/usr/bin/env python3
"""Model folders for `codegen doctor`'s tests that need a changed ONNX graph (the tests make
the other broken folders themselves, from files alone).

    make_doctor_fixtures.py SRC OUT

SRC is the `optimum` folder of make_tiny_models.py. Writes under OUT:
    external/    SRC with its weights in model.onnx.data (valid; the tests truncate the data)
    nan/         SRC with NaN in the output projection: every logit is NaN
    missing-kv/  SRC whose input past_key_values.1.value is renamed (the engine cannot feed it)
    kv-f64/      SRC whose past_key_values inputs are float64 (cast to float32 inside)

Pinned: numpy==2.3.5 onnx==1.19.1 (the tiny-models venv).
"""
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def folder(src, out, name, model, external=False):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for f in JSON_FILES:
        shutil.copy(os.path.join(src, f), os.path.join(d, f))
    if external:
        onnx.save(model, os.path.join(d, "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="model.onnx.data")
    else:
        onnx.save(model, os.path.join(d, "model.onnx"))


def rename_input(graph, old, new):
    for value in graph.input:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]


def main():
    src, out = sys.argv[1], sys.argv[2]
    base = lambda: onnx.load(os.path.join(src, "model.onnx"))  # noqa: E731 - a fresh copy

    folder(src, out, "external", base(), external=True)

    m = base()
    for init in m.graph.initializer:
        if init.name.startswith("lm_"):
            arr = numpy_helper.to_array(init).copy()
            arr[:] = np.nan
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    folder(src, out, "nan", m)

    m = base()
    rename_input(m.graph, "past_key_values.1.value", "past_values.1")
    folder(src, out, "missing-kv", m)

    m = base()
    casts = []
    for value in m.graph.input:
        if value.name.startswith("past_key_values."):
            inner = value.name + ".f32"
            rename_input(m.graph, value.name, inner)
            value.name = inner[: -len(".f32")]
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
            casts.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT))
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(casts + nodes)
    folder(src, out, "kv-f64", m)


if __name__ == "__main__":
    main()
