"""``qwenprep plan --chart FILE``: concurrency and prefill time against context, drawn with
matplotlib (the optional ``[chart]`` extra). SVG or PNG by the file's suffix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenprep.errors import InputError, UsageError

FORMATS = {".svg": "svg", ".png": "png"}
INSTALL_HINT = "pip install 'qwenprep[chart]'"
MARKER = "Drawn by qwenprep plan (its chart option)"  # in every chart's metadata: ours to replace


def chart_format(path: str) -> str:
    """'svg' or 'png' from PATH's suffix; UsageError (exit 2) for anything else or when
    matplotlib is not installed - both said before any work is done."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"--chart {path}: the file must end in .svg or .png.", hint="e.g. --chart plan.svg"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--chart needs matplotlib, which is not installed.", hint=INSTALL_HINT
        ) from None
    return fmt


def _ours(target: Path) -> str | None:
    """None when TARGET is a chart write_chart drew (MARKER near its start); else why not."""
    try:
        with open(target, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return "cannot be read"
    return None if MARKER.encode() in head else "is not a chart qwenprep drew"


def chart_target(path: str, *, force: bool = False) -> Path:
    """Where --chart PATH writes (judged before any work): no existing file but a chart
    qwenprep drew (FORCE: any regular file), never through a symlink. ConflictError else."""
    from qwenprep.util.jsonio import output_target

    chart_format(path)
    return output_target("--chart", Path(path), _ours, force=force)


def write_chart(plan: Any, path: str, *, force: bool = False) -> Path:
    """Draw PLAN's context table (qwenprep.planning.timing.PlanTiming.contexts) into PATH
    (chart_target), atomically: a temporary file beside it, renamed over it."""
    import io

    from qwenprep.util.jsonio import atomic_write_bytes

    fmt = chart_format(path)
    out = chart_target(path, force=force)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qwenprep.planning.timing import label

    timing = plan.timing
    rows = list(timing.contexts) if timing is not None else []
    xs = [r.context for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    try:
        ax.plot(
            xs,
            [r.max_concurrency for r in rows],
            "o-",
            color="tab:blue",
            label="max concurrency (requests at full length)",
        )
        ax.axhline(1.0, color="tab:blue", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([label(x) for x in xs], rotation=30)
        ax.set_xlabel("context (tokens per request)")
        ax.set_ylabel("max concurrency (x)", color="tab:blue")
        ax.set_yscale("log")
        handles, labels = ax.get_legend_handles_labels()
        timed = [r for r in rows if r.prefill.seconds_at_peak is not None]
        if timed:
            ax2 = ax.twinx()
            tx = [r.context for r in timed]
            ax2.plot(
                tx,
                [r.prefill.seconds_at_peak for r in timed],
                "s-",
                color="tab:red",
                label="prefill floor at peak (estimate)",
            )
            lo, hi = timed[0].prefill.efficiency_band
            ax2.fill_between(
                tx,
                [r.prefill.seconds_typical[0] for r in timed],
                [r.prefill.seconds_typical[1] for r in timed],
                color="tab:red",
                alpha=0.2,
                label=f"prefill typical ({lo:.0%}-{hi:.0%} of peak)",
            )
            ax2.set_yscale("log")
            ax2.set_ylabel("prefill time of one request (s)", color="tab:red")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        r = plan.request
        gpu = timing.gpu.name if timing is not None and timing.gpu else "GPU unknown"
        ax.set_title(
            f"{Path(plan.shape.name).name}: TP {r.tp} x PP {r.pp} x DP {plan.dp}, {gpu}",
            fontsize=10,
        )
        ax.legend(handles, labels, loc="upper center", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata={"Description": MARKER})
        try:
            atomic_write_bytes(out, buf.getvalue())
        except OSError as e:
            raise InputError(
                f"--chart {path}: cannot write it ({e.strerror or e}).", path=str(out)
            ) from None
        return out
    finally:
        plt.close(fig)
