"""The ``camkit`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._api import methods
from ._errors import CamkitError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ._demo import DEMO_METHODS, run_demo

    result = run_demo(args.output, args.methods)
    for p in result.predictions:
        print(f"{p.photo:<10} top-1: {p.label} (ImageNet class {p.index}), p = {p.probability:.3f}")
    shown = len(args.methods or DEMO_METHODS)
    print(f"wrote {shown} methods x {len(result.predictions)} photos to {result.path}")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from ._registry import backends

    for info in backends():
        state = "available" if info.available else "unavailable"
        print(f"{info.name:<8} {state}{'' if info.error is None else ': ' + info.error}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    for name, method in methods().items():
        summary = (method.__doc__ or "").strip().split(":")[0]
        print(f"{name:<20} {summary:<26} {method.paper}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__
    from ._cli_explain import add_explain_command

    parser = argparse.ArgumentParser(prog="camkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"camkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_explain_command(commands)
    listing_methods = commands.add_parser("methods", help="list the methods and their papers")
    listing_methods.set_defaults(run=_methods)
    demo = commands.add_parser(
        "demo", help="explain a pretrained EfficientNet-Lite0 on three photos (offline)"
    )
    demo.add_argument("--output", default="camkit-demo.png", help="PNG to write")
    demo.add_argument(
        "--methods", nargs="+", choices=list(methods()), metavar="METHOD",
        help="methods to show (default: all but scorecam, sscam, iscam and ablationcam, which "
        "run a forward pass per channel)",
    )  # fmt: skip
    demo.set_defaults(run=_demo)
    listing = commands.add_parser("backends", help="list the installed backends")
    listing.set_defaults(run=_backends)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except CamkitError as error:
        print(f"camkit: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
