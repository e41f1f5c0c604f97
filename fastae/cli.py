"""The ``fastae`` command line: ``fastae info [--check]``."""

import argparse
import sys

import torch

import fastae
from fastae.ops import _backend


def _triton_version():
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _describe_build(info):
    if not info.get("torch"):
        return info["load_error"]
    kind = f"CUDA {info['cuda']} (archs {info['cuda_arch_list'] or 'torch default'})" if info["cuda"] else "CPU only"
    state = "loaded" if info["loaded"] else f"NOT loaded: {info['load_error']}"
    return f"built against torch {info['torch']}, {kind}, C++11 ABI {int(info['cxx11_abi'])}; {state}"


def cmd_info(args):
    info = fastae.build_info()
    print(f"fastae     {fastae.__version__}")
    print(f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'}; "
          f"{torch.cuda.device_count()} CUDA device(s){': ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''})")
    print(f"triton     {_triton_version()}")
    print(f"fastae._C  {_describe_build(info)}")
    print("backends:")
    for name, (ok, reason) in fastae.ops.available_backends().items():
        print(f"  {name:<7}{'yes' if ok else 'no':<5}{reason}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("auto picks: " + ", ".join(f"{d} tensors -> {_backend.resolve(torch.device(d))}" for d in devices))
    if not args.check:
        return 0
    from fastae.ops._selfcheck import self_check

    print("self-check against the torch oracle (max error relative to the largest value):")
    failed = 0
    for op, name, dtype, case, err, tol in self_check():
        ok = err <= tol
        failed += not ok
        print(f"  {op:<12}{name:<7}{str(dtype).removeprefix('torch.'):<9}{case:<11}{err:9.2e}  "
              f"{'ok' if ok else f'FAIL (tolerance {tol:.0e})'}")
    print(f"self-check: {'all passed' if not failed else f'{failed} FAILED'}")
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, how fastae._C was built, which backends are available")
    info.add_argument("--check", action="store_true", help="also test every available backend against the oracle")
    info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
