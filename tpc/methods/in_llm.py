"""In-LLM pruning methods (FastV, PyramidDrop, DART): which image tokens survive at which decoder layer.

A method turns its parameters into a ``PruningPlan``: ordered stages, each one

* ``layer``: the decoder layer that is the first to run on the shorter sequence;
* ``score_layer``: the layer whose own q/k (after RoPE, on that layer's input) give the
  last prompt token's attention to the image tokens (FastV: ``layer - 1``; PyramidDrop:
  ``layer`` itself);
* ``keep``: image tokens left after the stage (a subset of the previous stage's);
* ``positions``: ``original`` (survivors keep their position ids, gaps preserved) or
  ``renumbered`` (contiguous positions, the LLM never sees the gaps);
* ``rule``: how the survivors are picked: ``top-score`` (the top ``keep`` by the score above)
  or ``dart`` (DART's duplication greedy: pivots by the L1 norm of ``score_layer``'s post-RoPE
  keys, cosine on the final-normed hidden states entering ``layer``; the pivot counts are the
  plan's ``image_pivots``/``text_pivots`` parameters).

Text tokens are always kept. The plan is plain data: the exporter cuts the decoder into
segments at the stage layers, the runtime follows it, the reference applies it eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from tpc.errors import UsageError
from tpc.methods.llm_input import input_keep  # torch-free: DART's quota
from tpc.registry import Registry

ORIGINAL = "original"
RENUMBERED = "renumbered"
TOP_SCORE = "top-score"
DART = "dart"


@dataclass(frozen=True)
class Stage:
    layer: int
    score_layer: int
    keep: int
    positions: str
    rule: str = TOP_SCORE


@dataclass(frozen=True)
class PruningPlan:
    method: str
    parameters: dict[str, Any]
    image_tokens: int  # image tokens the decoder receives (after any pre-LLM selection)
    num_layers: int
    stages: tuple[Stage, ...]

    def segments(self) -> list[tuple[int, int]]:
        """Decoder layer ranges [start, end) between stage boundaries."""
        cuts = [0, *(s.layer for s in self.stages), self.num_layers]
        return list(pairwise(cuts))

    def layer_keep(self) -> list[int]:
        """Image tokens each decoder layer sees (the KV-length deficit of that layer)."""
        counts, current, stage = [], self.image_tokens, 0
        for layer in range(self.num_layers):
            while stage < len(self.stages) and self.stages[stage].layer == layer:
                current = self.stages[stage].keep
                stage += 1
            counts.append(current)
        return counts

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        data["segments"] = [list(s) for s in self.segments()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        return cls(
            method=data["method"],
            parameters=dict(data["parameters"]),
            image_tokens=data["image_tokens"],
            num_layers=data["num_layers"],
            stages=tuple(Stage(**s) for s in data["stages"]),
        )


@dataclass(frozen=True)
class Flags:
    """The command-line names errors use: the method's own flags, or the ``--llm-*`` ones."""

    method: str
    arg: str
    ratio: str


ALONE = Flags("method", "--method-arg", "--ratio")
COMPOSED = Flags("--llm-method", "--llm-method-arg", "--llm-ratio")


@dataclass(frozen=True)
class LlmMethod:
    name: str
    description: str
    params: tuple[tuple[str, str, str], ...]  # (name, default text, help)
    build: Callable[[dict[str, str], int, int, float | None, Flags], PruningPlan]
    prunes_at: str = "inside the LLM decoder"
    extra: dict[str, Any] = field(default_factory=dict)

    def plan(
        self, args: dict[str, str], num_layers: int, image_tokens: int, ratio: float | None, composed: bool = False
    ) -> PruningPlan:
        """``composed``: given as ``--llm-method`` after a pre-LLM method; errors then name the
        ``--llm-method-arg``/``--llm-ratio`` flags the user typed."""
        flags = COMPOSED if composed else ALONE
        known = {p[0] for p in self.params}
        unknown = sorted(set(args) - known)
        if unknown:
            raise UsageError(
                f"{flags.method} {self.name} has no parameter {unknown[0]!r} (parameters: {', '.join(sorted(known))})"
            )
        return self.build(dict(args), num_layers, image_tokens, ratio, flags)


def _int(name: str, text: str, flags: Flags) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{flags.arg} {name}={text!r}: expected an integer") from None


def _list(name: str, text: str, kind: type, flags: Flags) -> list:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise UsageError(f"{flags.arg} {name}={text!r}: expected comma-separated {kind.__name__}s") from None
    if not values:
        raise UsageError(f"{flags.arg} {name}: empty list")
    return values


def _check_layer(name: str, layer: int, num_layers: int, flags: Flags) -> None:
    if not 1 <= layer < num_layers:
        raise UsageError(
            f"{flags.arg} {name}={layer}: must be in [1, {num_layers - 1}] (the decoder has {num_layers} layers)"
        )


def fastv_keep(image_tokens: int, ratio: float) -> int:
    """``round(N * (1 - R))`` image tokens (METHODS.md), at least one."""
    return max(1, int(round(image_tokens * (1.0 - ratio) + 1e-9)))


def _fastv(args: dict[str, str], num_layers: int, image_tokens: int, ratio: float | None, flags: Flags) -> PruningPlan:
    layer = _int("layer", args.get("layer", "2"), flags)
    _check_layer("layer", layer, num_layers, flags)
    ratio = 0.5 if ratio is None else ratio
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"{flags.ratio} {ratio} is outside [0, 1): it is the fraction of image tokens FastV removes")
    stage = Stage(layer=layer, score_layer=layer - 1, keep=fastv_keep(image_tokens, ratio), positions=ORIGINAL)
    return PruningPlan("fastv", {"layer": layer, "ratio": ratio}, image_tokens, num_layers, (stage,))


def default_pdrop_layers(num_layers: int) -> list[int]:
    """The paper's 8/16/24 of 32 layers, scaled: the quarter points of the decoder."""
    return sorted({max(1, min(num_layers - 1, round(num_layers * q / 4))) for q in (1, 2, 3)})


def _pdrop(args: dict[str, str], num_layers: int, image_tokens: int, ratio: float | None, flags: Flags) -> PruningPlan:
    if ratio is not None:
        raise UsageError(f"pdrop takes its budgets from {flags.arg} keep=...; {flags.ratio} does not apply")
    layers = _list("layers", args["layers"], int, flags) if "layers" in args else default_pdrop_layers(num_layers)
    fractions = _list("keep", args.get("keep", "0.5,0.25,0.125"), float, flags)
    if "keep" not in args and len(layers) != 3:
        fractions = [0.5 ** (i + 1) for i in range(len(layers))]
    if len(layers) != len(fractions):
        raise UsageError(f"pdrop: {len(layers)} layers but {len(fractions)} keep fractions; give one per stage")
    for layer in layers:
        _check_layer("layers", layer, num_layers, flags)
    if any(b <= a for a, b in pairwise(layers)):
        raise UsageError(f"{flags.arg} layers={','.join(map(str, layers))}: layers must increase")
    if any(not 0.0 < f <= 1.0 for f in fractions) or any(b > a for a, b in pairwise(fractions)):
        raise UsageError(f"{flags.arg} keep=...: fractions in (0, 1], not increasing from stage to stage")
    stages, previous = [], image_tokens
    for layer, fraction in zip(layers, fractions, strict=True):
        keep = min(previous, max(1, int(image_tokens * fraction)))  # counts with int() (METHODS.md)
        stages.append(Stage(layer=layer, score_layer=layer, keep=keep, positions=RENUMBERED))
        previous = keep
    return PruningPlan("pdrop", {"layers": layers, "keep": fractions}, image_tokens, num_layers, tuple(stages))


FASTV = LlmMethod(
    name="fastv",
    description="FastV: at decoder layer K keep the image tokens the last prompt token attends to most "
    "(layer K-1's attention), original position ids",
    params=(("layer", "2", "first decoder layer that runs on the pruned sequence"),),
    build=_fastv,
)

PDROP = LlmMethod(
    name="pdrop",
    description="PyramidDrop: drop image tokens in stages by the last token's attention (the next layer's "
    "q/k), positions renumbered",
    params=(
        ("layers", "quarter points (8,16,24 of 32)", "stage layers, increasing"),
        ("keep", "0.5,0.25,0.125", "image-token fraction kept after each stage (of the input count)"),
    ),
    build=_pdrop,
)


def _dart_llm(
    args: dict[str, str], num_layers: int, image_tokens: int, ratio: float | None, flags: Flags
) -> PruningPlan:
    layer = _int("layer", args.get("layer", "2"), flags)
    _check_layer("layer", layer, num_layers, flags)
    image_pivots = _int("image_pivots", args.get("image_pivots", "4"), flags)
    text_pivots = _int("text_pivots", args.get("text_pivots", "4"), flags)
    if image_pivots < 1:
        raise UsageError(f"{flags.arg} image_pivots={image_pivots}: must be at least 1")
    if text_pivots < 0:
        raise UsageError(f"{flags.arg} text_pivots={text_pivots}: must be at least 0")
    if ratio is None:
        raise UsageError(f"dart-llm prunes inside the LLM: give {flags.ratio} R (the fraction of image tokens removed)")
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"{flags.ratio} {ratio} is outside [0, 1): it is the fraction of image tokens DART removes")
    keep = input_keep(image_tokens, ratio)  # clamp(ceil(n*(1-R)), 1, n), as DART at the LLM input
    stage = Stage(layer=layer, score_layer=layer - 1, keep=keep, positions=ORIGINAL, rule=DART)
    parameters = {"layer": layer, "ratio": ratio, "image_pivots": image_pivots, "text_pivots": text_pivots}
    return PruningPlan("dart-llm", parameters, image_tokens, num_layers, (stage,))


DART_LLM = LlmMethod(
    name="dart-llm",
    description="DART inside the decoder: before layer K keep the image tokens least duplicated by a few "
    "pivots (largest L1 norm of layer K-1's keys; cosine on the final-normed hidden states), original position ids",
    params=(
        ("layer", "2", "first decoder layer that runs on the pruned sequence (pivots from layer K-1's keys)"),
        ("image_pivots", "4", "image pivots: the largest key-L1 image tokens (kept, part of the quota)"),
        ("text_pivots", "4", "text pivots: the largest key-L1 prompt rows (fewer if the prompt is shorter)"),
    ),
    build=_dart_llm,
    prunes_at="inside the LLM decoder, before layer K",
)

LLM_METHODS: Registry[LlmMethod] = Registry("in-LLM method")
for _method in (FASTV, PDROP, DART_LLM):
    LLM_METHODS.register(_method.name, _method)


def plan_for_length(rule: dict[str, Any], num_layers: int, image_tokens: int) -> PruningPlan:
    """The plan for an image block of ``image_tokens`` under a length-independent rule
    (``{"method", "args", "ratio", "composed"}``): what unpruned multi-crop pictures get, whose
    block length follows each picture's aspect ratio."""
    method = LLM_METHODS.get(rule["method"])
    return method.plan(dict(rule["args"]), num_layers, image_tokens, rule["ratio"], rule.get("composed", False))
