"""`python -m tools.bench <what> [-S key=value ...]`: one benchmark (`make bench-*`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shopflow.cli import configure_logging
from shopflow.core import paths
from shopflow.core.config import load_params
from tools import exit_code_of
from tools.bench.commands import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("--params", type=Path, default=paths.PARAMS, help="params file")
    parser.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="as `dvc exp run -S`"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return exit_code_of(
        f"bench {args.what}", lambda: run(load_params(args.params, args.set), args.what, args)
    )


if __name__ == "__main__":
    sys.exit(main())
