"""``agegender plot``: reports drawn from a table ``agegender predict`` wrote."""

from __future__ import annotations

from agegender_sb.cli.common import error

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    """The ``plot`` subcommand."""
    g = sub.add_parser(
        "plot", help="a corpus report (PNG, PDF, SVG) from a table agegender predict wrote",
        description="Draw the age distribution per predicted gender, per-speaker ages with "
                    "the spread of their windows or turns, and with --truth the predicted "
                    "against the true age and the gender confusion matrix (MAE, UAR). "
                    "Needs matplotlib (the 'plots' extra).")
    g.add_argument("table", help="CSV or JSONL table written by agegender predict")
    g.add_argument("--output", "-o", required=True, help="image file (.png, .pdf, .svg)")
    g.add_argument("--truth", metavar="CSV",
                   help="true labels: a 'path' or 'speaker' column and 'age' and/or 'gender'")
    g.add_argument("--speakers", metavar="FILE",
                   help="the --speakers file the table was made with: draws the spread of "
                        "each speaker's files")
    g.add_argument("--title", help="title of the report (default: the table's name)")
    g.set_defaults(func=cmd_plot)



def cmd_plot(args) -> int:
    try:
        from agegender_sb.report.plot import plot_report
        from agegender_sb.report.scoring import PlotError
    except ImportError as err:  # pragma: no cover - the module itself needs no extra
        error("plot", err)
        return 2
    try:
        report = plot_report(args.table, args.output, truth=args.truth,
                             speakers=args.speakers, title=args.title)
    except ImportError as err:  # matplotlib missing
        error("plot", err)
        return 2
    except (PlotError, OSError) as err:
        error("plot", err)
        return 2
    print(f"wrote {report.output}")
    for line in report.summary_lines():
        print(line)
    return 0


