"""Gate results as a terminal table, JUnit XML and a Markdown summary.

Every relative gate says which profile it compared against: the reference (ratio gates,
``--reference``) or the baseline (regression gates, ``--baseline``). ``compared`` maps
those roles to a one-line description of the profile (``describe``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from tpc.gates.evaluate import GateResult


def describe(profile: dict, path: str | Path | None = None) -> str:
    """``path (model / method / keep K, N runs)`` for a profile."""
    art = profile.get("artifact") if isinstance(profile.get("artifact"), dict) else {}
    runs = profile.get("config", {}).get("runs", "?")
    grid = _grid(profile)
    at = f" at grid {grid}" if grid else ""
    what = f"{art.get('model', '?')} / {art.get('method', '?')} / keep {art.get('keep', '?')}{at}, {runs} runs"
    return f"{path} ({what})" if path is not None else what


def _grid(profile: dict) -> str | None:
    """``HxW`` of the compiled grid a grid-family profile ran at (``visual_tokens.grid``), else None."""
    from tpc.gates.evaluate import profile_grid

    grid = profile_grid(profile)
    return None if grid is None else f"{grid[0]}x{grid[1]}"


def _against(result: GateResult) -> str:
    return result.against or "absolute"


def _outcome(result: GateResult) -> str:
    return "skipped" if result.skipped else ("pass" if result.passed else "**FAIL**")


def junit_xml(results: list[GateResult], suite: str = "tpc.gates", compared: dict[str, str] | None = None) -> str:
    compared = compared or {}
    failures = sum(not r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures))
    cases = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    if compared:
        properties = ET.SubElement(cases, "properties")
        for role, text in compared.items():
            ET.SubElement(properties, "property", name=role, value=text)
    for result in results:
        case = ET.SubElement(cases, "testcase", classname=suite, name=result.gate.name)
        properties = ET.SubElement(case, "properties")
        ET.SubElement(properties, "property", name="compared_against", value=_against(result))
        if result.against in compared:
            ET.SubElement(properties, "property", name=f"{result.against}_profile", value=compared[result.against])
        against = f" (against the {result.against}: {compared.get(result.against, '?')})" if result.against else ""
        if result.skipped:
            ET.SubElement(case, "skipped", message=result.detail)
        elif not result.passed:
            failure = ET.SubElement(case, "failure", message=result.detail, type="LatencyGateFailure")
            failure.text = f"{result.gate.metric}: {result.detail}{against}"
        else:
            ET.SubElement(case, "system-out").text = f"{result.detail}{against}"
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def markdown_summary(results: list[GateResult], profile: dict, compared: dict[str, str] | None = None) -> str:
    compared = compared or {}
    passed = all(r.passed for r in results)
    lines = [
        f"### tpc latency gates: {'passed' if passed else 'FAILED'}",
        "",
        f"{describe(profile)} on {profile.get('device', {}).get('execution_provider', '?')}",
        "",
    ]
    for role in ("reference", "baseline"):
        if role in compared:
            use = "ratio gates" if role == "reference" else "regression gates"
            lines.append(f"* {role} ({use}): `{compared[role]}`")
    if compared:
        lines.append("")
    lines += [
        "| gate | metric | value | bound | against | result |",
        "|---|---|---:|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.gate.name.replace('|', '/')} | `{r.gate.metric}` | {r.value:.4g} | {r.detail} | {_against(r)} | "
            f"{_outcome(r)} |"
        )
    return "\n".join(lines) + "\n"


def print_table(results: list[GateResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="latency gates")
    for column in ("gate", "metric", "value", "check", "against", "result"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.gate.name,
            r.gate.metric,
            f"{r.value:.4g}",
            r.detail,
            _against(r),
            "[yellow]skipped" if r.skipped else ("[green]pass" if r.passed else "[red]FAIL"),
        )
    Console().print(table)


def write(path: str | Path, text: str, append: bool = False) -> None:
    """Write a report; an unwritable place is a one-line error (exit 2), not a traceback."""
    from tpc.outputs import write_text

    write_text(path, text, append=append)
