"""Evaluate a budget against a profile, a reference profile and a baseline profile."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tpc.gates.budget import FLAGS, ROLE_HELP, Budget, Gate, GateError
from tpc.profiling.stats import summarize

_STATS = ("p50", "p90", "p99", "min", "max", "mean")
_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}


@dataclass
class GateResult:
    gate: Gate
    value: float
    limit: float
    compared: float | None  # the metric in the profile the gate compares against (reference or baseline)
    passed: bool
    skipped: bool = False  # its reference/baseline was not given and the caller asked to skip such gates

    @property
    def against(self) -> str | None:
        return self.gate.against

    @property
    def detail(self) -> str:
        g = self.gate
        if self.skipped:
            return f"skipped: no {FLAGS[self.against]} profile given"
        if g.relative == "regression":
            return (
                f"{self.value:.4g} vs baseline {self.compared:.4g}: regression {self.limit:.2f} % {g.op} {g.bound:g} %"
            )
        if g.relative == "ratio":
            return f"{self.value:.4g} {g.op} {g.bound:g} x reference {self.compared:.4g} = {self.limit:.4g}"
        return f"{self.value:.4g} {g.op} {self.limit:.4g}"


def load_profile(path: str | Path, role: str = "profile") -> dict:
    """Read one ``tpc profile --json`` document; every failure is one line (exit 2)."""
    from tpc.outputs import read_text

    text = read_text(path, role)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GateError(f"{role} {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise GateError(f"{role} {path} is not a tpc profile (nested too deeply)") from None
    if not isinstance(data, dict) or data.get("schema") != "tpc.profile":
        raise GateError(f"{role} {path} is not a tpc profile (schema 'tpc.profile'); gate one profile, not a sweep")
    for key in ("metrics", "config"):
        if not isinstance(data.get(key), dict):
            raise GateError(f"{role} {path} is not a tpc profile: '{key}' is missing or not a mapping")
    return data


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GateError(f"{what} is {value!r}, not a number")
    return float(value)


def metric_value(profile: dict, metric: str, statistic: str, role: str = "profile") -> float:
    """Resolve ``ttft_ms``, ``ttft_ms.p90``, ``ttft_p50`` or a top-level scalar like ``peak_memory_mb``."""
    metrics = profile.get("metrics", {})
    name, _, stat = metric.partition(".")
    if isinstance(metrics.get(name), dict):
        stat = stat or statistic
        if stat not in metrics[name]:
            raise GateError(f"metric {metric!r}: no statistic {stat!r} in the {role} (have {', '.join(_STATS)})")
        return _number(metrics[name][stat], f"metric {metric!r} ({stat}) in the {role}")
    base, _, suffix = metric.rpartition("_")
    if suffix in _STATS and not stat:
        for candidate in (base, f"{base}_ms", f"{base}_per_s"):
            if isinstance(metrics.get(candidate), dict) and suffix in metrics[candidate]:
                return _number(metrics[candidate][suffix], f"metric {metric!r} in the {role}")
    node: object = profile
    for part in metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return _number(node, f"metric {metric!r} in the {role}")
    known = sorted(metrics) + ["peak_memory_mb", "kv_cache_bytes", "prompt_length"]
    raise GateError(f"metric {metric!r} is not in the {role}; known: {', '.join(known)}")


def higher_is_better(metric: str) -> bool:
    return "per_s" in metric or metric.endswith("_tps")


def _runs(profile: dict) -> int:
    runs = profile.get("config", {}).get("runs", 0)
    return runs if isinstance(runs, int) and not isinstance(runs, bool) else 0


def check_inputs(
    budget: Budget, profile: dict, baseline: dict | None, reference: dict | None, skip_missing: bool = False
) -> None:
    """Every profile a gate compares against is given, and every profile used has enough runs."""
    others = {"reference": reference, "baseline": baseline}
    for role, other in others.items():
        needing = budget.gates_against(role)
        if needing and other is None and not skip_missing:
            names = ", ".join(repr(g.name) for g in needing)
            raise GateError(
                f"gate{'s' if len(needing) > 1 else ''} {names} compare{'' if len(needing) > 1 else 's'} against "
                f"the {role} ({ROLE_HELP[role]}); pass {FLAGS[role]} PROFILE.json"
            )
    used = [("profile", profile)] + [
        (role, p) for role, p in others.items() if p is not None and budget.gates_against(role)
    ]
    for role, document in used:
        runs = _runs(document)
        if runs < budget.min_runs:
            raise GateError(f"the {role} has {runs} measured runs; the budget requires at least {budget.min_runs}")


def evaluate(
    budget: Budget,
    profile: dict,
    baseline: dict | None = None,
    reference: dict | None = None,
    skip_missing: bool = False,
) -> list[GateResult]:
    """Ratio gates compare ``profile`` with ``reference``, regression gates with ``baseline``.

    A gate whose profile is not given is an error, or with ``skip_missing`` a skipped result.
    """
    check_inputs(budget, profile, baseline, reference, skip_missing)
    others = {"reference": reference, "baseline": baseline}
    results = []
    for gate in budget.gates:
        value = metric_value(profile, gate.metric, budget.statistic)
        against = gate.against
        if against and others[against] is None:
            results.append(GateResult(gate, value, math.nan, None, passed=True, skipped=True))
            continue
        base = metric_value(others[against], gate.metric, budget.statistic, against) if against else None
        if gate.relative == "ratio":
            limit = gate.bound * base
            passed = _OPS[gate.op](value, limit)
        elif gate.relative == "regression":
            if base == 0:
                raise GateError(f"metric {gate.metric!r} is 0 in the baseline; a regression is undefined")
            change = (base - value) / base if higher_is_better(gate.metric) else (value - base) / base
            limit = 100.0 * change
            passed = _OPS[gate.op](limit, gate.bound)
        else:
            limit = gate.bound
            passed = _OPS[gate.op](value, limit)
        results.append(GateResult(gate, value, limit, base, passed))
    return results


def profile_grid(profile: dict) -> list[int] | None:
    """The compiled grid (h, w patches) a grid-family profile's picture ran at, else None."""
    tokens = profile.get("visual_tokens") if isinstance(profile.get("visual_tokens"), dict) else {}
    grid = tokens.get("grid")
    if isinstance(grid, list) and len(grid) == 2 and all(isinstance(v, int) for v in grid):
        return grid
    return None


def configuration(profile: dict) -> dict:
    """What identifies a configuration: model, method, visual tokens kept, target (and, for grid
    families, the compiled grid the picture ran at: another grid is another workload)."""
    artifact = profile.get("artifact") if isinstance(profile.get("artifact"), dict) else {}
    found = {key: artifact.get(key) for key in ("model", "method", "keep", "target")}
    grid = profile_grid(profile)
    if grid is not None:
        found["grid"] = f"{grid[0]}x{grid[1]}"
    return found


def configuration_warnings(profile: dict, baseline: dict | None, reference: dict | None) -> list[str]:
    """Likely mix-ups: a baseline of another configuration, a reference of the same one."""
    warnings = []
    mine = configuration(profile)
    if baseline is not None:
        theirs = configuration(baseline)
        differ = [
            f"{k} {theirs.get(k)} vs {mine.get(k)}"
            for k in dict.fromkeys([*mine, *theirs])
            if theirs.get(k) is not None and theirs.get(k) != mine.get(k)
        ]
        if differ:
            warnings.append(
                f"the baseline is another configuration ({', '.join(differ)}); --baseline is the previous release "
                "of this configuration, a reference configuration such as ratio 0 belongs in --reference"
            )
    if reference is not None and configuration(reference) == mine and mine.get("keep") is not None:
        warnings.append(
            "the reference has the same configuration as the profile (keep "
            f"{mine['keep']}); --reference is another configuration, e.g. the unpruned model"
        )
    return warnings


def merge_profiles(first: dict, second: dict) -> dict:
    """Pool the samples of two measurements of the same artifact (re-measurement)."""
    merged = dict(first, metrics={}, config=dict(first["config"]))
    for name, stat in first["metrics"].items():
        if not isinstance(stat, dict) or not isinstance(stat.get("samples"), list):
            raise GateError(f"cannot pool runs: the profile has no samples of {name!r}")
        extra = second["metrics"].get(name, {}).get("samples", [])
        merged["metrics"][name] = summarize(stat["samples"] + extra)
    merged["config"]["runs"] = _runs(first) + _runs(second)
    if "peak_memory_mb" in first and "peak_memory_mb" in second:
        merged["peak_memory_mb"] = max(first["peak_memory_mb"], second["peak_memory_mb"])
    return merged
