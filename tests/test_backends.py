"""The backend contracts: every built-in backend is one package that fills them, the CLI's
format flags come from what the backends declare, options are checked once, and a
third-party package adds a backend through an entry point without touching edgecls."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgecls.backends import BUILTIN
from edgecls.backends.base import ExportOptions, Session
from edgecls.errors import UnsupportedOptionError
from edgecls.formats import FORMATS


@pytest.mark.parametrize("name", BUILTIN)
def test_each_backend_is_one_package_that_fills_the_contracts(name):
    row = FORMATS[name]
    assert row.runtime.startswith(f"edgecls.backends.{name}.")
    runtime = importlib.import_module(row.runtime.partition(":")[0])
    session = getattr(runtime, row.runtime.partition(":")[2])
    assert issubclass(session, Session) and session.format is row
    container = row.load_container()            # a Container: the same names in every backend
    assert isinstance(container.REWRITES_SPEC, bool)
    assert all(callable(getattr(container, member)) for member in ("read_spec", "spec_of",
                                                                    "copy_with_spec"))
    exporter = importlib.import_module(row.exporter.partition(":")[0])
    assert callable(getattr(exporter, row.exporter.partition(":")[2]))
    assert issubclass(row.options, ExportOptions)


def test_options_are_parsed_once_into_the_backends_type():
    from edgecls.backends.onnx import OnnxOptions
    options = OnnxOptions.parse({"opset": "17", "exclude": ["a", "b"], "target": None,
                                 "calib_method": False}, "int8", "onnx")
    assert options == OnnxOptions(opset=17, exclude=("a", "b"))
    assert OnnxOptions.parse({"exclude": []}, "fp32", "onnx") == OnnxOptions()  # not given
    with pytest.raises(UnsupportedOptionError, match="--to onnx does not take --preset, --x-y"):
        OnnxOptions.parse({"preset": "mixed", "x_y": 1}, "int8", "onnx")
    with pytest.raises(UnsupportedOptionError, match=r"option\(s\) exclude, target apply only"):
        OnnxOptions.parse({"exclude": ["a"], "target": "cpu"}, "fp16", "onnx")
    with pytest.raises(UnsupportedOptionError, match="opset must be an integer, not 'x'"):
        OnnxOptions.parse({"opset": "x"}, "fp32", "onnx")


def test_cli_flags_come_from_the_backends():
    """Every declared option is a flag of `edgecls export`; one declared by several backends
    (--calib-method) is one flag; the flags the README shows parse as before."""
    from edgecls.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    export = commands.choices["export"]
    flags = {s for action in export._actions for s in action.option_strings}
    for row in FORMATS.values():
        assert {d.flag for d in row.options.declared()} <= flags, row.name
    calib_method = next(a for a in export._actions if "--calib-method" in a.option_strings)
    assert "onnx:" in calib_method.help and "openvino:" in calib_method.help
    args = parser.parse_args(
        ["export", "m", "--to", "openvino", "--int8", "--calib", "c", "--preset", "mixed",
         "--max-drop", "0.5", "--data", "v", "--ignored-scope", "a", "b", "--static-batch", "4",
         "--bake-preprocessing", "--calib-method", "minmax", "--calib-size", "50"])
    assert (args.preset, args.max_drop, args.data, args.ignored_scope, args.static_batch,
            args.bake_preprocessing, args.calib_size) == ("mixed", 0.5, "v", ["a", "b"], 4,
                                                          True, 50)
    args = parser.parse_args(["export", "m", "--to", "tflite", "--int8", "--int8-io",
                              "--exclude", "none", "--target", "tensorrt", "--opset", "17",
                              "--workspace-gb", "1.5", "--dla-core", "0"])
    assert (args.int8_io, args.exclude, args.target, args.opset, args.workspace_gb,
            args.dla_core) == ("int8", ["none"], "tensorrt", 17, 1.5, 0)
    to = next(a for a in export._actions if "--to" in a.option_strings)
    assert "torch" in to.help and to.type("onnx, torch,onnx") == ["onnx", "torch"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown format 'foo'"):
        to.type("onnx,foo")


def test_an_empty_batch_is_answered_without_the_backend(digits_onnx):
    from edgecls.formats import open_session
    with open_session(digits_onnx) as s:
        out = s.run(np.empty((0,) + s.spec.input_shape()[1:], np.float32))
    assert out.shape == (0, 10) and out.dtype == np.float32


TOY_BACKEND = '''
from dataclasses import dataclass
from edgecls.backends.base import ExportOptions, Format, option

@dataclass(frozen=True)
class ToyOptions(ExportOptions):
    toy_level: int | None = option("how toy-like")

FORMAT = Format("toy", (".toy",), runtime="edgecls_toy:Session", requires=(), extra="toy",
                container="edgecls_toy", options=ToyOptions, description="a toy backend")
'''


def test_a_third_party_package_adds_a_backend(tmp_path):
    (tmp_path / "edgecls_toy").mkdir()
    (tmp_path / "edgecls_toy" / "__init__.py").write_text(TOY_BACKEND)
    dist = tmp_path / "edgecls_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgecls-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[edgecls.backends]\ntoy = edgecls_toy:FORMAT\n"
                                           "broken = edgecls_no_such_module:FORMAT\n"
                                           "clash = edgecls.backends.onnx:FORMAT\n")
    code = textwrap.dedent("""
        import json
        from edgecls.formats import FORMATS, format_for_path
        print(json.dumps({"names": list(FORMATS), "suffix": format_for_path("m.toy").name}))
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    from edgecls.backends import BUILTIN
    names = json.loads(proc.stdout)["names"]
    assert names == [*BUILTIN, "toy"]                  # after every built-in, in their order
    assert '"suffix": "toy"' in proc.stdout
    assert "'broken'" in proc.stderr and "does not load" in proc.stderr   # said, not fatal
    assert "'clash'" in proc.stderr and "reuses" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "edgecls", "export", "--help"],
                          capture_output=True, text=True, env={**env, "COLUMNS": "200"},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--toy-level TOY_LEVEL" in proc.stdout and "toy: how toy-like" in proc.stdout
