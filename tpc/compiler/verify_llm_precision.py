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

Because the selection is forced, each segment's inputs are known once the segment before it has run
over every prompt and step: the check runs segment after segment, each a few layers at a time
(``DecoderPieces``), instead of step after step through every segment (the runtime's
``StagedDecoder``, which gives the same logits). One piece's weights are loaded at a time, so a 7 B
staged decoder, whose fp16 weights ONNX Runtime's CPU provider holds in fp32, is checked on a 24 GiB host.
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.artifact_layout import segment_io, select_name, stage_inputs
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


class _StagedRun:
    """One reference's run through the staged graphs, segment after segment: the inputs of the
    segment to run next (its prefill and every decode step) and, once the last has run, the logits."""

    def __init__(self, ref: dict, graphs, dynamic: bool):
        self.ref, self.plan, self.dynamic = ref, ref["plan"], dynamic
        self.hidden, self.mask, self.positions, self.image_start = ref["inputs"]
        self.steps = list(ref["steps"])  # the current segment's hidden input at each decode step
        self.forced = ForcedSelection(graphs, self.plan, ref["kept"], self.image_start)
        self.logits: list[np.ndarray] = []

    def calls(self, index: int) -> list[dict[str, np.ndarray]]:
        """Segment ``index``'s prefill and decode-step feeds (as ``StagedDecoder`` makes them)."""
        first = segment_io(self.plan, index)[0][0]
        calls = [{first: self.hidden, "attention_mask": self.mask, "position_ids": self.positions}]
        for t, hidden in enumerate(self.steps):
            mask = np.concatenate([self.mask, np.ones((len(self.mask), t + 1), np.int64)], axis=1)
            calls.append({first: hidden, "attention_mask": mask, "position_ids": self.positions[:, -1:] + t + 1})
        return calls

    def advance(self, index: int, outputs: list[dict[str, np.ndarray]]) -> None:
        """Segment ``index``'s outputs: the stage's selector runs on its prefill (forced to the reference's
        rows, ``ForcedSelection``) and gives the next segment its inputs; the last segment gives logits."""
        if index == len(self.plan.stages):
            self.logits = [np.asarray(o["logits"], np.float32) for o in outputs]
            return
        feeds = dict(outputs[0], position_ids=self.positions, attention_mask=self.mask, image_start=self.image_start)
        if self.dynamic:
            feeds["image_rows"] = np.arange(stage_inputs(self.plan, index + 1), dtype=np.int64)
            feeds["keep_rows"] = np.arange(self.plan.stages[index].keep, dtype=np.int64)
        name = select_name(index + 1, self.ref["bucket"])
        self.hidden, self.positions, self.mask, _ = self.forced.run_graph(name, feeds)
        self.steps = [o["hidden"] for o in outputs[1:]]


def run_staged(graphs, references: list[dict], runtime: dict, segments: list, options) -> tuple[list[_StagedRun], int]:
    """Every reference through the staged graphs (``graphs`` runs the selectors), segment after segment:
    each of ``segments`` (the decoder segments' files) runs a few layers at a time (``DecoderPieces``,
    session ``options``) over every reference's prefill and decode steps before the next one, so one
    piece's weights are loaded at a time and a 7 B staged decoder is checked within the memory its flat
    decoder's check takes. Returns the runs and the number of pieces."""
    from tpc.compiler.verify_segments import DecoderPieces

    runs = [_StagedRun(ref, graphs, bool(runtime.get("llm_pruning_rule"))) for ref in references]
    pieces = 0
    for index, path in enumerate(segments):
        segment = DecoderPieces.load(path, whole=True)
        pieces += len(segment.models)
        first = segment_io(runs[0].plan, index)[0][0]
        outputs = segment.run_calls(options, [run.calls(index) for run in runs], first)
        for run, out in zip(runs, outputs, strict=True):
            run.advance(index, out)
    return runs, pieces


def compare_llm(graphs, references: list[dict], runtime: dict, thresholds: dict, segments: list, options) -> dict:
    """The staged graphs against ``llm_references`` (run by ``run_staged``): per-stage index verdicts,
    logit cosine, greedy agreement."""
    runs, pieces = run_staged(graphs, references, runtime, segments, options)
    rows, cosines, agree, total = [], [], 0, 0
    for run in runs:
        ref, plan = run.ref, run.plan
        verdicts = [
            index_verdict(got, want, None if stage.rule == DART else scores)[0]
            for got, want, scores, stage in zip(run.forced.own, ref["kept"], ref["scores"], plan.stages, strict=True)
        ]
        for got, want in zip(run.logits, ref["logits"], strict=True):
            cosines += cosine(got, want).tolist()
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += len(want)
        rows.append(
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
        "stages": rows,
        "prompts": len(rows),
        "steps": STEPS + 1,
        "logit_cosine_min": float(min(cosines)),
        "logit_cosine_mean": float(np.mean(cosines)),
        "token_agreement": agree / total,
        "run": f"staged, {len(segments)} segments in {pieces} pieces",
        "passed": all(r["passed"] for r in rows)
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
