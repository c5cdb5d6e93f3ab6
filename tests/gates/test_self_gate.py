"""tpc's own CI latency gate: llava-tiny at ratio 0.89 against ratio 0, in one run."""

from tpc.gates.budget import load_budget
from tpc.gates.evaluate import evaluate
from tpc.profiling.profiler import ProfileConfig, profile_model
from tpc.runtimes.compiled_model import CompiledModel

from pathlib import Path


def test_pruned_prefill_is_at_most_0_7x_unpruned(artifacts):
    config = ProfileConfig(runs=7, warmup=2, new_tokens=8, prompt_tokens=64)
    pruned = profile_model(CompiledModel.load(artifacts(0.89, "ort")), config)
    baseline = profile_model(CompiledModel.load(artifacts(0.0, "onnx")), config)
    budget = load_budget(Path(__file__).with_name("self_gate.yaml"))
    results = evaluate(budget, pruned, baseline)
    assert all(r.passed for r in results), [(r.gate.name, r.detail) for r in results]
