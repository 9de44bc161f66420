"""`hesskit diagonal`: placeholder until its feature lands."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diagonal", help="(not yet available)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print("hesskit diagonal: not yet available")
    return 1
