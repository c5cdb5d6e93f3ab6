"""PNG plots of a profile (stage breakdown) or a sweep (TTFT and decode tok/s vs ratio)."""

from __future__ import annotations

from pathlib import Path

STAGE_COLOURS = {
    "preprocess_ms": "#9e9e9e",
    "vision_ms": "#3f51b5",
    "embed_ms": "#00bcd4",
    "prefill_ms": "#ff9800",
    "decode_ms": "#4caf50",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_profile(profile: dict, path: str | Path) -> Path:
    """Horizontal stacked bar of the p50 stage times of one request."""
    plt = _pyplot()
    metrics = profile["metrics"]
    fig, ax = plt.subplots(figsize=(8, 2.6))
    left = 0.0
    for stage, colour in STAGE_COLOURS.items():
        if stage not in metrics:
            continue
        width = metrics[stage]["p50"]
        ax.barh([0], [width], left=left, color=colour, label=f"{stage[:-3]} {width:.1f} ms")
        left += width
    art = profile["artifact"]
    ax.set_title(
        f"{art['model']} {art['method']} keep={art['keep']} ({profile['device']['execution_provider']}): "
        f"TTFT p50 {metrics['ttft_ms']['p50']:.1f} ms"
    )
    ax.set_xlabel("milliseconds (p50 per stage)")
    ax.set_yticks([])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def plot_sweep(sweep: dict, path: str | Path) -> Path:
    """TTFT p50 and decode tokens/s p50 against the pruning ratio."""
    plt = _pyplot()
    points = sorted(sweep["points"], key=lambda p: p["artifact"]["ratio"] or 0.0)
    ratios = [p["artifact"]["ratio"] or 0.0 for p in points]
    ttft = [p["metrics"]["ttft_ms"]["p50"] for p in points]
    rate = [p["metrics"].get("decode_tokens_per_s", {}).get("p50", 0.0) for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(ratios, ttft, "o-", color="#3f51b5")
    left.set_xlabel("ratio (fraction of visual tokens removed)")
    left.set_ylabel("TTFT p50 (ms)")
    right.plot(ratios, rate, "o-", color="#4caf50")
    right.set_xlabel("ratio")
    right.set_ylabel("decode tokens/s p50")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{points[0]['artifact']['model']} {points[0]['artifact']['method']}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def _save(fig, path) -> None:
    """Write the figure; an unwritable path is a one-line error, never a half-written file."""
    import matplotlib.pyplot as plt

    from tpc.outputs import check_writable

    try:
        check_writable(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as exc:
        from tpc.errors import UsageError

        raise UsageError(f"cannot write {path} ({exc.strerror or type(exc).__name__})") from None
    finally:
        plt.close(fig)
