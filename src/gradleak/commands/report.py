"""``gradleak report DIR``: a self-contained HTML report of a sweep folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def report_folder(folder: str | Path) -> Path:
    """Read ``folder/results.sqlite`` and render ``folder/report.html`` from its rows."""
    from gradleak.errors import GradleakError
    from gradleak.report.experiments import render_report
    from gradleak.runs.store import STORE_NAME, ResultStore

    root = Path(folder)
    if not (root / STORE_NAME).is_file():
        raise GradleakError(f"no results store {root / STORE_NAME}: run `gradleak experiment run "
                            f"NAME --out {root}` first")
    with ResultStore(root) as store:
        rows = store.rows()
    return render_report(root, rows)


def run(args: argparse.Namespace) -> int:
    print(f"wrote {report_folder(args.folder)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="HTML report of an experiment sweep folder",
                              description="Render DIR/report.html from DIR/results.sqlite: tables "
                                          "beside the paper's numbers, plots, reconstructions and "
                                          "a verdict on each insight. Opens offline.")
    p.add_argument("folder", metavar="DIR", help="the --out folder of `gradleak experiment run`")
    p.set_defaults(func=run)
