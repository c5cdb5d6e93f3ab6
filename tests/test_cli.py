"""The command line: outputs, and every user mistake as one line with its exit code."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from tests.conftest import ASSETS, run_cli

DEMO = str(ASSETS / "demo.png")


PROGRESS_LINE = re.compile(r"^\w+ .*\[\d+/\d+\] ")  # "compile [1/9] load model (+0.0 s)"


def _one_error_line(err: str, fragment: str) -> None:
    lines = [line for line in err.strip().splitlines() if line and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


def test_run_json(artifacts, capsys):
    code, out, err = run_cli(
        [
            "run",
            str(artifacts(0.89, "ort")),
            "--image",
            DEMO,
            "--prompt",
            "What is it?",
            "--max-new-tokens",
            "5",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) >= {"text", "token_ids", "timings_ms", "provider"}
    assert 1 <= len(payload["token_ids"]) <= 5
    assert payload["provider"] == "CPUExecutionProvider"
    assert payload["visual_tokens"] == {"before": 576, "after": 64, "crops": 1}
    for stage in ("preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms"):
        assert payload["timings_ms"][stage] > 0


def test_run_json_with_two_pictures(artifacts, tmp_path, capsys):
    """--image twice: both pictures in the prompt, in order; each reported with its own kept indices."""
    second = tmp_path / "second.png"
    Image.open(DEMO).rotate(90, expand=True).save(second)
    argv = ["run", str(artifacts(0.89, "ort")), "--image", DEMO, "--image", str(second), "--prompt", "Compare."]
    code, out, err = run_cli([*argv, "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["visual_tokens"] == {"before": 1152, "after": 128, "crops": 2}
    pictures = payload["pictures"]
    assert [p["tokens"] for p in pictures] == [64, 64]
    assert payload["kept_indices"] == pictures[0]["kept_indices"] + pictures[1]["kept_indices"]
    assert pictures[0]["kept_indices"] != pictures[1]["kept_indices"]


def test_run_text(artifacts, capsys):
    code, out, err = run_cli(["run", str(artifacts(0.89, "ort")), "--prompt", "Hi", "--max-new-tokens", "3"], capsys)
    assert code == 0 and "ttft" in err


def test_requested_gpu_provider_fallback_is_reported(artifacts, capsys):
    code, out, err = run_cli(
        ["run", str(artifacts(0.89, "ort")), "--prompt", "Hi", "--max-new-tokens", "2", "--provider", "cuda", "--json"],
        capsys,
    )
    assert code == 0
    assert "warning: requested CUDAExecutionProvider" in err
    assert json.loads(out)["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["compile", "no-such-model"], 2, "unknown model 'no-such-model'"),
        (
            ["compile", "llava-tiny", "--method", "nope"],
            2,
            "unknown method 'nope'; choose one of: cls-mass, divprune, fastervlm",
        ),
        (["compile", "llava-tiny", "--ratio", "1.0"], 2, "--ratio 1.0 is outside [0, 1)"),
        (["compile", "llava-tiny", "--ratio", "-0.2"], 2, "outside [0, 1)"),
        (["compile", "llava-tiny", "--keep", "577"], 2, "--keep 577 is outside [1, 576]"),
        (["compile", "llava-tiny", "--keep", "0"], 2, "--keep 0 is outside"),
    ],
)
def test_compile_usage_errors(args, code, fragment, tmp_path, capsys):
    out_dir = tmp_path / "out"
    got, out, err = run_cli(args + ["-o", str(out_dir)], capsys)
    assert got == code
    _one_error_line(err, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_checkpoint_that_is_not_llava(tmp_path, capsys):
    ckpt = tmp_path / "bert"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    code, out, err = run_cli(["compile", str(ckpt), "-o", str(tmp_path / "out")], capsys)
    assert code == 3
    _one_error_line(err, "model type 'bert' is not supported")
    assert not (tmp_path / "out").exists()


def test_directory_without_config(tmp_path, capsys):
    code, out, err = run_cli(["compile", str(tmp_path), "-o", str(tmp_path / "out")], capsys)
    assert code == 3
    _one_error_line(err, "not a checkpoint directory")


def test_hub_id_offline_names_the_alternatives(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(["compile", "someone/some-llava", "-o", str(tmp_path / "o")], capsys)
    assert code == 3
    _one_error_line(err, "local directory written by save_pretrained")
    assert "llava-tiny" in err


def test_unreadable_image(artifacts, tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("hello")
    code, out, err = run_cli(["run", str(artifacts(0.89, "ort")), "--image", str(bad), "--prompt", "q"], capsys)
    assert code == 2
    _one_error_line(err, "cannot read it as an image")


def test_prompt_longer_than_context(artifacts, capsys):
    code, out, err = run_cli(["run", str(artifacts(0.89, "ort")), "--prompt", "word " * 500, "--image", DEMO], capsys)
    assert code == 2
    _one_error_line(err, "longer than the model's context of 2048")


def test_missing_and_corrupt_artifacts(tmp_path, capsys):
    code, out, err = run_cli(["run", str(tmp_path / "none"), "--prompt", "q"], capsys)
    assert code == 4
    _one_error_line(err, "no such artifact directory")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("[]")
    code, out, err = run_cli(["run", str(tmp_path / "broken"), "--prompt", "q"], capsys)
    assert code == 4
    _one_error_line(err, "schema")


def test_bad_generation_settings(artifacts, capsys):
    code, out, err = run_cli(["run", str(artifacts(0.89, "ort")), "--prompt", "q", "--max-new-tokens", "0"], capsys)
    assert code == 2
    _one_error_line(err, "--max-new-tokens must be at least 1")


def test_compile_cli_success_and_presets(tmp_path, capsys):
    out_dir = tmp_path / "art"
    code, out, err = run_cli(
        ["compile", "llava-tiny", "--keep", "32", "--target", "onnx", "-o", str(out_dir), "--no-verify"], capsys
    )
    assert code == 0, err
    assert "576 -> 32 visual tokens" in out and "verification skipped" in out
    code, out, _ = run_cli(["presets"], capsys)
    assert code == 0 and "llava-1.5-7b-hf" in out and "llava-bench" in out


def test_grayscale_odd_sized_image_runs(artifacts, tmp_path, capsys):
    path = tmp_path / "odd.png"
    Image.new("L", (517, 283), 128).save(path)
    code, out, err = run_cli(
        ["run", str(artifacts(0.89, "ort")), "--image", str(path), "--prompt", "q", "--max-new-tokens", "2", "--json"],
        capsys,
    )
    assert code == 0, err
    assert len(json.loads(out)["kept_indices"]) == 64


def test_methods_listing_and_method_arg_errors(tmp_path, capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0
    for name in ("fastervlm", "vtc-cls", "visionzip", "divprune", "uniform", "pool", "random", "cls-mass"):
        assert f"\n{name} " in "\n" + out
    assert (
        "dominant=0 in [0, inf), contextual=0 in [0, inf)" in out
        and "mass=0.9 in (0, 1]" in out
        and "start_layer=16" in out
        and "mass=0.9" in out
    )
    code, _, err = run_cli(
        ["compile", "llava-tiny", "--method", "random", "--method-arg", "nope=1", "-o", str(tmp_path / "a")], capsys
    )
    assert code == 2
    _one_error_line(err, "method random has no parameter 'nope' (parameters: seed)")
    code, _, err = run_cli(
        ["compile", "llava-tiny", "--method", "random", "--method-arg", "seed=x", "-o", str(tmp_path / "b")], capsys
    )
    assert code == 2
    _one_error_line(err, "--method-arg seed='x': expected int")
    code, _, err = run_cli(["compile", "llava-tiny", "--method-arg", "novalue", "-o", str(tmp_path / "c")], capsys)
    assert code == 2
    _one_error_line(err, "expected KEY=VALUE")
    code, _, err = run_cli(
        ["compile", "llava-tiny", "--method", "pool", "--keep", "128", "-o", str(tmp_path / "d")], capsys
    )
    assert code == 2
    _one_error_line(err, "pool needs a square number of kept tokens")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--method", "fastv", "--keep", "10"], "--keep is for pre-LLM methods"),
        (["--method", "fastv", "--method-arg", "layer=4"], "--method-arg layer=4: must be in [1, 3]"),
        (["--method", "pdrop", "--ratio", "0.5"], "--ratio does not apply"),
        (["--method", "pdrop", "--method-arg", "layers=2,1"], "layers must increase"),
        (["--llm-ratio", "0.5"], "--llm-method-arg/--llm-ratio need --llm-method"),
        (["--llm-method", "nope"], "unknown in-LLM method 'nope'; choose one of: dart-llm, fastv, pdrop"),
        (["--method", "fastv", "--llm-method", "pdrop"], "is an in-LLM method"),
        (["--method", "fastv", "--method-arg", "layer=1", "--ratio", "1.5"], "--ratio 1.5 is outside [0, 1)"),
        # composed after a pre-LLM method, errors name the --llm-* flags the user typed
        (["--keep", "8", "--llm-method", "fastv", "--llm-ratio", "1.5"], "--llm-ratio 1.5 is outside [0, 1)"),
        (
            ["--keep", "8", "--llm-method", "fastv", "--llm-method-arg", "k=2"],
            "--llm-method fastv has no parameter 'k'",
        ),
        (
            ["--keep", "8", "--llm-method", "pdrop", "--llm-method-arg", "layers=2,1"],
            "--llm-method-arg layers=2,1: layers must increase",
        ),
    ],
)
def test_in_llm_usage_errors_leave_nothing_behind(args, fragment, tmp_path, capsys):
    code, _, err = run_cli(["compile", "llava-tiny", *args, "-o", str(tmp_path / "out")], capsys)
    assert code == 2
    _one_error_line(err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_methods_lists_the_in_llm_methods(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0
    assert "\nfastv " in out and "\npdrop " in out and "--llm-method fastv" in out


def test_compile_into_a_read_only_place_or_proc_fails_at_once(readonly_dir, tmp_path, capsys):
    for target in (readonly_dir / "out", "/proc/out"):
        code, out, err = run_cli(["compile", "llava-tiny", "--keep", "8", "-o", str(target)], capsys)
        assert code == 2
        _one_error_line(err, f"cannot write {target}")
        assert "[1/" not in err  # refused before loading the model


def test_profile_checks_its_outputs_before_measuring(readonly_dir, artifacts, capsys, monkeypatch):
    import tpc.profiling.session as session

    monkeypatch.setattr(session, "profile_artifact", lambda *a, **k: pytest.fail("measured before checking"))
    art = str(artifacts(0.89, "ort"))
    for flag in ("--json", "--plot"):
        code, out, err = run_cli(["profile", art, flag, str(readonly_dir / "p.out")], capsys)
        assert code == 2
        _one_error_line(err, "cannot write")


def test_force_never_deletes_user_files(tmp_path, capsys):
    mine = tmp_path / "exists"
    mine.mkdir()
    (mine / "userfile.txt").write_text("keep me")
    code, out, err = run_cli(["compile", "llava-tiny", "--keep", "8", "-o", str(mine), "--force"], capsys)
    assert code == 2
    _one_error_line(err, "not a tpc artifact")
    assert (mine / "userfile.txt").read_text() == "keep me"


def test_check_verifies_the_artifact_files(artifacts, tmp_path, capsys):
    import shutil

    source = artifacts(0.89, "trt")
    for victim in ("vision.onnx", "decoder.onnx.data"):
        copy = tmp_path / victim
        shutil.copytree(source, copy)
        (copy / victim).unlink()
        code, out, err = run_cli(["check", str(copy)], capsys)
        assert code == 4
        _one_error_line(err, f"{victim} is missing")
    code, out, err = run_cli(["check", str(source)], capsys)
    assert code == 0, err


def test_check_explains_which_artifacts_it_accepts(artifacts, capsys):
    code, out, err = run_cli(["check", str(artifacts(0.89, "ort"))], capsys)
    assert code == 2
    _one_error_line(err, "was compiled with --target ort")
    assert "accepts artifacts compiled with --target trt or onnx" in err


def test_compile_without_a_budget_says_it_is_unpruned(tmp_path, capsys):
    code, out, err = run_cli(
        ["compile", "llava-tiny", "--target", "onnx", "--no-verify", "-o", str(tmp_path / "u")], capsys
    )
    assert code == 0, err
    assert "576 -> 576 (unpruned) visual tokens" in out
    assert "note: no --ratio/--keep given: compiled UNPRUNED" in err


def test_progress_lines_without_a_terminal(tmp_path, capsys):
    code, out, err = run_cli(["compile", "llava-tiny", "--keep", "8", "--no-verify", "-o", str(tmp_path / "p")], capsys)
    assert code == 0, err
    stages = [line for line in err.splitlines() if PROGRESS_LINE.match(line)]
    assert stages[0].startswith("compile [1/9] load model (+") and len(stages) >= 6


def test_a_full_disk_is_one_line_and_leaves_no_artifact(tmp_path, capsys, monkeypatch):
    """The disk filling up while compile writes is the machine's fault: one line, exit 1, nothing left behind."""
    import errno

    import tpc.compiler.pipeline as pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "decoder.onnx.data"))

    monkeypatch.setattr(pipeline, "write_manifest", full)
    code, _, err = run_cli(
        ["compile", "llava-tiny", "--ratio", "0.5", "--no-verify", "-o", str(tmp_path / "out")], capsys
    )
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: No space left on device writing ")
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
