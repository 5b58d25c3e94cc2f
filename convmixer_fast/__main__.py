"""Command line: ``python -m convmixer_fast {info,verify,inspect,bench,bench-ops,tune-gemm} ...`` (``--help`` on
each)."""

from __future__ import annotations

import argparse
import json
import sys


def _whole_number(low: int):
    """An argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse type: a float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _device_name(text: str) -> str:
    """An argparse type: a device name torch parses (whether it is usable here is asked later,
    by ``bench.cli_device``), not meta (whose tensors hold no values to check or time)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device name: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError("meta tensors hold no values to check or time; name a real device")
    return text


ARCHITECTURE_FIELDS = ("dim", "depth", "kernel_size", "patch_size", "n_classes")
IMAGE_SIZE_HELP = "default: 224 (32 for patch size <= 2), at least one patch (bench.default_image_size)"


def _architecture(text: str) -> dict:
    """An argparse type: ``DIM,DEPTH,KERNEL,PATCH[,CLASSES]`` as ConvMixer's arguments, checked."""
    from .model import check_architecture

    fields = text.split(",")
    if len(fields) not in (4, 5) or not all(field.strip().lstrip("-").isdigit() for field in fields):
        raise argparse.ArgumentTypeError(f"expected DIM,DEPTH,KERNEL,PATCH[,CLASSES] as integers, got {text!r}")
    try:
        config = dict(zip(ARCHITECTURE_FIELDS, (int(field) for field in fields)))
        check_architecture(**config)
        if config.get("n_classes") == 0:
            raise ValueError("CLASSES must be >= 1: verify and bench compare logits")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    return config


def _info(args) -> int:
    import platform

    import torch

    from . import __version__
    from ._extension import REBUILD, extension_status
    from .backends import BACKENDS, availability

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    ext = extension_status()
    print(f"convmixer_fast {__version__}")
    print(f"python         {platform.python_version()}")
    print(f"torch          {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"triton         {triton_version}")
    if ext.loaded:
        print(f"_C             built, CUDA kernels {'yes' if ext.with_cuda else 'no'} ({ext.detail})")
        if ext.current:
            print("               from the csrc/ beside the package as it is now, against this torch")
        elif ext.stale is not None:
            print(f"               STALE: it {ext.stale}; rebuild with {REBUILD}")
        else:
            print("               its sources not compared (none beside the package, or none recorded in _C)")
    else:
        print(f"_C             not available: {ext.detail}")
    devices = ["cpu"] + ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    for name in devices:
        device = torch.device(name)
        label = name if device.type == "cpu" else f"{name} ({torch.cuda.get_device_name(device)})"
        print(f"backends on {label}:")
        for backend, reason in availability(device).items():
            print(f"  {backend:<7} {'available' if reason is None else 'unavailable: ' + reason}")
            if reason is None:
                print(f"          {BACKENDS[backend].description}")
    return 0


def _verify(args) -> int:
    import torch

    from .backends import BackendUnavailableError
    from .bench import cli_device, cli_image_size_fits, default_image_size
    from .configs import MODEL_CONFIGS
    from .verify import DTYPES, build_pair, format_rows, rows_as_dicts, verify_model

    device_name = cli_device(args.device, "verify")
    if device_name is None:
        return 2
    device = torch.device(device_name)
    dtypes = [DTYPES[name] for name in args.dtype or ["bf16" if device.type == "cuda" else "fp32"]]
    if args.config:
        label = ",".join(str(value) for value in args.config.values())
        configs = [(f"config {label} ({args.act})", {**args.config, "act_layer": args.act})]
    else:
        names = args.model or ["convmixer_1536_20" if device.type == "cuda" else "convmixer_cifar10"]
        configs = [(name, MODEL_CONFIGS[name]) for name in names]
    if not cli_image_size_fits("verify", configs, args.image_size):
        return 2
    backends = args.backend or ["auto"]
    runs = []
    for name, config in configs:
        image_size = args.image_size or default_image_size(config)
        for dtype in dtypes:
            torch.manual_seed(args.seed)
            model, reference = build_pair(config, dtype, device, image_size, seed=args.seed)
            image = torch.randn(args.batch, model.in_chans, image_size, image_size, device=device)
            for backend in backends:
                run = {"model": name, "backend": backend, "dtype": str(dtype), "device": str(device),
                       "batch": args.batch, "image_size": image_size}
                try:
                    rows = verify_model(model, reference, image, backend)
                except BackendUnavailableError as error:  # the other runs go on; this one fails
                    runs.append({**run, "ok": False, "error": str(error), "rows": []})
                else:
                    runs.append({**run, "ok": all(row.ok for row in rows), "rows": rows_as_dicts(rows)})
                if args.json:
                    continue
                if len(runs) > 1:
                    print()
                if "error" in runs[-1]:
                    print(f"verify {name}, backend {backend}, {dtype} on {device}: ERROR: {runs[-1]['error']}")
                    continue
                model.backend = backend
                resolved = model.backend_label()  # after the run: what "auto" measured and chose
                print(f"verify {name}, backend {backend} ({resolved}), {dtype} on {device}, batch {args.batch}, "
                      f"{image_size}x{image_size}")
                print(format_rows(rows))
                print("PASS" if runs[-1]["ok"] else "FAIL: errors beyond tolerance")
    ok = all(run["ok"] for run in runs)
    if args.json:
        print(json.dumps({"ok": ok, "runs": runs}, indent=2))
    elif len(runs) > 1:
        print()
        for run in runs:
            verdict = "PASS" if run["ok"] else "ERROR" if "error" in run else "FAIL"
            print(f"{verdict:<5}  {run['model']}, backend {run['backend']}, {run['dtype']}")
        print(f"{sum(run['ok'] for run in runs)} of {len(runs)} passed")
    return 0 if ok else 1


def _inspect(args) -> int:
    from .inspect import BACKENDS, InspectError, format_table, inspect_kernels

    try:
        rows = inspect_kernels(args.arch, backends=tuple(args.backend or BACKENDS))
    except InspectError as error:  # no nvcc or CUTLASS, a failed compile: what, not a traceback
        print(f"inspect: {error}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _bench(args) -> int:
    from .bench import run_cli

    return run_cli(args)


def _bench_ops(args) -> int:
    from .opbench import run_cli

    return run_cli(args)


def _add_measuring_arguments(command: argparse.ArgumentParser, timed: str, default_json: str) -> None:
    """``--device``, ``--repeats``, ``--warmup``, ``--seed`` and ``--json``, as bench-ops and tune-gemm
    take them (``timed``: what one timing is of)."""
    command.add_argument("--device", type=_device_name, help="default: cuda if available, else cpu")
    command.add_argument("--repeats", type=_whole_number(1), help=f"most timed repeats per {timed} (default: 20 on "
                         "a GPU, 5 on CPU)")
    command.add_argument("--warmup", type=_whole_number(0), help="untimed calls before timing (default: 3)")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--json", metavar="PATH", help=f"write the result here (default on a GPU: {default_json}; "
                         "none on CPU)")


def _tune_gemm(args) -> int:
    from .tune_gemm import run_cli

    return run_cli(args)


def main(argv=None) -> int:
    from . import _settings
    from .backends import BACKEND_NAMES
    from .configs import MODEL_CONFIGS
    from .inspect import BACKENDS as INSPECT_BACKENDS

    parser = argparse.ArgumentParser(prog="python -m convmixer_fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, the compiled extension, available backends and why not")
    info.set_defaults(run=_info)

    verify = commands.add_parser("verify", help="every kernel of a backend against its reference, layer by layer")
    which = verify.add_mutually_exclusive_group()
    which.add_argument("--model", nargs="+", action="extend", choices=list(MODEL_CONFIGS),
                       help="named configs (default: convmixer_1536_20 on a GPU, convmixer_cifar10 on CPU)")
    which.add_argument("--config", type=_architecture, help="DIM,DEPTH,KERNEL,PATCH[,CLASSES] (with --act)")
    verify.add_argument("--act", choices=("gelu", "relu"), default="gelu")
    verify.add_argument("--backend", nargs="+", action="extend", choices=BACKEND_NAMES, help="default: auto")
    verify.add_argument("--dtype", nargs="+", action="extend", choices=("fp32", "fp16", "bf16"),
                        help="default: bf16 on a GPU, fp32 on CPU")
    verify.add_argument("--device", type=_device_name, help="default: cuda if available, else cpu")
    verify.add_argument("--batch", type=_whole_number(1), default=2)
    verify.add_argument("--image-size", type=_whole_number(1), help=IMAGE_SIZE_HELP)
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--json", action="store_true", help="print {ok, runs: [each model, dtype and backend with "
                        "its rows]} as JSON")
    verify.set_defaults(run=_verify)

    inspect = commands.add_parser("inspect", help="compile every kernel for an architecture (no GPU needed) and "
                                  "report registers, shared memory, spills and tensor-core use")
    inspect.add_argument("--arch", required=True, choices=("sm_90a", "sm_80"))
    inspect.add_argument("--backend", action="append", choices=tuple(INSPECT_BACKENDS),
                         help="backends to inspect (repeatable; default: all)")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=_inspect)

    bench = commands.add_parser("bench", help="img/s of convmixer_fast's backends against eager PyTorch, torch.compile "
                                "and a cuBLAS GEMM floor, checked against the reference first")
    bench.add_argument("--model", nargs="+", action="extend", choices=list(MODEL_CONFIGS),
                       help="default: the three ImageNet configs on a GPU, convmixer_cifar10 on CPU")
    bench.add_argument("--batch", nargs="+", action="extend", type=_whole_number(1),
                       help="default: 1 8 64 256 on a GPU, 8 on CPU")
    bench.add_argument("--dtype", nargs="+", action="extend", choices=("fp32", "fp16", "bf16"),
                       help="precision of convmixer_fast and gemm-floor (the eager peers have their own); "
                       "default: bf16 fp16 on a GPU, fp32 on CPU")
    bench.add_argument("--image-size", type=_whole_number(1), help=IMAGE_SIZE_HELP)
    bench.add_argument("--device", type=_device_name, help="default: cuda if available, else cpu")
    bench.add_argument("--providers", nargs="+", action="extend", metavar="NAME",
                       help="names or shell patterns, e.g. 'convmixer_fast-*' (default: all but the opt-in ones)")
    bench.add_argument("--list-providers", action="store_true", help="list the providers and their availability")
    saved_result = bench.add_mutually_exclusive_group()
    saved_result.add_argument("--markdown", metavar="PATH", help="print the saved result PATH as Markdown tables "
                              "(the README's) and exit, measuring nothing")
    saved_result.add_argument("--targets", metavar="PATH", help="judge the saved result PATH against the "
                              "project's performance targets (convmixer_fast/targets.py) and exit, measuring "
                              "nothing; exit 1 unless all pass")
    bench.add_argument("--repeats", type=_whole_number(1), help="most timed repeats per provider and workload "
                       "(default: 20 on a GPU, 5 on CPU; fewer when one provider would take more than ~0.5 s, but at "
                       "least 3)")
    bench.add_argument("--warmup", type=_whole_number(0), default=3, help="untimed calls before timing (default: 3)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", metavar="PATH", help="write the result here (default on a GPU: "
                       "benchmarks/results/<gpu>-<date>.json; none on CPU)")
    bench.add_argument("--plot", metavar="PATH", help="PNG of img/s against batch size (default on a GPU: the "
                       "JSON's path with .png)")
    bench.add_argument("--merge", action="store_true", help="add to the JSON file if it exists (same GPU; on a "
                       "CPU --json names it): this run's workloads replace the same ones there, the others stay; the "
                       "plot shows them all")
    bench.add_argument("--compare", metavar="PATH", help="print the img/s change against a saved result; exit 1 "
                       "if any entry is slower by more than --max-regression, or if none was measured in both")
    bench.add_argument("--max-regression", type=_fraction, default=0.1, metavar="FRAC",
                       help="allowed slowdown for --compare (default: 0.1, i.e. 10%%)")
    bench.set_defaults(run=_bench)

    ops = commands.add_parser("bench-ops", help="each fused op alone on every backend against its floors (FLOPs at "
                              "the measured GEMM / fp32 FMA rate, bytes at the measured copy bandwidth)")
    ops.add_argument("--model", choices=list(MODEL_CONFIGS), help="default: convmixer_1536_20 on a GPU, "
                     "convmixer_cifar10 on CPU")
    ops.add_argument("--batch", type=_whole_number(1), help="default: 256 on a GPU, 2 on CPU")
    ops.add_argument("--image-size", type=_whole_number(1), help=IMAGE_SIZE_HELP)
    ops.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: bf16 on a GPU, fp32 on CPU")
    ops.add_argument("--backends", nargs="+", action="extend", choices=[n for n in BACKEND_NAMES if n != "auto"],
                     help="default: every backend available on the device")
    ops.add_argument("--ops", nargs="+", action="extend", choices=("stem", "depthwise_block", "pointwise", "head"),
                     help="default: all four")
    _add_measuring_arguments(ops, "op", "benchmarks/results/ops-<gpu>-<model>-b<batch>-<date>.json")
    ops.set_defaults(run=_bench_ops)

    tune = commands.add_parser("tune-gemm", help="every config of the Triton pointwise GEMM timed on its own over "
                               "a grid of widths and token counts, against cuBLAS: which configs to autotune over "
                               "(on a GPU; on CPU only in Triton's interpreter, TRITON_INTERPRET=1)")
    tune.add_argument("--dims", nargs="+", action="extend", type=_whole_number(1), metavar="N",
                      help="widths N = K (default: 768 1024 1536)")
    tune.add_argument("--tokens", nargs="+", action="extend", type=_whole_number(1), metavar="M",
                      help="token counts M (default: 1024 4096 16384 65536 262144)")
    tune.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: bf16")
    tune.add_argument("--group-m", nargs="+", action="extend", type=_whole_number(1), metavar="G",
                      help="each config once per GROUP_M given (the tile order's swizzle) instead of its own")
    _add_measuring_arguments(tune, "config and shape", "benchmarks/results/tune-gemm-<gpu>-<dtype>-<date>.json")
    tune.set_defaults(run=_tune_gemm)

    args = parser.parse_args(argv)
    switch_error = _settings.runtime_switch_error()
    if switch_error is not None:
        parser.error(switch_error)  # (exit 2)
    try:
        return args.run(args)
    except (MemoryError, RuntimeError) as error:  # (torch.OutOfMemoryError is a RuntimeError)
        if not _out_of_memory(error):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"python -m convmixer_fast {args.command}: out of memory: {message}\n"
              f"(a smaller --batch, --image-size or model fits)", file=sys.stderr)
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation: Python's MemoryError, torch's OutOfMemoryError (a
    GPU's), or the RuntimeError of torch's CPU allocator."""
    import torch

    return (isinstance(error, (MemoryError, torch.OutOfMemoryError))
            or "DefaultCPUAllocator: can't allocate memory" in str(error))


if __name__ == "__main__":
    sys.exit(main())
