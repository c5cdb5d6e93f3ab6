"""`tpc gate`: enforce latency budgets on a profile; exit 0 pass, 1 fail, 2 error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command("gate")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--budget", "budget_path", type=click.Path(path_type=Path), required=True, help="Budget YAML.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None, help="Baseline profile JSON.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write JUnit XML here.")
@click.option("--summary", type=click.Path(path_type=Path), default=None,
              help="Write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set).")
@click.option("--reprofile", is_flag=True,
              help="On failure, measure the profiled artifact again (budget 'retries' times) and pool the runs.")
@click.option("-q", "--quiet", is_flag=True)
def gate_cmd(profile, budget_path, baseline, junit, summary, reprofile, quiet):
    """Check PROFILE (from `tpc profile --json`) against a budget."""
    from tpc.gates import reports
    from tpc.gates.budget import load_budget
    from tpc.gates.evaluate import evaluate, load_profile, merge_profiles

    budget = load_budget(budget_path)
    current = load_profile(profile)
    base = load_profile(baseline, "baseline") if baseline is not None else None
    results = evaluate(budget, current, base)
    attempts = 0
    while reprofile and attempts < budget.retries and not all(r.passed for r in results):
        attempts += 1
        click.echo(f"gate failed; measuring again ({attempts}/{budget.retries})", err=True)
        current = merge_profiles(current, _measure_again(current))
        results = evaluate(budget, current, base)
    if not quiet:
        reports.print_table(results)
    if junit is not None:
        reports.write(junit, reports.junit_xml(results))
    markdown = reports.markdown_summary(results, current)
    if summary is not None:
        reports.write(summary, markdown)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        reports.write(os.environ["GITHUB_STEP_SUMMARY"], markdown, append=True)
    failed = [r for r in results if not r.passed]
    click.echo(f"{len(results) - len(failed)}/{len(results)} gates passed", err=True)
    sys.exit(1 if failed else 0)


def _measure_again(profile: dict) -> dict:
    from tpc.profiling.profiler import ProfileConfig
    from tpc.profiling.session import profile_artifact

    fields = {k: v for k, v in profile["config"].items() if k in ProfileConfig.__dataclass_fields__}
    return profile_artifact(profile["artifact"]["path"], ProfileConfig(**fields), quiet=True)
