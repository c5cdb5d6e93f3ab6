"""`tpc loadtest`: bounded concurrent chat requests against a server (loopback unless --allow-remote)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tpc.cli.paths import OutputPath
from tpc.errors import UsageError


@click.command("loadtest")
@click.argument("url")
@click.option("--requests", "count", type=int, default=200, show_default=True, help="Requests to send, at most.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Requests in flight at once.")
@click.option("--duration", "duration_s", type=float, default=600.0, show_default=True, help="Seconds, at most.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="Seconds per request.")
@click.option("--max-tokens", type=int, default=32, show_default=True, help="max_tokens of every request.")
@click.option("--prompt", default="What is in the picture?", show_default=True)
@click.option(
    "--image", type=click.Path(path_type=Path), default=None, help="Image file (default: a synthetic picture)."
)
@click.option("--model", default=None, help="Model name (default: the first /v1/models lists).")
@click.option("--no-stream", is_flag=True, help="Non-streaming requests (no time to first token).")
@click.option("--allow-remote", is_flag=True, help="Allow a server that is not on a loopback address.")
@click.option("--json", "json_path", type=OutputPath(), default=None, help="Write the report (gate-able) here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
def loadtest_cmd(
    url,
    count,
    concurrency,
    duration_s,
    timeout_s,
    max_tokens,
    prompt,
    image,
    model,
    no_stream,
    allow_remote,
    json_path,
    quiet,
):
    """Load-test the OpenAI-compatible server at URL (e.g. http://127.0.0.1:8000)."""
    import importlib.util

    if importlib.util.find_spec("httpx") is None:
        raise UsageError("tpc loadtest needs httpx: pip install 'tpc[serve]'")
    from tpc.serving.loadtest import LoadTestConfig, load_test

    config = LoadTestConfig(
        url=url,
        requests=count,
        concurrency=concurrency,
        duration_s=duration_s,
        timeout_s=timeout_s,
        max_tokens=max_tokens,
        prompt=prompt,
        image=image,
        model=model,
        stream=not no_stream,
        allow_remote=allow_remote,
    ).check()

    def progress(done: int) -> None:
        if not quiet:
            click.echo(f"\r{done}/{count} requests", nl=False, err=True)

    result = load_test(config, progress)
    if not quiet:
        click.echo("", err=True)
    if json_path is not None:
        from tpc.outputs import write_text

        write_text(json_path, json.dumps(result, indent=2) + "\n")
    click.echo(summary(result))


def summary(result: dict) -> str:
    lines = [
        f"{result['requests_ok']}/{result['requests_sent']} requests answered, {result['errors']} errors, "
        f"{result['wall_s']:.1f} s ({result['stopped_by']} bound): {result['requests_per_s']:.3f} requests/s, "
        f"{result['generated_tokens_per_s']:.1f} generated tokens/s"
    ]
    for name, label in (("ttft_ms", "time to first token"), ("e2e_ms", "end to end")):
        stat = result["metrics"].get(name)
        if stat:
            lines.append(f"{label}: p50 {stat['p50']:.1f} ms, p99 {stat['p99']:.1f} ms")
    server = result["server"]
    if "rss_before_mb" in server:
        lines.append(
            f"server RSS {server['rss_before_mb']:.1f} -> {server['rss_after_mb']:.1f} MB "
            f"({server['rss_growth_pct']:+.2f} %; second half {server['rss_growth_second_half_pct']:+.2f} %)"
        )
    for sample in result["error_samples"]:
        lines.append(f"error: {sample}")
    return "\n".join(lines)
