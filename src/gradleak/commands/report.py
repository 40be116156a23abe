"""``gradleak report DIR``: a self-contained HTML report of a sweep folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def report_folder(folder: str | Path) -> Path:
    """Render the report of ``folder``: an audit's (``verdict.json`` of ``gradleak audit`` or of
    the Flower audit strategy: ``index.html`` again), else an experiment sweep's
    (``results.sqlite`` -> ``report.html``)."""
    from gradleak.errors import GradleakError
    from gradleak.report.experiments import render_report
    from gradleak.runs.store import STORE_NAME, ResultStore

    root = Path(folder)
    audit = _audit_report(root)
    if audit is not None:
        return audit
    if not (root / STORE_NAME).is_file():
        raise GradleakError(f"no results store {root / STORE_NAME}: run `gradleak experiment run "
                            f"NAME --out {root}` first")
    with ResultStore(root) as store:
        rows = store.rows()
    return render_report(root, rows)


def _audit_report(root: Path) -> Path | None:
    """Re-render an audit folder's report from its ``verdict.json`` (None: not an audit)."""
    import json

    from gradleak.errors import GradleakError

    captured = root / "captured.json"
    if captured.is_file() and not (root / "verdict.json").is_file():
        from gradleak.audit.captured_run import markdown
        from gradleak.io import write_text

        try:
            write_text(root / "report.md", markdown(json.loads(captured.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GradleakError(f"{captured} is not a readable captured-update audit: {exc}") from None
        return root / "report.md"
    path = root / "verdict.json"
    if not path.is_file():
        return None
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GradleakError(f"{path} is not a readable verdict.json: {exc}") from None
    if not isinstance(verdict, dict):
        raise GradleakError(f"{path} holds no verdict object")
    if verdict.get("mode") == "flower audit":
        from gradleak.flower.summary import render

        return render(root, verdict)
    if isinstance(verdict.get("levels"), list) and "verdict" in verdict:
        from gradleak.report.audit_verdict import render_verdict

        try:
            return render_verdict(root, verdict)[1]
        except (KeyError, TypeError, AttributeError) as exc:
            raise GradleakError(f"{path} is not a gradleak audit verdict (missing or malformed "
                                f"{exc})") from None
    return None


def run(args: argparse.Namespace) -> int:
    print(f"wrote {report_folder(args.folder)}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="HTML report of a sweep or audit folder",
                              description="Render DIR/report.html from DIR/results.sqlite: tables "
                                          "beside the paper's numbers, plots, reconstructions and "
                                          "a verdict on each insight; or, for the folder of "
                                          "`gradleak audit` or of the Flower audit strategy "
                                          "(DIR/verdict.json), its audit report DIR/index.html. "
                                          "Opens offline.")
    p.add_argument("folder", metavar="DIR", help="the --out folder of `gradleak experiment run`, "
                                                 "`gradleak audit` or LeakageAuditStrategy")
    p.set_defaults(func=run)
