import json

import jsonschema

from tests.conftest import run_cli
from tests.profiling.test_profiler import PNG_MAGIC, schema


def test_sweep_compiles_through_the_cache_and_reports_every_ratio(tmp_path, capsys):
    args = [
        "profile",
        "llava-tiny",
        "--sweep-ratios",
        "0,0.889",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--new-tokens",
        "3",
        "--prompt-tokens",
        "8",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        str(tmp_path / "sweep.json"),
        "--plot",
        str(tmp_path / "sweep.png"),
        "-q",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    jsonschema.validate(sweep, schema())
    assert [p["artifact"]["keep"] for p in sweep["points"]] == [576, 64]
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2
    mtimes = {p: (tmp_path / "cache" / p / "manifest.json").stat().st_mtime for p in cached}
    code, _, err = run_cli(args, capsys)  # second sweep reuses the cached artifacts
    assert code == 0, err
    assert {p: (tmp_path / "cache" / p / "manifest.json").stat().st_mtime for p in cached} == mtimes


def test_profile_usage_errors(tmp_path, capsys, artifacts):
    code, _, err = run_cli(["profile", str(artifacts(0.89, "ort")), "--sweep-ratios", "0,0.5", "-q"], capsys)
    assert code == 2 and "not a compiled artifact" in err
    code, _, err = run_cli(["profile", str(artifacts(0.89, "ort")), "--runs", "0", "-q"], capsys)
    assert code == 2 and "--runs must be at least 1" in err
    code, _, err = run_cli(["profile", "llava-tiny", "--sweep-ratios", "0,x", "-q"], capsys)
    assert code == 2 and "comma-separated" in err
