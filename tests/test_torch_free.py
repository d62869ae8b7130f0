"""The on-device side needs no torch: `import edgecls` loads none of it, and Classifier on an
.onnx runs where torch, torchvision and timm cannot be imported at all."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxscript", "openvino", "nncf")

# As on a device where torch & co. are not installed: a None in sys.modules makes
# `import torch` raise ModuleNotFoundError and importlib.util.find_spec("torch") say None.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.util, sys
    for _name in ("torch", "torchvision", "timm", "functorch"):
        sys.modules[_name] = None
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")
    assert importlib.util.find_spec("torch") is None
""")

# Harsher: a meta-path finder that refuses torch & co. outright (even find_spec raises).
BLOCK_BY_FINDER = textwrap.dedent("""
    import sys
    class _NoTorch:
        BLOCKED = ("torch", "torchvision", "timm", "functorch")
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked by the test")
            return None
    sys.meta_path.insert(0, _NoTorch())
    for _name in list(sys.modules):
        if _name.split(".")[0] in _NoTorch.BLOCKED:
            del sys.modules[_name]
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")
""")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)


def test_import_edgecls_loads_no_heavy_module():
    code = textwrap.dedent("""
        import json, sys
        import edgecls
        from edgecls import errors, formats, spec
        from edgecls.zoo import list_models
        names = [e.name for e in list_models()]
        print(json.dumps({"loaded": sorted(m for m in sys.modules
                                           if m.split(".")[0] in %r),
                          "models": len(names), "version": edgecls.__version__}))
    """ % (HEAVY,))
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["loaded"] == [], result["loaded"]
    from edgecls.zoo import list_models
    assert result["models"] == len(list_models()) > 30 and result["version"]


def test_lazy_public_api_resolves():
    import edgecls
    from edgecls.classifier import Classifier
    assert edgecls.Classifier is Classifier
    assert set(edgecls.__all__) >= {"Classifier", "ModelSpec", "FORMATS", "list_models"}
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        edgecls.no_such_thing


@pytest.mark.parametrize("blocker", ["not-installed", "finder"])
def test_classifier_runs_without_torch(effl0_onnx, digits_onnx, photo_files, blocker):
    prelude = BLOCK_TORCH if blocker == "not-installed" else BLOCK_BY_FINDER
    code = prelude + textwrap.dedent("""
        import json, sys
        import edgecls
        from edgecls import Classifier, read_spec
        out = {}
        with Classifier(sys.argv[1]) as clf:
            preds = clf.predict([sys.argv[3], sys.argv[4]], topk=3)
            out["effl0"] = [[p.label, p.index, p.score] for p in (r[0] for r in preds)]
        with Classifier(sys.argv[2]) as clf:
            out["digits"] = clf.predict(sys.argv[3])[0].index
        out["spec"] = read_spec(sys.argv[1]).name
        # export needs torch: a clear error naming the extra, not an ImportError traceback
        from edgecls.errors import EdgeclsError
        if sys.argv[5] == "finder":
            out["export_error"] = "skipped"
        else:
          try:
            edgecls.export("efficientnet_lite0", to="onnx", out="never.onnx")
          except EdgeclsError as e:
            out["export_error"] = f"{type(e).__name__}: {e}"
          except ImportError as e:
            out["export_error"] = f"ImportError: {e}"
        out["torch_loaded"] = [m for m, mod in sys.modules.items()
                              if m.split(".")[0] in ("torch", "torchvision", "timm") and mod is not None]
        print(json.dumps(out))
    """)
    files = [str(photo_files["chelsea"]), str(photo_files["coffee"])]
    proc = run_python(code, str(effl0_onnx), str(digits_onnx), *files, blocker)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["torch_loaded"] == []
    assert out["spec"] == "efficientnet_lite0"
    assert out["effl0"][0][0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert out["effl0"][1][0] in {"espresso", "cup", "coffee mug"}
    assert 0 <= out["digits"] <= 9
    # the same answers as with torch importable
    from edgecls.classifier import Classifier
    with Classifier(effl0_onnx) as clf:
        expected = [r[0] for r in clf.predict(files, topk=3)]
    assert [p[1] for p in out["effl0"]] == [p.index for p in expected]
    if blocker == "not-installed":
        assert out["export_error"].startswith("MissingDependencyError"), out["export_error"]
        assert "edgecls[onnx]" in out["export_error"]


def test_cli_predict_without_torch(effl0_onnx, photo_files):
    code = BLOCK_TORCH + textwrap.dedent("""
        import sys
        from edgecls.cli import main
        code = main(sys.argv[1:])
        assert not [m for m, mod in sys.modules.items() if m.split(".")[0] == "torch" and mod]
        raise SystemExit(code)
    """)
    img = str(photo_files["chelsea"])
    proc = run_python(code, "predict", str(effl0_onnx), img, "--json", "--topk", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result[img][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    proc = run_python(code, "info", str(effl0_onnx), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == "efficientnet_lite0"
