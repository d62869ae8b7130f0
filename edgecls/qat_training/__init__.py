"""Quantization-aware training (PT2E, torchao) for every backend edgecls exports to.

    from edgecls import qat, export
    student = qat(model, spec, calib="photos", to="tflite", epochs=3)   # label-free
    export(student, to="tflite", precision="int8", spec=spec)

    edgecls export efficientnet_lite0 --to tflite --int8 --qat --calib photos
    edgecls export mobilenet_v3_large --to onnx,openvino --qat --calib data/unlabelled

Two modes: distillation (default: the FP32 model teaches the fake-quantized student on
unlabelled images) and supervised (`train=` a labelled ImageFolder: cross-entropy plus
distillation). A student is trained for one family of backends (families.py); export()
takes it like a model and writes the artifact from its trained scales. The package is not
called `qat`: importing a submodule binds its name on the package, which would shadow the
function edgecls.qat() (the reason exporting.py is not export.py).

Modules: families (which PT2E quantizer per backend family), litert (litert-torch's
quantizer with its gaps filled), data (the photo-disjoint split, streamed batches),
training (qat(): capture, ranges, epochs, checkpoints), student (what export() takes),
comparison (the PTQ recipe a QAT artifact is shown next to), run (the CLI's driver).

This front imports nothing: run.py is a workflow above exporting.py, which uses student.py
and comparison.py, so a front that imported run.py would make those imports circular. The
public names are edgecls.qat and edgecls.QATStudent (edgecls/__init__.py, lazily).
"""
