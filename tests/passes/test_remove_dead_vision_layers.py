import torch

from tests.passes.helpers import context, pixels, traced
from tpc.models.llava import LlavaAdapter
from tpc.models.presets import PRESETS, build_preset
from tpc.passes.graph_lookup import layer_prefix, nodes_in
from tpc.passes.remove_dead_vision_layers import remove_dead_vision_layers


def test_removes_the_layer_after_the_feature_layer_and_keeps_numbers(tiny_adapter):
    gm = traced(tiny_adapter)
    x = pixels()
    with torch.no_grad():
        before = gm(x)[0]
    last = layer_prefix(tiny_adapter.vision.layers_path, tiny_adapter.vision.num_layers - 1)
    assert nodes_in(gm, last)
    result = remove_dead_vision_layers(gm, context(tiny_adapter))
    assert result.modified
    assert result.stats["removed_layers"] == [tiny_adapter.vision.num_layers - 1]
    assert not nodes_in(result.graph_module, last)
    result.graph_module.recompile()
    assert not any("layers.2." in name for name, _ in result.graph_module.named_parameters())
    with torch.no_grad():
        after = result.graph_module(x)[0]
    assert torch.equal(before, after)


def test_is_idempotent(tiny_adapter):
    gm = traced(tiny_adapter)
    first = remove_dead_vision_layers(gm, context(tiny_adapter))
    second = remove_dead_vision_layers(first.graph_module, context(tiny_adapter))
    assert first.modified and not second.modified


def test_no_op_when_the_feature_layer_is_the_last_layer():
    model, processor = build_preset(PRESETS["llava-tiny"])
    model.config.vision_feature_layer = -1
    adapter = LlavaAdapter(model, processor)
    assert adapter.vision.feature_layer == adapter.vision.num_layers - 1
    gm = traced(adapter)
    count = len(gm.graph.nodes)
    result = remove_dead_vision_layers(gm, context(adapter))
    assert not result.modified and len(result.graph_module.graph.nodes) == count
