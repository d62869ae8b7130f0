"""Untrusted ONNX files: external data must stay inside the model's folder."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecls.errors import ArtifactError
from edgecls.backends.onnx.runtime import OnnxRuntimeSession


def test_external_data_outside_the_model_folder_is_refused(tmp_path, digits_onnx):
    from edgecls.formats import read_spec
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../secret.bin", "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, {"edgecls.spec": read_spec(digits_onnx).to_json()})
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ArtifactError, match="escapes model directory|cannot load"):
        OnnxRuntimeSession(path)
