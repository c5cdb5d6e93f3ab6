"""Pass infrastructure: ``PassResult``, the pass context, and the ordered pass runner."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.fx import GraphModule

from tpc.errors import ExportError, TpcError, UsageError
from tpc.methods.base import SelectionMethod
from tpc.models.base import VisionLayout

log = logging.getLogger(__name__)

DUMP_ENV = "TPC_DUMP_GRAPHS"


@dataclass
class PassResult:
    graph_module: GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassContext:
    """What the passes need to know: where tokens are (adapter) and what to insert."""

    layout: VisionLayout
    method: SelectionMethod
    keep: int
    params: dict[str, Any] = field(default_factory=dict)  # the method's parsed parameters
    select_layer: int | None = None  # select inside the ViT at this layer (None: at the feature layer)


GraphPass = Callable[[GraphModule, PassContext], PassResult]


def run_passes(
    gm: GraphModule,
    ctx: PassContext,
    passes: Sequence[GraphPass],
    dump_dir: str | os.PathLike | None = None,
) -> tuple[GraphModule, list[dict[str, Any]]]:
    """Run ``passes`` in order; returns the module and one log record per pass.

    The graph is dumped before and after each pass into ``dump_dir`` (or the
    directory named by ``$TPC_DUMP_GRAPHS``). A failing pass is reported with the
    names of the passes that ran before it.
    """
    dump = Path(dump_dir or os.environ.get(DUMP_ENV) or "") if (dump_dir or os.environ.get(DUMP_ENV)) else None
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for position, graph_pass in enumerate(passes):
        name = graph_pass.__name__
        if dump is not None:
            _dump(gm, dump / f"{position:02d}_{name}.before.txt")
        start = time.perf_counter()
        try:
            result = graph_pass(gm, ctx)
            if result.modified:
                result.graph_module.graph.lint()
                result.graph_module.recompile()
        except UsageError:
            raise  # a user's request the pass cannot honour: the user's error, as is
        except TpcError as exc:
            raise ExportError(f"pass {name} failed (after {_ran(records)}): {exc}") from exc
        except Exception as exc:  # a bug in a pass, reported with its context
            raise ExportError(f"pass {name} failed (after {_ran(records)}): {type(exc).__name__}: {exc}") from exc
        gm = result.graph_module
        record = {
            "name": name,
            "modified": result.modified,
            "seconds": round(time.perf_counter() - start, 4),
            "stats": result.stats,
        }
        records.append(record)
        log.info("pass %s: modified=%s %s", name, result.modified, result.stats)
        if dump is not None:
            _dump(gm, dump / f"{position:02d}_{name}.after.txt")
    return gm, records


def _ran(records: list[dict[str, Any]]) -> str:
    return ", ".join(r["name"] for r in records) or "no other pass"


def _dump(gm: GraphModule, path: Path) -> None:
    path.write_text(str(gm.graph))
