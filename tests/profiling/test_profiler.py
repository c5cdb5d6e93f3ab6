import json
from importlib import resources

import jsonschema
import pytest

from tpc.profiling.profiler import E2E_PARTS, ProfileConfig, profile_model
from tpc.profiling.stats import summarize
from tpc.runtimes.compiled_model import CompiledModel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def schema():
    return json.loads(resources.files("tpc.profiling").joinpath("profile.schema.json").read_text())


@pytest.fixture(scope="module")
def profile(artifacts):
    model = CompiledModel.load(artifacts(0.89, "ort"))
    return profile_model(model, ProfileConfig(runs=4, warmup=1, new_tokens=6, prompt_tokens=16))


def test_summary_percentiles():
    s = summarize([5, 1, 3, 2, 4])
    assert (s["p50"], s["min"], s["max"], s["n"]) == (3, 1, 5, 5)
    assert s["p90"] == pytest.approx(4.6) and s["samples"] == [5, 1, 3, 2, 4]


def test_profile_matches_the_documented_schema(profile):
    jsonschema.validate(profile, schema())
    for stage in (
        "preprocess_ms",
        "vision_ms",
        "embed_ms",
        "prefill_ms",
        "ttft_ms",
        "decode_ms_per_token",
        "decode_tokens_per_s",
        "e2e_ms",
    ):
        assert set(profile["metrics"][stage]) >= {"p50", "p90", "p99", "min", "max"}
        assert profile["metrics"][stage]["n"] == 4
    assert profile["visual_tokens"] == {"before": 576, "after": 64, "crops_per_image": [1], "per_crop_before": 576}
    assert profile["device"]["kind"] == "cpu" and profile["device"]["cpu_model"]
    assert profile["kv_cache_bytes"] > 0 and profile["peak_memory_mb"] > 0
    assert profile["decode_steps"] == 5


def test_schema_rejects_a_profile_without_metrics(profile):
    broken = dict(profile)
    del broken["metrics"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema())


def test_stage_times_add_up_to_end_to_end(profile):
    import statistics

    gaps, totals = [], []
    for run in range(4):
        parts = sum(profile["metrics"][p]["samples"][run] for p in E2E_PARTS)
        e2e = profile["metrics"]["e2e_ms"]["samples"][run]
        assert parts <= e2e + 1e-3  # stages never overlap or double count
        gaps.append(e2e - parts)
        totals.append(e2e)
    # the time outside any stage (loop bookkeeping) is small; medians ride out scheduler hiccups
    assert statistics.median(gaps) <= max(2.0, 0.05 * statistics.median(totals)), (gaps, totals)
    ttft = profile["metrics"]["ttft_ms"]["samples"][0]
    first_four = sum(profile["metrics"][p]["samples"][0] for p in E2E_PARTS[:4])
    assert ttft == pytest.approx(first_four, abs=1e-3)


def test_plots_are_png(profile, tmp_path):
    from tpc.profiling.plot import plot_profile, plot_sweep

    one = plot_profile(profile, tmp_path / "p.png")
    other = dict(profile, artifact=dict(profile["artifact"], ratio=0.0))
    sweep = plot_sweep(
        {"schema": "tpc.profile.sweep", "schema_version": 1, "points": [other, profile]}, tmp_path / "s.png"
    )
    for path in (one, sweep):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_bad_profile_settings_are_rejected():
    from tpc.errors import UsageError

    with pytest.raises(UsageError, match="--runs"):
        ProfileConfig(runs=0).validate()


def test_in_llm_profile_reports_per_layer_kv_lengths(llm_artifacts):
    from tpc.profiling.profiler import ProfileConfig, profile_model
    from tpc.runtimes.compiled_model import CompiledModel

    model = CompiledModel.load(llm_artifacts("fastv"), runtime="ort")
    doc = profile_model(model, ProfileConfig(runs=1, warmup=0, prompt_tokens=8, new_tokens=3))
    jsonschema.validate(doc, schema())
    lengths = doc["kv_lengths"]
    assert lengths[0] == lengths[1] == lengths[2] + 432 == doc["prompt_length"] + 2  # 576 -> 144 from layer 2
    assert doc["llm_pruning"]["stages"][0]["keep"] == 144
