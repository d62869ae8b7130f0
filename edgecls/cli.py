"""`edgecls` command line: one subcommand = one public function; no logic of its own.

The flags for format options are made from what export() and each backend declare
(ExportOptions), so a new backend's options appear here without an edit.
User errors (EdgeclsError) print one line and exit 2; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edgecls import hardware, targets
from edgecls.demo import demo
from edgecls.errors import EdgeclsError, UnsupportedOptionError
from edgecls.formats import DEVICES, FORMATS, read_spec
from edgecls.imaging.options import PreprocessingOptions
from edgecls.options import Declared
from edgecls.report.escape import term_markup, term_text, visible, visible_log_record
from edgecls.sources import KINDS, parse_kwargs
from edgecls.verdict import EXIT_STATUS
from edgecls.zoo import list_models, read_labels

# Each command imports the engine it drives when it runs (the exporters, Classifier, parity,
# bench, sweep: OpenCV, and torch behind them), so `edgecls --help`, `formats`, `info`,
# `models` and `hw` load none of them.


def _console():
    """rich's console; when output is piped (no terminal width) tables get 160 columns
    instead of rich's default 80, which would fold every cell."""
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=160)


# -- subcommands ---------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    table = Table("name", "family", "source", "input", "pretrained", "note", title="the zoo")
    for e in list_models():
        table.add_row(e.name, e.family, e.source, f"{e.input_size}", "yes" if e.pretrained else "no",
                      e.note)
    _console().print(table)
    sources = Table("model source", "example", "what it is",
                    title="what `edgecls export MODEL` takes (tried in this order)")
    for kind in KINDS:
        sources.add_row(kind.name, kind.example, kind.description)
    _console().print(sources)
    return 0


def cmd_formats(args: argparse.Namespace) -> int:
    from rich.table import Table
    table = Table("format", "suffixes", "precisions", "devices", "export options", "installed",
                  "pip extra", "runtime")
    for f in FORMATS.values():
        table.add_row(f.name, " ".join(f.suffixes), " ".join(f.precisions), " ".join(f.devices),
                      " ".join(d.flag for d in f.options.declared()),
                      "yes" if f.available() else "[red]no[/red]", f.extra, f.description)
    _console().print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgecls.api import export
    from edgecls.exporting import options_for, output_for
    precision = "int8" if args.int8 or args.qat else "fp16" if args.fp16 else "fp32"
    options = {name: getattr(args, name) for name in args.format_options}
    preprocessing = {name: getattr(args, name) for name in args.preprocessing_options}
    labels = read_labels(Path(args.labels)) if args.labels else None
    common = dict(weights=args.weights, num_classes=args.num_classes, labels=labels,
                  calib=args.calib, calib_size=args.calib_size, check=not args.no_check,
                  strict=args.strict, preprocessing=preprocessing,
                  model_kwargs=parse_kwargs(args.kwargs), trust_remote_code=args.trust_remote_code,
                  force=args.force)
    if args.qat:
        if args.fp16:
            raise UnsupportedOptionError("--qat makes INT8 artifacts; it does not go with --fp16")
        from edgecls.qat_training.run import export_with_qat
        outs = export_with_qat(args.model, args.to, args.output, train=args.train,
                               epochs=args.epochs, lr=args.lr, resume=args.resume,
                               options=options, **common)
    else:
        outs = [export(args.model, to=fmt, out=output_for(args.output, args.to),
                       precision=precision, options=options_for(fmt, options, args.to), **common)
                for fmt in args.to]
    for out in outs:
        _console().print(f"[green]wrote[/green] {term_markup(out)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    for path in args.artifacts:
        spec = read_spec(path)
        if args.json:
            print(spec.to_json())
            continue
        from rich.table import Table

        table = Table("field", "value", title=term_text(path))   # the spec's text shown, not obeyed
        for k, v in spec.summary().items():
            shown = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
            table.add_row(term_text(k), term_text(shown))
        _console().print(table)
    return 0


def cmd_hw(args: argparse.Namespace) -> int:
    from rich.table import Table

    info = hardware.describe(probe_devices=True)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = _console()
    table = Table("", "", title="this machine", show_header=False)
    auto = targets.resolve("auto")
    for key, value in (("cpu", f"{info['cpu']} ({info['arch']}, {info['cores']} cores)"),
                       ("int8 isa", info["int8_isa"]),
                       ("int8 flags", " ".join(info["int8_flags"]) or "-"),
                       ("u8*s8 saturates", "yes (no VNNI: VPMADDUBSW's 16-bit sums)"
                        if info["u8s8_saturates"] else "no"),
                       ("--target auto", f"{auto.name}: {auto.description}"),
                       ("openvino int8 isa", info.get("openvino_int8_isa", info["int8_isa"])),
                       ("os / python", f"{info['os']} / {info['python']}")):
        table.add_row(key, value)
    console.print(table)
    runtimes = Table("runtime", "package", "version", "devices", "note", title="runtimes")
    for rt in info["runtimes"]:
        runtimes.add_row(rt["name"], rt["package"], rt["version"] or "[red]not installed[/red]",
                         ", ".join(rt["devices"]), rt["note"])
    console.print(runtimes)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from edgecls.classifier import Classifier
    opts = {"delegate": args.delegate} if args.delegate else {}
    if args.precise_int8:
        opts["precise_int8"] = True
    with Classifier(args.artifact, device=args.device, threads=args.threads,
                    fallback=args.fallback, **opts) as clf:
        results = clf.predict(list(args.images), topk=args.topk)
    if args.json:
        print(json.dumps({str(img): [p._asdict() for p in preds]
                          for img, preds in zip(args.images, results)}, indent=2))
        return 0
    from rich.table import Table

    for img, preds in zip(args.images, results):
        table = Table("rank", "label", "index", "score", title=term_text(img))   # labels from the artifact: text
        for i, p in enumerate(preds, 1):
            table.add_row(str(i), term_text(p.label), str(p.index), f"{p.score:.4f}")
        _console().print(table)
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from edgecls.verification import parity
    report = parity(args.artifacts, data=args.data, reference=args.reference,
                    max_drop=args.max_drop, limit=args.limit, out=args.output,
                    calib=args.calib, device=args.device, threads=args.threads,
                    options=_session_options(args),
                    trust_remote_code=args.trust_remote_code)
    report.print()
    return EXIT_STATUS[report.outcome]


def cmd_bench(args: argparse.Namespace) -> int:
    from edgecls.bench import bench
    result = bench(args.artifacts, batch_sizes=args.batch, threads=args.threads,
                   device=args.device, seconds=args.seconds, options=_session_options(args))
    result.print()
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from edgecls.sweep import sweep
    table = sweep(args.models, to=_listed(args.to), precisions=_listed(args.precision),
                  families=_listed(args.families), weights=args.weights, calib=args.calib,
                  calib_size=args.calib_size, recipes=_listed(args.calib_method) or ("",),
                  data=args.data, max_drop=args.max_drop, out=args.output, address=args.address,
                  cpus=args.cpus, threads=args.threads, batch=args.batch, seconds=args.seconds,
                  retry_failed=args.retry_failed, dry_run=args.dry_run)
    table.print(_console())
    if args.dry_run:
        return 0
    _console().print(f"[green]wrote[/green] {term_markup(args.output)}/sweep.{{md,csv,json,html}}")
    return 0


def _listed(values: list[str] | None) -> tuple[str, ...]:
    """Comma- or space-separated flag values: --to onnx,openvino or --to onnx openvino."""
    return tuple(v for value in values or () for v in value.split(",") if v)


def cmd_demo(args: argparse.Namespace) -> int:
    return demo(out=Path(args.output))


# -- parser --------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors (`--to coreml`, a missing argument) take the same form
    as every other user error: one `edgecls: error:` line, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"edgecls: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgecls", description="Export, quantize, run and verify "
                "image classifiers on edge runtimes.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list every model name")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("hw", help="this machine: CPU INT8 instruction set, runtimes, devices")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_hw)

    s = sub.add_parser("formats", help="list the artifact formats and what they support")
    s.set_defaults(func=cmd_formats)

    s = sub.add_parser("export", help="export (and quantize) a model to an artifact")
    s.add_argument("model", help="a zoo name, timm:NAME, torchvision:NAME, a .pt2 program, "
                   "module:function, or an FP32 .onnx file (see `edgecls models`)")
    s.add_argument("--to", default=["onnx"], type=_format_list, metavar="FORMAT[,FORMAT...]",
                   help=f"{', '.join(_exportable())}; several, comma-separated, export each; or "
                   "best: the fastest artifact on this machine within tolerance, of every "
                   "installed backend")
    s.add_argument("-o", "--output", help="artifact path, or a folder for the default name "
                   "(an existing one, or a path ending in /); default out/<model>[.<precision>].<ext>")
    s.add_argument("--force", action="store_true",
                   help="replace output files that exist (every file of the artifact, e.g. an "
                   "OpenVINO .bin); an output that is an input is refused even so")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--fp16", action="store_true", help="FP16 weights/compute")
    g.add_argument("--int8", action="store_true", help="INT8 post-training quantization")
    s.add_argument("--weights", default="pretrained",
                   help="for zoo, timm:, torchvision: and module:function models: pretrained "
                   "(default; a factory's own) | PATH to a state_dict/checkpoint | none (random)")
    s.add_argument("--num-classes", type=int, help="classes of a fine-tuned --weights PATH")
    s.add_argument("--kwargs", help="module:function sources: its keyword arguments, as JSON")
    _add_trust(s)
    s.add_argument("--labels", help="text file, one label per line")
    s.add_argument("--calib", help="calibration images: a folder, or photos / digits")
    s.add_argument("--calib-size", type=int, help="calibration subset size (default 300)")
    s.add_argument("--strict", action="store_true", help="exit 1 when INT8 parity fails")
    from edgecls.qat_training.training import LEARNING_RATES   # torch-free, like the parser
    q = s.add_argument_group("quantization-aware training (--qat)")
    q.add_argument("--qat", action="store_true",
                   help="INT8 by quantization-aware training (PT2E), one student per family of "
                        "formats: label-free distillation on --calib, or supervised on --train")
    q.add_argument("--train", help="labelled images (one subfolder per class, or digits): "
                                   "supervised QAT")
    q.add_argument("--epochs", type=int, default=3, help="QAT epochs (default 3; stops early "
                                                         "when held-out agreement stalls)")
    q.add_argument("--lr", type=float, help="QAT learning rate (default: one training each at "
                   f"{' and '.join(f'{r:g}' for r in LEARNING_RATES)}, the selection images "
                   "choose)")
    q.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint next to the artifact")
    s.add_argument("--no-check", action="store_true",
                   help="skip the check against the reference (PyTorch, or the source ONNX)")
    s.set_defaults(func=cmd_export, format_options=_add_format_options(
        s.add_argument_group("format options (see `edgecls formats`)")),
        preprocessing_options=_add_preprocessing_options(s.add_argument_group(
            "preprocessing (default: the model's own, else ImageNet's)")))

    s = sub.add_parser("info", help="show the ModelSpec embedded in artifacts")
    s.add_argument("artifacts", nargs="+")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("predict", help="classify images with an artifact")
    s.add_argument("artifact")
    s.add_argument("images", nargs="+")
    s.add_argument("--topk", type=int, default=5)
    _add_runtime_args(s, fallback=True)
    s.add_argument("--delegate", help="TFLite delegate library (gpu/npu)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("parity", help="compare artifacts with their PyTorch reference",
                       epilog="exit status: 0 every artifact passes, 1 one fails, 3 none "
                              "fails but one is inconclusive (more images would decide it), "
                              "2 bad input")
    s.add_argument("artifacts", nargs="+")
    s.add_argument("--data", default="photos", help="validation folder or photos / digits")
    s.add_argument("--calib", help="the calibration folder, to detect overlap with --data")
    s.add_argument("--reference", action="append",
                   help="an FP32 artifact to compare with, or what the reference the artifacts' "
                   "spec records is built from: its model source and/or its weights file (give "
                   "--reference twice for both); default: rebuilt from the spec")
    _add_trust(s)
    s.add_argument("--max-drop", type=float, help="INT8 accuracy drop allowed, in points")
    s.add_argument("--limit", type=int, help="use at most this many images")
    s.add_argument("-o", "--output", help="folder for report.{json,md,html}")
    _add_runtime_args(s)
    s.set_defaults(func=cmd_parity)

    s = sub.add_parser("bench", help="latency / throughput / memory of artifacts")
    s.add_argument("artifacts", nargs="+")
    s.add_argument("--batch", type=int, nargs="+", default=[1])
    s.add_argument("--seconds", type=float, default=3.0)
    _add_runtime_args(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("sweep", help="the benchmark table: models x formats x precisions, "
                       "exported, checked and timed on Ray")
    s.add_argument("models", nargs="*", help="zoo names (see `edgecls models`)")
    s.add_argument("--families", nargs="+", help="every zoo model of these families, or all")
    s.add_argument("--to", nargs="+", default=["onnx"], help="formats: onnx,openvino,tflite")
    s.add_argument("--precision", nargs="+", default=["fp32"], help="fp32,fp16,int8")
    s.add_argument("--weights", default="pretrained", help="pretrained | none | PATH")
    s.add_argument("--calib", help="calibration images for int8 cells: a folder, photos, digits")
    s.add_argument("--calib-size", type=int, default=300)
    s.add_argument("--calib-method", nargs="+",
                   help="INT8 calibration recipes to compare (each one a cell), e.g. minmax,entropy")
    s.add_argument("--data", help="validation images: labelled folder -> top-1/top-5 with CIs; "
                   "else agreement with FP32 (default: photos)")
    s.add_argument("--max-drop", type=float, help="INT8 tolerance, in points")
    s.add_argument("-o", "--output", default="reports/sweep", help="folder: table + cache")
    s.add_argument("--address", help="a Ray cluster (ray://HEAD:10001); default: a local Ray")
    s.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: all)")
    s.add_argument("--threads", type=int, help="threads per timing (default: all cores)")
    s.add_argument("--batch", type=int, default=8, help="N of the FPS at batch N column")
    s.add_argument("--seconds", type=float, default=3.0, help="timing per cell and batch size")
    s.add_argument("--retry-failed", action="store_true", help="run cells that failed before")
    s.add_argument("--dry-run", action="store_true",
                   help="list the cells and which the output folder's cache holds; run nothing")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("demo", help="the main job on the built-in default (make demo)")
    s.add_argument("-o", "--output", default="out/demo")
    s.set_defaults(func=cmd_demo)
    return p


def _exportable() -> list[str]:
    return [n for n, f in FORMATS.items() if f.exporter]


def _format_list(value: str) -> list[str]:
    from edgecls.best import BEST
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    if formats == [BEST]:
        return formats
    unknown = [f for f in formats if f not in _exportable()]
    if not formats or unknown:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown) or value!r}; "
                                         f"choose from {', '.join(_exportable())}")
    return list(dict.fromkeys(formats))


def _add_format_options(group) -> tuple[str, ...]:
    """One flag per option that export() or a backend declares; an option that several
    declare (--calib-method, --data) is one flag whose help says what each does with it."""
    from edgecls.exporting import CheckOptions
    owners: dict[str, list[tuple[str, Declared]]] = {}
    for owner, options in [("", CheckOptions)] + [(f.name, f.options) for f in FORMATS.values()]:
        for option in options.declared():
            owners.setdefault(option.name, []).append((owner, option))
    for declarations in owners.values():
        first = declarations[0][1]
        by_text: dict[str, list[str]] = {}        # one help text, the formats that share it
        for owner, o in declarations:
            by_text.setdefault(o.help, []).append(owner)
        helps = [f"{', '.join(owners)}: {text}" if all(owners) else text
                 for text, owners in by_text.items()]
        group.add_argument(first.flag, help="; ".join(helps), **_argparse_settings(first))
    return tuple(owners)


def _add_preprocessing_options(group) -> tuple[str, ...]:
    declared = PreprocessingOptions.declared()
    for option in declared:
        group.add_argument(option.flag, help=option.help, **_argparse_settings(option))
    return tuple(o.name for o in declared)


def _add_trust(s: argparse.ArgumentParser) -> None:
    s.add_argument("--trust-remote-code", action="store_true",
                   help="allow loading TorchScript / pickled modules (runs code from the file)")


def _argparse_settings(option: Declared) -> dict[str, Any]:
    if option.kind is bool:
        return {"action": "store_true"}
    settings: dict[str, Any] = {"type": option.kind} if option.kind in (int, float) else {}
    if option.kind is tuple:
        settings["nargs"] = "+"
    return {**settings, **option.cli}


def _add_runtime_args(s: argparse.ArgumentParser, fallback: bool = False) -> None:
    s.add_argument("--device", choices=DEVICES,
                   help="default: cpu (auto for formats without a CPU path, e.g. TensorRT)")
    s.add_argument("--threads", type=int)
    s.add_argument("--precise-int8", action="store_true",
                   help="ONNX Runtime: exact U8U8 INT8 kernels on x86 CPUs without VNNI "
                        "(runs a VNNI or ARM INT8 recipe correctly there, at about FP32 speed)")
    if fallback:  # only where one artifact runs: parity/bench must measure the device asked for
        s.add_argument("--fallback", action="store_true",
                       help="fall back to CPU when the device is absent (reported)")


def _session_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"precise_int8": True} if args.precise_int8 else {}


#: the exit status after Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        # OpenCV's decoders log to stderr ("PNG input buffer is incomplete"); a bad image is
        # already one `edgecls: error:` line. Read by OpenCV when it is first imported.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    from rich.logging import RichHandler
    # edgecls speaks at INFO; the libraries it drives (torch.onnx, onnxscript, ORT's
    # quantizer, NNCF) only get through with warnings and errors
    handler = RichHandler(show_time=False, show_path=False, console=_stderr_console())
    handler.addFilter(visible_log_record)         # names in log lines: no raw ESC
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("edgecls").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args)
    except EdgeclsError as e:
        if args.debug:
            raise
        print(f"edgecls: error: {visible(e)}", file=sys.stderr)   # a file name's ESC is not obeyed
        return e.exit_code
    except KeyboardInterrupt:
        print("edgecls: interrupted", file=sys.stderr)
        return INTERRUPTED


def _stderr_console() -> Any:
    from rich.console import Console
    return Console(stderr=True)


def run() -> None:
    """The `edgecls` command: main(), then exit with its status."""
    code = main()
    if code == INTERRUPTED:
        # Interrupted mid-export, native thread pools (ONNX Runtime's, torch's) may still be
        # unwinding, and interpreter finalization then crashed now and then (SIGSEGV under
        # load). What the export made is already removed (its context managers ran as the
        # KeyboardInterrupt propagated), so leave without finalizing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
