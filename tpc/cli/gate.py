"""`tpc gate`: enforce latency budgets on a profile; exit 0 pass, 1 fail, 2 error.

Ratio gates compare the profile with ``--reference`` (a reference configuration measured
in the same job, e.g. the unpruned model); regression gates compare it with ``--baseline``
(the previous release's profile of the same configuration).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tpc.cli.paths import OutputPath


@click.command("gate")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--budget", "budget_path", type=click.Path(path_type=Path), required=True, help="Budget YAML.")
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    default=None,
    help="Profile of a reference configuration measured in the same job (e.g. ratio 0); for ratio gates "
    "('METRIC <= N * reference').",
)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    default=None,
    help="The previous release's profile of this same configuration; for regression gates "
    "('METRIC regression <= N %').",
)
@click.option("--junit", type=OutputPath(), default=None, help="Write JUnit XML here.")
@click.option(
    "--summary",
    type=OutputPath(),
    default=None,
    help="Write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set).",
)
@click.option(
    "--reprofile",
    is_flag=True,
    help="On failure, measure the profiled artifact again (budget 'retries' times) and pool the runs; "
    "the reference too when a ratio gate failed. The baseline is never re-measured.",
)
@click.option(
    "--skip-missing",
    is_flag=True,
    help="Report gates whose --reference/--baseline profile was not given as skipped instead of an error "
    "(e.g. before the first release has a baseline).",
)
@click.option("-q", "--quiet", is_flag=True)
def gate_cmd(profile, budget_path, reference, baseline, junit, summary, reprofile, skip_missing, quiet):
    """Check PROFILE (from `tpc profile --json`) against a budget."""
    from tpc.gates import reports
    from tpc.gates.budget import load_budget
    from tpc.gates.evaluate import configuration_warnings, evaluate, load_profile, merge_profiles

    budget = load_budget(budget_path)
    current = load_profile(profile)
    ref = load_profile(reference, "reference") if reference is not None else None
    base = load_profile(baseline, "baseline") if baseline is not None else None
    for role, given in (("reference", ref), ("baseline", base)):
        if given is not None and not budget.gates_against(role):
            click.echo(f"warning: --{role} given, but no gate of {budget_path} compares against it", err=True)
    for warning in configuration_warnings(current, base, ref):
        click.echo(f"warning: {warning}", err=True)
    results = evaluate(budget, current, base, ref, skip_missing)
    attempts = 0
    while reprofile and attempts < budget.retries and not all(r.passed for r in results):
        attempts += 1
        failing = {r.against for r in results if not r.passed}
        again = "the profile and the reference" if ref is not None and "reference" in failing else "the profile"
        click.echo(f"gate failed; measuring {again} again ({attempts}/{budget.retries})", err=True)
        current = merge_profiles(current, _measure_again(current, "profile"))
        if ref is not None and "reference" in failing:
            ref = merge_profiles(ref, _measure_again(ref, "reference"))
        results = evaluate(budget, current, base, ref, skip_missing)
    if not quiet:
        reports.print_table(results)
    compared = {
        role: reports.describe(document, path)
        for role, document, path in (("reference", ref, reference), ("baseline", base, baseline))
        if document is not None
    }
    if junit is not None:
        reports.write(junit, reports.junit_xml(results, compared=compared))
    markdown = reports.markdown_summary(results, current, compared)
    if summary is not None:
        reports.write(summary, markdown)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        reports.write(os.environ["GITHUB_STEP_SUMMARY"], markdown, append=True)
    failed = [r for r in results if not r.passed]
    skipped = sum(r.skipped for r in results)
    click.echo(
        f"{len(results) - len(failed) - skipped}/{len(results)} gates passed"
        + (f", {skipped} skipped (no {_missing_flags(results)})" if skipped else ""),
        err=True,
    )
    sys.exit(1 if failed else 0)


def _missing_flags(results) -> str:
    from tpc.gates.budget import FLAGS

    return " or ".join(sorted({FLAGS[r.against] for r in results if r.skipped}))


def _measure_again(profile: dict, role: str) -> dict:
    """Profile the artifact ``profile`` was measured on again, with the same settings (exit 2 if it cannot)."""
    from tpc.errors import TpcError
    from tpc.gates.budget import GateError
    from tpc.manifest import MANIFEST_NAME
    from tpc.profiling.profiler import ProfileConfig
    from tpc.profiling.session import profile_artifact

    artifact = profile.get("artifact") if isinstance(profile.get("artifact"), dict) else {}
    path = artifact.get("path")
    if not isinstance(path, str) or not (Path(path) / MANIFEST_NAME).is_file():
        raise GateError(
            f"--reprofile: the {role}'s artifact {path} is not on this machine; "
            "re-measuring needs the artifact the profile was measured on"
        )
    fields = {k: v for k, v in profile["config"].items() if k in ProfileConfig.__dataclass_fields__}
    buckets = profile.get("buckets")
    fixed_bucket = isinstance(buckets, dict) and not buckets.get("adaptive")
    keep = artifact.get("keep") if fixed_bucket else None  # the bucket it ran at, not the artifact's default
    try:
        config = ProfileConfig(**fields)
    except TypeError as exc:
        raise GateError(f"--reprofile: the {role}'s settings cannot be reused ({exc})") from None
    try:
        return profile_artifact(path, config, quiet=True, keep=keep)
    except TpcError as exc:
        raise GateError(f"--reprofile: measuring the {role} again failed: {exc}") from None
