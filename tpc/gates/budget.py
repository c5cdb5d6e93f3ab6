"""Budget files: which metric, which bound, absolute or relative to another profile.

Two other profiles can be compared against, and every relative gate names its own:

* the **reference** (``tpc gate --reference R.json``): a reference configuration measured
  in the same job, typically the unpruned model (ratio 0). Ratio gates use it:
  ``"ttft_p50 <= 0.5 * reference"``, ``max_ratio_to_reference: 0.5``.
* the **baseline** (``tpc gate --baseline B.json``): the previous release's profile of the
  same configuration. Regression gates use it: ``"ttft_ms.p90 regression <= 10 %"``,
  ``max_regression_pct: 10``.

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
  - check: "ttft_p50 <= 0.5 * reference"      # vs --reference (same job, ratio 0)
  - check: "ttft_ms.p90 regression <= 10 %"   # vs --baseline (the last release)
  - metric: prefill_ms
    max_ratio_to_reference: 0.7
```

Budgets written before the two were separated compared ratio gates (``* baseline``,
``max_ratio_to_baseline``) with the one ``--baseline``; those gates are refused with a
message saying how to migrate, since the old meaning cannot be told from the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tpc.errors import TpcError


class GateError(TpcError):
    """A malformed budget, a missing metric or profile, or too few runs: exit 2."""

    exit_code = 2


# Which profile each kind of relative gate compares against, and the flag that gives it.
AGAINST = {"ratio": "reference", "regression": "baseline"}
FLAGS = {"reference": "--reference", "baseline": "--baseline"}
ROLE_HELP = {
    "reference": "a reference configuration measured in the same job, e.g. the unpruned model at ratio 0",
    "baseline": "the previous release's profile of this same configuration",
}


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str
    op: str  # "<=", ">=", "<", ">"
    bound: float
    relative: str | None = None  # None (absolute), "ratio" (bound * reference), "regression" (percent vs baseline)

    @property
    def against(self) -> str | None:
        """The profile this gate compares against: "reference", "baseline" or None (absolute)."""
        return AGAINST.get(self.relative) if self.relative else None


@dataclass(frozen=True)
class Budget:
    gates: tuple[Gate, ...]
    min_runs: int = 1
    statistic: str = "p50"
    retries: int = 0

    def gates_against(self, role: str) -> list[Gate]:
        return [g for g in self.gates if g.against == role]

    @property
    def needs_baseline(self) -> bool:
        return bool(self.gates_against("baseline"))

    @property
    def needs_reference(self) -> bool:
        return bool(self.gates_against("reference"))


_CHECK = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.]*)\s+(?P<reg>regression\s+)?(?P<op><=|>=|<|>)\s*"
    r"(?P<num>[-+]?[0-9]*\.?[0-9]+)\s*(?P<pct>%)?\s*(?:\*\s*(?P<base>[A-Za-z_]\w*))?\s*$"
)
_KEYS = {
    "max": ("<=", None),
    "min": (">=", None),
    "max_ratio_to_reference": ("<=", "ratio"),
    "min_ratio_to_reference": (">=", "ratio"),
    "max_regression_pct": ("<=", "regression"),
}
_OLD_KEYS = {"max_ratio_to_baseline": "max_ratio_to_reference", "min_ratio_to_baseline": "min_ratio_to_reference"}
_MIGRATE = (
    "ratio gates now compare against --reference (a reference configuration measured in the same job, "
    "e.g. ratio 0) and regression gates against --baseline (the last release of this configuration)"
)


def parse_check(text: str, name: str | None = None) -> Gate:
    match = _CHECK.match(text)
    if not match:
        raise GateError(
            f"malformed check {text!r}: expected 'METRIC <= NUMBER', 'METRIC <= NUMBER * reference' "
            "or 'METRIC regression <= NUMBER %'"
        )
    if match["base"] == "baseline":
        fixed = text[: match.start("base")].strip() + " reference"
        raise GateError(
            f"check {text!r}: '* baseline' is ambiguous: {_MIGRATE}; for the unpruned model write "
            f"'{fixed}' and pass --reference, for the last release write "
            f"'{match['metric']} regression <= N %' and pass --baseline"
        )
    if match["base"] not in (None, "reference"):
        raise GateError(f"malformed check {text!r}: a ratio reads 'METRIC <= NUMBER * reference'")
    if match["reg"] and (match["op"] not in ("<=", "<") or match["base"]):
        raise GateError(
            f"malformed check {text!r}: a regression bound reads 'METRIC regression <= N %' (against --baseline)"
        )
    relative = "regression" if match["reg"] else ("ratio" if match["base"] else None)
    if match["pct"] and relative != "regression":
        raise GateError(f"malformed check {text!r}: '%' only applies to a regression bound")
    return Gate(name or text.strip(), match["metric"], match["op"], float(match["num"]), relative)


def parse_budget(data: object) -> Budget:
    if not isinstance(data, dict) or not isinstance(data.get("gates"), list) or not data["gates"]:
        raise GateError("malformed budget: expected a mapping with a non-empty 'gates' list")
    unknown = set(data) - {"version", "min_runs", "statistic", "retries", "gates"}
    if unknown:
        raise GateError(f"malformed budget: unknown keys {sorted(unknown, key=str)}")
    if data.get("version", 1) != 1:
        raise GateError(f"budget version {data.get('version')!r} is not supported (1)")
    gates = []
    for index, entry in enumerate(data["gates"]):
        where = f"gates[{index}]"
        if not isinstance(entry, dict):
            raise GateError(f"malformed budget: {where} must be a mapping")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            name = str(name)
        if "check" in entry:
            extra = set(entry) - {"check", "name"}
            if extra:
                raise GateError(f"malformed budget: {where} mixes 'check' with {sorted(extra, key=str)}")
            try:
                gates.append(parse_check(str(entry["check"]), name))
            except GateError as exc:
                raise GateError(f"{where}: {exc}") from None
            continue
        old = [k for k in entry if k in _OLD_KEYS]
        if old:
            raise GateError(
                f"{where}: '{old[0]}' is ambiguous: {_MIGRATE}; write '{_OLD_KEYS[old[0]]}' and pass --reference "
                "for the unpruned model, or 'max_regression_pct' with --baseline for the last release"
            )
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
    """Read and parse a budget YAML; every failure is one line (GateError or UsageError, exit 2)."""
    import yaml

    from tpc.outputs import read_text

    text = read_text(path, "budget")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GateError(f"malformed budget {path}: {_yaml_reason(exc)}") from None
    except RecursionError:
        raise GateError(f"malformed budget {path}: nested too deeply") from None
    try:
        return parse_budget(data)
    except GateError as exc:
        raise GateError(f"budget {path}: {exc}") from None


def _yaml_reason(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__
