"""Terminal tables for profiles and sweeps."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = (
    "preprocess_ms",
    "vision_ms",
    "embed_ms",
    "prefill_ms",
    "ttft_ms",
    "decode_ms_per_token",
    "decode_tokens_per_s",
    "e2e_ms",
)


def print_profile(profile: dict) -> None:
    art, dev = profile["artifact"], profile["device"]
    table = Table(
        title=f"{art['model']} {art['method']} keep {art['keep']} ({art['target']}) on "
        f"{dev.get('gpu', {}).get('name') or dev['cpu_model']} [{dev['execution_provider']}, "
        f"{dev['threads']} threads]"
    )
    table.add_column("metric")
    for stat in ("p50", "p90", "p99", "min", "max"):
        table.add_column(stat, justify="right")
    for name in ROWS:
        if name in profile["metrics"]:
            m = profile["metrics"][name]
            table.add_row(name, *(f"{m[s]:.2f}" for s in ("p50", "p90", "p99", "min", "max")))
    console = Console()
    console.print(table)
    tokens = profile["visual_tokens"]
    if "grid" in tokens:  # grid families: the compiled grid the picture ran at
        size = "x".join(str(v) for v in tokens["image_size"])
        resized = f", resized to {'x'.join(str(v) for v in tokens['resized_to'])}" if tokens.get("resized_to") else ""
        console.print(
            f"grid {tokens['grid'][0]}x{tokens['grid'][1]} patches ({tokens['graph']}, picture {size} px{resized}): "
            f"{tokens['before']} image tokens, {tokens['after']} kept"
        )
    console.print(
        f"visual tokens {tokens['before']} -> {tokens['after']}, prompt {profile['prompt_length']} tokens, "
        f"KV cache {profile['kv_cache_bytes'] / 2**20:.1f} MiB, peak memory {profile['peak_memory_mb']:.0f} MB, "
        f"runs {profile['config']['runs']} (+{profile['config']['warmup']} warm-up)"
    )
    precision = art.get("precision", {})
    if "bytes" in art:
        quant = precision.get("quantize")
        console.print(
            f"artifact {precision.get('dtype', 'fp32')}"
            + (f", int{quant['bits']} decoder" if quant else "")
            + (", weights stored fp16" if precision.get("store_weights") == "fp16" else "")
            + f", {art['bytes'] / 2**20:.1f} MiB on disk, peak memory at load {profile['load_peak_memory_mb']:.0f} MB"
        )
    if dev.get("fell_back_to_cpu"):
        console.print(f"[yellow]warning: requested {dev['requested_provider']} but ran on {dev['execution_provider']}")


def print_sweep(sweep: dict) -> None:
    table = Table(title="ratio sweep (p50)")
    for column in ("ratio", "keep", "vision ms", "prefill ms", "TTFT ms", "decode tok/s", "TTFT vs first"):
        table.add_column(column, justify="right")
    base = sweep["points"][0]["metrics"]["ttft_ms"]["p50"]
    for point in sweep["points"]:
        m = point["metrics"]
        table.add_row(
            f"{point['artifact']['ratio']}",
            str(point["artifact"]["keep"]),
            f"{m.get('vision_ms', {}).get('p50', 0):.1f}",
            f"{m['prefill_ms']['p50']:.1f}",
            f"{m['ttft_ms']['p50']:.1f}",
            f"{m.get('decode_tokens_per_s', {}).get('p50', 0):.1f}",
            f"{m['ttft_ms']['p50'] / base:.3f}x",
        )
    Console().print(table)
