"""Evaluate a budget against a profile (and a baseline profile)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tpc.gates.budget import Budget, Gate, GateError
from tpc.profiling.stats import summarize

_STATS = ("p50", "p90", "p99", "min", "max", "mean")
_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}


@dataclass
class GateResult:
    gate: Gate
    value: float
    limit: float
    baseline: float | None
    passed: bool

    @property
    def detail(self) -> str:
        g = self.gate
        if g.relative == "regression":
            return f"{self.value:.4g} vs baseline {self.baseline:.4g}: regression {self.limit:.2f} % {g.op} {g.bound:g} %"
        if g.relative == "ratio":
            return f"{self.value:.4g} {g.op} {g.bound:g} x baseline {self.baseline:.4g} = {self.limit:.4g}"
        return f"{self.value:.4g} {g.op} {self.limit:.4g}"


def load_profile(path: str | Path, role: str = "profile") -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GateError(f"{role} {path} not found") from None
    except json.JSONDecodeError as exc:
        raise GateError(f"{role} {path} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("schema") != "tpc.profile":
        raise GateError(f"{role} {path} is not a tpc profile (schema 'tpc.profile'); gate one profile, not a sweep")
    return data


def metric_value(profile: dict, metric: str, statistic: str) -> float:
    """Resolve ``ttft_ms``, ``ttft_ms.p90``, ``ttft_p50`` or a top-level scalar like ``peak_memory_mb``."""
    metrics = profile.get("metrics", {})
    name, _, stat = metric.partition(".")
    if name in metrics:
        stat = stat or statistic
        if stat not in metrics[name]:
            raise GateError(f"metric {metric!r}: no statistic {stat!r} (have {', '.join(_STATS)})")
        return float(metrics[name][stat])
    base, _, suffix = metric.rpartition("_")
    if suffix in _STATS and not stat:
        for candidate in (base, f"{base}_ms", f"{base}_per_s"):
            if candidate in metrics:
                return float(metrics[candidate][suffix])
    node: object = profile
    for part in metric.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    known = sorted(metrics) + ["peak_memory_mb", "kv_cache_bytes", "prompt_length"]
    raise GateError(f"metric {metric!r} is not in the profile; known: {', '.join(known)}")


def higher_is_better(metric: str) -> bool:
    return "per_s" in metric or metric.endswith("_tps")


def evaluate(budget: Budget, profile: dict, baseline: dict | None = None) -> list[GateResult]:
    if budget.needs_baseline and baseline is None:
        raise GateError("the budget has gates relative to a baseline; pass --baseline PROFILE.json")
    runs = int(profile.get("config", {}).get("runs", 0))
    if runs < budget.min_runs:
        raise GateError(f"the profile has {runs} measured runs; the budget requires at least {budget.min_runs}")
    results = []
    for gate in budget.gates:
        value = metric_value(profile, gate.metric, budget.statistic)
        base = metric_value(baseline, gate.metric, budget.statistic) if gate.relative else None
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


def merge_profiles(first: dict, second: dict) -> dict:
    """Pool the samples of two measurements of the same artifact (re-measurement)."""
    merged = dict(first, metrics={}, config=dict(first["config"]))
    for name, stat in first["metrics"].items():
        extra = second["metrics"].get(name, {}).get("samples", [])
        merged["metrics"][name] = summarize(stat["samples"] + extra)
    merged["config"]["runs"] = first["config"]["runs"] + second["config"]["runs"]
    merged["peak_memory_mb"] = max(first["peak_memory_mb"], second["peak_memory_mb"])
    return merged
