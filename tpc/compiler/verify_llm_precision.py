"""Agreement of half-precision staged decoder graphs (FastV, PyramidDrop, DART inside the LLM) with fp32.

The fp32 eager reference (``reference_generate`` under ``tpc.models.upcast.fp32_reference``) runs
first, before the model's weights are freed; the staged graphs run afterwards on the same inputs
as the fp32 parity check (``tpc.compiler.verify_llm``: batch 1 and a left-padded batch 2, an image
block at different offsets, prefill and decode steps).

Like the flat decoder's check, which feeds both runs the reference's token so that one flip does not
decide every later step, the selection is teacher-forced: each stage's selector runs twice, once on
the graphs' own fp32 score (its choice is checked: the reference's kept rows, or different only
among rows whose fp32 scores lie within ``NEAR_TIE`` of the k-th, ``index_verdict``) and once on a
score that picks the reference's rows, which the next segments then get. So every stage is checked
on the rows the reference ranked, and the logits (cosine per step, greedy agreement, against the
precision's thresholds) on the reference's selection. DART's greedy has no near-tie rule: its kept
rows must be the reference's (it is not forced). The selection scores are fp32 inside the graphs
(``last_token_attention``, DART's key norms).
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.compiler.agreement import cosine, index_verdict
from tpc.methods.in_llm import DART

STEPS = 2  # decode steps after prefill


@torch.no_grad()
def llm_references(adapter, plans: dict, rule: dict | None, seed: int = 3) -> list[dict]:
    """The fp32 reference of the shortest and longest image block's plan (``verify_graphs``' choice), batch 1
    and 2: its inputs, per-stage kept rows and scores, and logits. Call inside ``fp32_reference``."""
    from tpc.compiler.verify import _length_key, dynamic_check_plans
    from tpc.compiler.verify_llm import staged_check_inputs
    from tpc.methods.in_llm_reference import reference_generate

    if rule is not None:
        plans = dynamic_check_plans(rule, adapter)
    ends = sorted({min(plans, key=_length_key), max(plans, key=_length_key)}, key=_length_key)
    references = []
    for key in ends:
        plan = plans[key]
        for batch in (1, 2):
            embeds, mask, image_start, step_embeds, positions = staged_check_inputs(adapter, plan, batch, seed, STEPS)
            ref = reference_generate(adapter.model, embeds, mask, image_start, plan, STEPS + 1, step_embeds, positions)
            references.append(
                {
                    "plan": plan,
                    "bucket": None if rule is not None else key,
                    "batch": batch,
                    "inputs": [t.numpy() for t in (embeds, mask, positions, image_start)],
                    "steps": [e.numpy() for e in step_embeds],
                    "kept": [k.numpy() for k in ref.kept],
                    "scores": [s.float().numpy() for s in ref.scores],
                    "logits": [g.float().numpy() for g in ref.logits],
                }
            )
    return references


class ForcedSelection:
    """``graphs`` whose top-score stage selectors keep the reference's rows; ``own``: what each chose itself."""

    def __init__(self, graphs, plan, kept: list[np.ndarray], image_start: np.ndarray):
        self.graphs, self.plan, self.kept, self.image_start = graphs, plan, kept, image_start
        self.own: list[np.ndarray] = []

    def run_graph(self, name: str, feeds: dict) -> list:
        if not name.startswith("select_"):
            return self.graphs.run_graph(name, feeds)
        stage = len(self.own)
        chosen = self.graphs.run_graph(name, feeds)
        self.own.append(np.asarray(chosen[3], np.int64))
        if self.plan.stages[stage].rule == DART:
            return chosen
        forced = np.zeros_like(feeds["score"])
        for row, (start, rows) in enumerate(zip(self.image_start, self.kept[stage], strict=True)):
            forced[row, int(start) + rows] = 1.0
        return self.graphs.run_graph(name, dict(feeds, score=forced))


def compare_llm(graphs, references: list[dict], runtime: dict, thresholds: dict) -> dict:
    """The staged graphs against ``llm_references``: per-stage index verdicts, logit cosine, greedy agreement."""
    from tpc.runtimes.decoders import StagedDecoder

    runs, cosines, agree, total = [], [], 0, 0
    for ref in references:
        plan = ref["plan"]
        embeds, mask, positions, image_start = ref["inputs"]
        forced = ForcedSelection(graphs, plan, ref["kept"], image_start)
        decoder = StagedDecoder(forced, runtime, plan, ref["bucket"])
        logits = [decoder.prefill(embeds, mask, positions, image_start)]
        logits += [decoder.step(e) for e in ref["steps"]]
        verdicts = [
            index_verdict(got, want, None if stage.rule == DART else scores)[0]
            for got, want, scores, stage in zip(forced.own, ref["kept"], ref["scores"], plan.stages, strict=True)
        ]
        for got, want in zip(logits, ref["logits"], strict=True):
            got = np.asarray(got, np.float32)
            cosines += cosine(got, want).tolist()
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += len(want)
        runs.append(
            {
                "method": plan.method,
                "batch": ref["batch"],
                "image_tokens": plan.image_tokens,
                **({"bucket": ref["bucket"]} if ref["bucket"] else {}),
                "kept": verdicts,
                "passed": "mismatch" not in verdicts,
            }
        )
    return {
        "stages": runs,
        "prompts": len(runs),
        "steps": STEPS + 1,
        "logit_cosine_min": float(min(cosines)),
        "logit_cosine_mean": float(np.mean(cosines)),
        "token_agreement": agree / total,
        "run": "staged",
        "passed": all(r["passed"] for r in runs)
        and min(cosines) >= thresholds["min_logit_cosine"]
        and agree / total >= thresholds["min_token_agreement"],
    }


def llm_failures(decoder: dict, thresholds: dict) -> list[str]:
    """One part of the ParityError per failing run, and the logit numbers."""
    parts = [
        f"{r['method']} b{r['batch']}{' k' + str(r['bucket']) if 'bucket' in r else ''}: stage indices "
        + "/".join(r["kept"])
        for r in decoder["stages"]
        if not r["passed"]
    ]
    if decoder["logit_cosine_min"] < thresholds["min_logit_cosine"] or (
        decoder["token_agreement"] < thresholds["min_token_agreement"]
    ):
        parts.append(
            f"staged decoder: logit cosine min {decoder['logit_cosine_min']:.4f} (needs >= "
            f"{thresholds['min_logit_cosine']}), greedy agreement {decoder['token_agreement']:.2f} (needs >= "
            f"{thresholds['min_token_agreement']})"
        )
    return parts
