"""Graph passes: the only code that edits a traced graph.

``DEFAULT_PASSES`` is the one ordered list the compiler runs on the vision graph.
"""

from tpc.passes.expose_cls_attention import expose_cls_attention
from tpc.passes.expose_feature_values import expose_feature_values
from tpc.passes.expose_received_attention import expose_received_attention
from tpc.passes.expose_selection_inputs import expose_selection_inputs
from tpc.passes.infra import PassContext, PassResult, run_passes
from tpc.passes.insert_token_selection import insert_token_selection
from tpc.passes.remove_dead_vision_layers import remove_dead_vision_layers
from tpc.passes.select_in_vit import select_in_vit

DEFAULT_PASSES = (
    remove_dead_vision_layers,
    expose_cls_attention,
    expose_received_attention,
    expose_feature_values,
    select_in_vit,
    insert_token_selection,
)

# Bucketed artifacts: the vision graph ends at the selection's inputs (see compiler/buckets.py).
BUCKETED_PASSES = (
    remove_dead_vision_layers,
    expose_cls_attention,
    expose_received_attention,
    expose_feature_values,
    expose_selection_inputs,
)

__all__ = ["BUCKETED_PASSES", "DEFAULT_PASSES", "PassContext", "PassResult", "run_passes"]
