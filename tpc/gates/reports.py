"""Gate results as a terminal table, JUnit XML and a Markdown summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from tpc.gates.evaluate import GateResult


def junit_xml(results: list[GateResult], suite: str = "tpc.gates") -> str:
    failures = sum(not r.passed for r in results)
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures))
    cases = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures), errors="0")
    for result in results:
        case = ET.SubElement(cases, "testcase", classname=suite, name=result.gate.name)
        if not result.passed:
            failure = ET.SubElement(case, "failure", message=result.detail, type="LatencyGateFailure")
            failure.text = f"{result.gate.metric}: {result.detail}"
        else:
            ET.SubElement(case, "system-out").text = result.detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def markdown_summary(results: list[GateResult], profile: dict) -> str:
    art = profile.get("artifact", {})
    passed = all(r.passed for r in results)
    lines = [
        f"### tpc latency gates: {'passed' if passed else 'FAILED'}",
        "",
        f"{art.get('model', '?')} / {art.get('method', '?')} / keep {art.get('keep', '?')} on "
        f"{profile.get('device', {}).get('execution_provider', '?')}, {profile.get('config', {}).get('runs', '?')} runs",
        "",
        "| gate | metric | value | bound | result |",
        "|---|---|---:|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.gate.name} | `{r.gate.metric}` | {r.value:.4g} | {r.detail} | "
                     f"{'pass' if r.passed else '**FAIL**'} |")
    return "\n".join(lines) + "\n"


def print_table(results: list[GateResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="latency gates")
    for column in ("gate", "metric", "value", "check", "result"):
        table.add_column(column)
    for r in results:
        table.add_row(r.gate.name, r.gate.metric, f"{r.value:.4g}", r.detail,
                      "[green]pass" if r.passed else "[red]FAIL")
    Console().print(table)


def write(path: str | Path, text: str, append: bool = False) -> None:
    with open(path, "a" if append else "w") as handle:
        handle.write(text)
