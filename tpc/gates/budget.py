"""Budget files: which metric, which bound, absolute or relative to a baseline profile.

```yaml
version: 1
min_runs: 10          # a profile with fewer measured runs is an error, not a pass
statistic: p50        # used when a metric names no statistic (medians resist noise)
retries: 2            # with `tpc gate --reprofile`: measure again before failing
gates:
  - metric: ttft_ms                 # -> metrics.ttft_ms.p50
    max: 8000                       # absolute, in the metric's unit (ms, tokens/s, MB)
  - metric: decode_tokens_per_s
    min: 5
  - check: "ttft_p50 <= 0.5 * baseline"
  - check: "ttft_ms.p90 regression <= 10 %"
  - metric: prefill_ms
    max_ratio_to_baseline: 0.7
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tpc.errors import TpcError


class GateError(TpcError):
    """A malformed budget, a missing metric or baseline, or too few runs: exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str
    op: str                       # "<=", ">=", "<", ">"
    bound: float
    relative: str | None = None   # None (absolute), "ratio" (bound * baseline), "regression" (percent)


@dataclass(frozen=True)
class Budget:
    gates: tuple[Gate, ...]
    min_runs: int = 1
    statistic: str = "p50"
    retries: int = 0

    @property
    def needs_baseline(self) -> bool:
        return any(g.relative for g in self.gates)


_CHECK = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.]*)\s+(?P<reg>regression\s+)?(?P<op><=|>=|<|>)\s*"
    r"(?P<num>[0-9]*\.?[0-9]+)\s*(?P<pct>%)?\s*(?:\*\s*(?P<base>baseline))?\s*$"
)
_KEYS = {"max": ("<=", None), "min": (">=", None), "max_ratio_to_baseline": ("<=", "ratio"),
         "min_ratio_to_baseline": (">=", "ratio"), "max_regression_pct": ("<=", "regression")}


def parse_check(text: str, name: str | None = None) -> Gate:
    match = _CHECK.match(text)
    if not match:
        raise GateError(f"malformed check {text!r}: expected 'METRIC <= NUMBER', 'METRIC <= NUMBER * baseline' "
                        "or 'METRIC regression <= NUMBER %'")
    if match["reg"] and (match["op"] not in ("<=", "<") or match["base"]):
        raise GateError(f"malformed check {text!r}: a regression bound reads 'METRIC regression <= N %'")
    relative = "regression" if match["reg"] else ("ratio" if match["base"] else None)
    if match["pct"] and relative != "regression":
        raise GateError(f"malformed check {text!r}: '%' only applies to a regression bound")
    return Gate(name or text.strip(), match["metric"], match["op"], float(match["num"]), relative)


def parse_budget(data: object) -> Budget:
    if not isinstance(data, dict) or not isinstance(data.get("gates"), list) or not data["gates"]:
        raise GateError("malformed budget: expected a mapping with a non-empty 'gates' list")
    unknown = set(data) - {"version", "min_runs", "statistic", "retries", "gates"}
    if unknown:
        raise GateError(f"malformed budget: unknown keys {sorted(unknown)}")
    if data.get("version", 1) != 1:
        raise GateError(f"budget version {data.get('version')!r} is not supported (1)")
    gates = []
    for index, entry in enumerate(data["gates"]):
        where = f"gates[{index}]"
        if not isinstance(entry, dict):
            raise GateError(f"malformed budget: {where} must be a mapping")
        name = entry.get("name")
        if "check" in entry:
            extra = set(entry) - {"check", "name"}
            if extra:
                raise GateError(f"malformed budget: {where} mixes 'check' with {sorted(extra)}")
            gates.append(parse_check(str(entry["check"]), name))
            continue
        bounds = [k for k in entry if k in _KEYS]
        extra = set(entry) - set(_KEYS) - {"metric", "name"}
        if "metric" not in entry or len(bounds) != 1 or extra:
            raise GateError(f"malformed budget: {where} needs 'metric' and exactly one of {sorted(_KEYS)}")
        value = entry[bounds[0]]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GateError(f"malformed budget: {where}.{bounds[0]} must be a number, got {value!r}")
        op, relative = _KEYS[bounds[0]]
        metric = str(entry["metric"])
        gates.append(Gate(name or f"{metric} {bounds[0]} {value}", metric, op, float(value), relative))
    min_runs, retries = data.get("min_runs", 1), data.get("retries", 0)
    for key, value in (("min_runs", min_runs), ("retries", retries)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GateError(f"malformed budget: {key} must be a non-negative integer, got {value!r}")
    statistic = data.get("statistic", "p50")
    if statistic not in ("p50", "p90", "p99", "min", "max", "mean"):
        raise GateError(f"malformed budget: statistic {statistic!r} is not one of p50, p90, p99, min, max, mean")
    return Budget(tuple(gates), min_runs=min_runs, statistic=statistic, retries=retries)


def load_budget(path: str | Path) -> Budget:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise GateError(f"budget file {path} not found") from None
    except yaml.YAMLError as exc:
        raise GateError(f"malformed budget {path}: {str(exc).splitlines()[0]}") from None
    return parse_budget(data)
