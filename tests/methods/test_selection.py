import numpy as np
import onnxruntime as ort
import torch

from tpc.methods.attention import cls_attention_row
from tpc.methods.selection import gather_tokens, reference_topk_ascending, topk_ascending


def test_topk_ascending_keeps_best_in_raster_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [5.0, 1.0, 4.0, 3.0, 2.0]])
    assert topk_ascending(scores, 3).tolist() == [[1, 2, 3], [0, 2, 3]]
    assert reference_topk_ascending(scores, 3).tolist() == [[1, 2, 3], [0, 2, 3]]


def test_reference_breaks_ties_toward_lower_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5, 2.0]])
    assert reference_topk_ascending(scores, 2).tolist() == [[1, 2]]
    assert reference_topk_ascending(scores, 4).tolist() == [[1, 2, 3, 5]]


class _Select(torch.nn.Module):
    def forward(self, scores):
        return topk_ascending(scores, 3)


def test_exported_selection_breaks_ties_like_the_reference(tmp_path):
    """The deployed graph (ONNX TopK) and the PyTorch reference agree on planted ties."""
    path = tmp_path / "select.onnx"
    sample = torch.rand(2, 8)
    torch.onnx.export(
        _Select(),
        (sample,),
        str(path),
        dynamo=True,
        input_names=["scores"],
        dynamic_shapes={"scores": {0: torch.export.Dim("batch", min=1, max=8)}},
    )
    session = ort.InferenceSession(str(path))
    planted = np.array([[1, 3, 3, 3, 3, 0, 3, 1], [2, 2, 2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 9, 9, 0]], np.float32)
    (got,) = session.run(None, {"scores": planted})
    assert got.tolist() == reference_topk_ascending(torch.from_numpy(planted), 3).tolist()
    assert got.tolist() == [[1, 2, 3], [0, 1, 2], [0, 5, 6]]


def test_gather_tokens_picks_rows_per_sample():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    out = gather_tokens(tokens, torch.tensor([[0, 4], [1, 2]]))
    assert torch.equal(out[0], tokens[0, [0, 4]]) and torch.equal(out[1], tokens[1, [1, 2]])


def test_cls_row_equals_row_zero_of_the_full_attention_matrix():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    scale = 8**-0.5
    full = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # [B,H,T,T], materialised
    expected = full[:, :, 0, 1:].mean(dim=1)
    torch.testing.assert_close(cls_attention_row(q, k, scale), expected)
