"""``gradleak report DIR``: a self-contained HTML report of a sweep folder."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from gradleak.report.experiments import render_report

    print(f"wrote {render_report(args.folder)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="HTML report of an experiment sweep folder",
                              description="Render DIR/report.html from DIR/results.sqlite: tables "
                                          "beside the paper's numbers, plots, reconstructions and "
                                          "a verdict on each insight. Opens offline.")
    p.add_argument("folder", metavar="DIR", help="the --out folder of `gradleak experiment run`")
    p.set_defaults(func=run)
