"""The one CLI, `nerfserve`, with subcommands. Each group registers its own parsers.

Heavy imports (torch, pycolmap, fastapi) happen inside the subcommand handlers, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import sys

from cli import engine, export, poses, service


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerfserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (engine, poses, export, service):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.errors import UserInputError

    try:
        return int(args.func(args) or 0)
    except UserInputError as e:
        print(f"error [{e.code}]: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
