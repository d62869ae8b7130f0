"""Resolvers for the sources that give a torch module (the rows of edgecls.sources).

Each is (text, SourceRequest) -> Resolved, with a spec holding the model's own
preprocessing: the builder's metadata (zoo, timm, torchvision), the spec inside an edgecls
.pt2, the program's input shape, else ImageNet's defaults (said in a warning unless the
user gave --mean/--std). torch is imported when a resolver runs, not with the table.
"""
from __future__ import annotations

import importlib
import logging
import sys
import zipfile
from pathlib import Path
from typing import Any

import edgecls.backends.torch.program as torch_program   # an attribute: tests replace load_program
from edgecls import zoo
from edgecls.backends.torch.container import spec_text
from edgecls.errors import ArtifactError, SourceError, UnknownModelError, first_line
from edgecls.sources.kinds import BY_NAME, Resolved, SourceRequest
from edgecls.spec import ModelSpec, safe_name
from edgecls.zoo import ZooEntry
from edgecls.zoo.torchvision_shim import import_torchvision

log = logging.getLogger("edgecls")


# -- architectures with weights: zoo, timm, torchvision, module:function -----------------------
def in_zoo(text: str) -> bool:
    """Whether `text` is a zoo name (or alias): what a recorded zoo reference must be."""
    try:
        zoo.get_entry(text)
    except UnknownModelError:
        return False
    return True


def zoo_model(text: str, request: SourceRequest) -> Resolved:
    model, spec = zoo.build(text, request.weights, request.num_classes, request.labels)
    return Resolved(BY_NAME["zoo"], spec, model)


def timm_model(text: str, request: SourceRequest) -> Resolved:
    from edgecls.zoo.builders import build_model  # imports torchvision before timm
    import timm
    name = text.removeprefix("timm:")
    if not timm.is_model(name):
        raise UnknownModelError(text, [f"timm:{n}" for n in timm.list_models()],
                                "timm.list_models() lists them")
    return _built(BY_NAME["timm"], "timm", name, request, build_model)


def torchvision_model(text: str, request: SourceRequest) -> Resolved:
    from edgecls.zoo.builders import build_model   # torch, torchvision
    tv = import_torchvision()
    name = text.removeprefix("torchvision:")
    classifiers = tv.models.list_models(module=tv.models)
    if name not in classifiers:
        if name in tv.models.list_models():
            raise SourceError(f"{text} is not an image classifier (it is a detection, "
                              "segmentation or video model); edgecls exports classifiers")
        raise UnknownModelError(text, [f"torchvision:{n}" for n in classifiers],
                                "torchvision.models.list_models() lists them")
    return _built(BY_NAME["torchvision"], "torchvision", name, request, build_model)


def _built(kind, library: str, name: str, request: SourceRequest, build_model) -> Resolved:
    """A library's model through the zoo's builder: the same weights handling (pretrained,
    none, a checkpoint) and the library's own preprocessing metadata."""
    entry = ZooEntry(name.split(".")[0], library, library, name)
    model, spec = build_model(entry, request.weights, request.num_classes, request.labels)
    return Resolved(kind, spec, model)


def factory(text: str, request: SourceRequest) -> Resolved:
    """module:function, called with --kwargs; the module is found on sys.path, then in the
    current folder (where `python -m` would find it too)."""
    import torch

    module_name, _, function_name = text.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SourceError(f"{text}: cannot import {module_name} ({first_line(e)}); is its "
                          "package installed, or its file in the current folder?") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise SourceError(f"{text}: {module_name} has no function {function_name}")
    kwargs = request.kwargs or {}
    try:
        model = function(**kwargs)
    except Exception as e:  # the user's code: any error is theirs to read
        raise SourceError(f"{text}(**{kwargs}) failed: {type(e).__name__}: "
                          f"{first_line(e, 200)}") from None
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{text} returned {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    name = safe_name(f"{module_name.rsplit('.', 1)[-1]}_{function_name}")  # graynet_build
    spec = _unknown_preprocessing(name, f"factory:{text}", request)
    return Resolved(BY_NAME["factory"], _with_weights(model, spec, request), model)


def given_module(module: Any, request: SourceRequest) -> Resolved:
    if request.spec is None:
        raise TypeError("export(torch_module, ...) needs spec=ModelSpec(...)")
    return Resolved(BY_NAME["module"], request.spec, module.eval())


def _with_weights(model, spec: ModelSpec, request: SourceRequest) -> ModelSpec:
    """--weights PATH (a state_dict or checkpoint, loaded safely), none, or as built."""
    from edgecls.zoo.builders import load_checkpoint   # torch
    if request.weights == "none":
        return spec.derive(weights="none", trained=False)
    if request.weights == "pretrained":     # the default: whatever the factory gave
        return spec.derive(weights=f"pretrained:{spec.architecture}")
    path = Path(request.weights)
    load_checkpoint(model, path)
    return spec.derive(weights=f"file:{path.resolve()}")


# -- files with their weights inside: .pt2 programs, TorchScript and pickled modules ---------
def program(text: str, request: SourceRequest) -> Resolved:
    """A torch.export program; an edgecls .pt2 brings its spec, any other its input shape."""
    path = _existing(text)
    with open(path, "rb") as f:
        embedded = spec_text(f, path)
        # (checked before torch reads anything else of the file)
        spec = ModelSpec.from_json(embedded, str(path)) if embedded else None
        f.seek(0)
        ep = torch_program.load_program(f, path, request.trust_remote_code)
    shape = _program_input_shape(ep, path)
    if spec is not None:
        spec = spec.derive(format="torch", precision="fp32", quantization=None, parent=None,
                           notes={})
    else:
        spec = _unknown_preprocessing(safe_name(path.stem), f"program:{path.name}", request)
        spec = spec.derive(weights=f"file:{path}")
    if isinstance(shape[2], int) and isinstance(shape[3], int):
        spec = spec.derive(input_size=(shape[2], shape[3]))
    if isinstance(shape[1], int):
        spec = spec.derive(channels=shape[1])
    module = ep.module()
    # The program was traced in the mode it was saved in; torch refuses train()/eval() on it
    # only because they change nothing. Exporters that wrap it (TFLite's NHWC input) call
    # eval() on the wrapper, so the refusal goes.
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return Resolved(BY_NAME["program"], spec, module, path)


def _program_input_shape(ep, path: Path) -> tuple:
    """The user input's shape, ints for static dims; one NCHW image batch with a dynamic
    batch dimension, or a one-line error."""
    users = list(ep.graph_signature.user_inputs)
    if len(users) != 1:
        raise SourceError(f"{path}: the program takes {len(users)} inputs; edgecls exports "
                          "classifiers of one image batch")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == users[0])
    val = node.meta.get("val")
    shape = tuple(d if isinstance(d, int) else str(d) for d in val.shape)  # str: symbolic
    if len(shape) != 4:
        raise SourceError(f"{path}: the program's input has shape {shape}; edgecls feeds "
                          "NCHW image batches")
    if isinstance(shape[0], int):
        raise SourceError(f"{path}: the program was exported with a fixed batch of {shape[0]}; "
                          "export it with a dynamic batch: torch.export.export(model, (x,), "
                          "dynamic_shapes=({0: torch.export.Dim('batch')},))")
    if isinstance(shape[1], int) and shape[1] not in (1, 3) and shape[3] in (1, 3):
        raise SourceError(f"{path}: the program's input {shape} looks channels-last (NHWC); "
                          "edgecls feeds torch models NCHW")
    return shape


def module_file(text: str, request: SourceRequest) -> Resolved:
    """TorchScript or a pickled whole module: only with --trust-remote-code."""
    import torch
    path = _existing(text)
    torchscript = _is_torchscript(path)
    if not request.trust_remote_code:
        if not torchscript and _holds_weights(path):
            raise SourceError(f"{path} holds weights (a state_dict), not a model: name its "
                              f"architecture and pass --weights {path}")
        what = "a TorchScript module" if torchscript else "a pickled module (or not a model)"
        raise SourceError(f"{path} is {what}: loading it runs code from the file, so edgecls "
                          "does not; pass --trust-remote-code if you trust it, or give a "
                          ".pt2 program (torch.export.save) or an ONNX file")
    try:
        model = (torch.jit.load(str(path), map_location="cpu") if torchscript else
                 torch.load(path, map_location="cpu", weights_only=False))
    except Exception as e:  # whatever the file's code raises
        raise ArtifactError(f"{path}: cannot load it ({type(e).__name__}: "
                            f"{first_line(e, 200)})") from None
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"{path} holds {type(model).__name__}, not a torch.nn.Module")
    spec = _unknown_preprocessing(safe_name(path.stem), f"module-file:{path.name}", request)
    return Resolved(BY_NAME["module-file"], spec.derive(weights=f"file:{path}"), model.eval(),
                    path)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with the module's code under code/."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _holds_weights(path: Path) -> bool:
    """A state_dict or checkpoint: loads with weights_only (which runs no code)."""
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a pickle of anything else: not weights
        return False
    return isinstance(obj, dict)


def _existing(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise SourceError(f"{text}: no such file")
    return path.resolve()


def _unknown_preprocessing(name: str, architecture: str, request: SourceRequest) -> ModelSpec:
    """A spec for a model that brings no preprocessing: ImageNet's, said out loud."""
    if request.like is None and not {"mean", "std"} <= request.preprocessing.given():
        log.warning("%s carries no preprocessing: assuming ImageNet's mean/std (and 224 px, "
                    "resize 256) where not given; pass --input-size/--resize/--mean/--std if it "
                    "was trained otherwise", name)
    return ModelSpec(name=name, architecture=architecture, num_classes=0, labels=[])


# -- the check every torch source gets -----------------------------------------------------------
__all__ = ["in_zoo", "zoo_model", "timm_model", "torchvision_model", "factory", "given_module", "program",
           "module_file"]
