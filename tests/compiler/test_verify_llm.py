"""The staged-decoder parity check passes on a correct artifact and catches a wrong rule."""

from __future__ import annotations

import dataclasses
import json

from tpc.compiler.verify_llm import verify_staged_decoder
from tpc.manifest import load_artifact
from tpc.methods.in_llm import ORIGINAL, RENUMBERED, PruningPlan
from tpc.runtimes.ort import OrtGraphs


def _graphs_and_plan(root):
    artifact = load_artifact(root)
    graphs = OrtGraphs.from_artifact(artifact)
    return graphs, artifact.runtime, PruningPlan.from_dict(artifact.runtime["llm_pruning"])


def test_correct_artifact_passes_and_a_different_rule_fails(llm_artifacts, tiny_adapter):
    graphs, runtime, plan = _graphs_and_plan(llm_artifacts("fastv"))
    assert all(r["passed"] for r in verify_staged_decoder(graphs, tiny_adapter, plan, runtime))
    # the same graphs judged against renumbered positions (PyramidDrop's rule) must fail
    stage = dataclasses.replace(plan.stages[0], positions=RENUMBERED)
    wrong = dataclasses.replace(plan, stages=(stage,))
    results = verify_staged_decoder(graphs, tiny_adapter, wrong, runtime)
    assert not any(r["passed"] for r in results)
    assert not any(r["positions_ok"] for r in results)
    # ... and against scoring with layer K itself instead of K-1
    stage = dataclasses.replace(plan.stages[0], score_layer=plan.stages[0].layer, positions=ORIGINAL)
    results = verify_staged_decoder(graphs, tiny_adapter, dataclasses.replace(plan, stages=(stage,)), runtime)
    assert not any(r["passed"] for r in results) and "mismatch" in results[0]["kept"]


def test_staged_artifacts_turn_thread_spinning_off(llm_artifacts, artifacts):
    staged = json.loads((llm_artifacts("fastv") / "manifest.json").read_text())["session"]
    flat = json.loads((artifacts(0.89, "ort") / "manifest.json").read_text())["session"]
    assert staged["allow_spinning"] is False and "allow_spinning" not in flat


def test_selectors_alone_pass_and_a_wrong_count_or_rule_fails(llm_artifacts):
    from tpc.compiler.verify_llm import verify_selectors

    graphs, runtime, plan = _graphs_and_plan(llm_artifacts("pdrop"))
    hidden = runtime["hidden_size"]
    results = verify_selectors(graphs, plan, hidden, None)
    assert len(results) == len(plan.stages) and all(r["passed"] for r in results)
    # judged against one kept token fewer at the first stage, or original positions: must fail
    fewer = dataclasses.replace(plan.stages[0], keep=plan.stages[0].keep - 1)
    assert not verify_selectors(graphs, dataclasses.replace(plan, stages=(fewer, *plan.stages[1:])), hidden, None)[0][
        "passed"
    ]
    original = tuple(dataclasses.replace(s, positions=ORIGINAL) for s in plan.stages)
    assert not any(
        r["passed"] for r in verify_selectors(graphs, dataclasses.replace(plan, stages=original), hidden, None)
    )
