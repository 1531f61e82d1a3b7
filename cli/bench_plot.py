"""`llmtool bench --plot PATH.png`: latency CDFs of a run, or throughput and latency against
the swept concurrency or rate. matplotlib is an optional extra (`llmtool[plot]`)."""

from pathlib import Path

from ..core.errors import UsageError
from ..core.files import atomic_path

CDF_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E"))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'llmtool[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_results(results, path: Path, axis: str | None = None) -> None:
    """One run: a CDF per latency metric. A sweep: throughput, TTFT and TPOT (p50 and p99)
    against `axis`. Written to a temp file in the target folder and renamed."""
    plt = _pyplot()
    if axis is None or len(results) < 2:
        fig = _cdfs(plt, results[0])
    else:
        fig = _sweep(plt, results, axis)
    try:
        with atomic_path(Path(path), suffix=Path(path).suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _cdfs(plt, result):
    import numpy as np

    fig, axes = plt.subplots(1, len(CDF_METRICS), figsize=(4 * len(CDF_METRICS), 3.4))
    ok = [r for r in result.records if r.ok]
    for ax, (key, label) in zip(axes, CDF_METRICS, strict=True):
        if key == "itl":
            values = [gap for r in ok for gap in r.itl()]
        else:
            values = [v for r in ok if (v := getattr(r, key)) is not None]
        data = np.sort(np.asarray(values, dtype=float)) * 1000
        if len(data):
            ax.plot(data, np.arange(1, len(data) + 1) / len(data), drawstyle="steps-post")
        ax.set_title(f"{label} ({len(data)} samples)")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
    fig.suptitle(_title(result), y=1.04)
    return fig


def _sweep(plt, results, axis: str):
    xs = [r.config.load.concurrency if axis == "concurrency" else r.config.load.rate for r in results]
    fig, (thr, ttft, tpot) = plt.subplots(1, 3, figsize=(13, 3.6))
    thr.plot(xs, [r.summary.output_throughput or 0 for r in results], marker="o")
    thr.set_title("output tokens/s")
    for ax, metric, label in ((ttft, "ttft_ms", "TTFT (ms)"), (tpot, "tpot_ms", "TPOT (ms)")):
        for stat in ("p50", "p99"):
            ax.plot(xs, [r.summary.value(metric, stat) or 0 for r in results], marker="o", label=stat)
        ax.set_title(label)
        ax.legend()
    for ax in (thr, ttft, tpot):
        ax.set_xlabel(axis)
        ax.grid(alpha=0.3)
        if axis == "concurrency":
            ax.set_xscale("log", base=2)
    fig.suptitle(_title(results[0]).rsplit(":", 1)[0] + f": sweep over {axis}", y=1.04)
    return fig


def _title(result) -> str:
    target, load = result.target, result.config.load
    what = f"{target.get('model')} ({target['kind']})"
    return what + (f": concurrency {load.concurrency}" if load.concurrency else f": rate {load.rate}/s")
