"""``pinn-engine`` command line."""

from __future__ import annotations

import argparse
from typing import Sequence

from pinn_engine import __version__


def _cmd_info(_: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from pinn_engine.device import default_device  # noqa: PLC0415

    print(f"pinn-engine {__version__}")
    print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), threads {torch.get_num_threads()}")
    print(f"device: {default_device()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinn-engine", description="Quantification engine of the DICOM node")
    p.add_argument("--version", action="version", version=f"pinn-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="versions and the compute device in use")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
