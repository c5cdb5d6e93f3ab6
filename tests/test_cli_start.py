"""Start-up of `tpc run`: early argument errors, and an ONNX Runtime run that never imports torch.

Timings are measured by benchmarks/cli_start_bench.py (BENCHMARKS.md, "CLI start-up"),
not asserted here; these tests check what decides them: which modules a run imports and
that bad arguments fail before the artifact is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ASSETS, run_cli
from tpc.errors import UsageError

DEMO = str(ASSETS / "demo.png")
HEAVY = ("torch", "transformers", "tpc.compiler")

_API_RUN = """
import json, sys
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.light_processor import LightProcessor

model = CompiledModel.load(sys.argv[1])
result = model.generate(["What is in the picture?"], [sys.argv[2]], max_new_tokens=4)
text = model.decode(result.token_ids[0])
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"heavy": heavy, "light": isinstance(model.encoder.processor, LightProcessor),
                  "tokens": result.token_ids[0], "text": text}}))
"""

_CLI_RUN = """
import json, sys
from tpc.cli import main

try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules]}}), file=sys.stderr)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        env=env,
    )


def test_compiled_model_on_an_ort_artifact_imports_no_torch_transformers_or_compiler(artifacts):
    art = artifacts(0.89, "ort")
    done = _python(_API_RUN.format(heavy=HEAVY), str(art), DEMO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"imported {report['heavy']}"
    assert report["light"] and 1 <= len(report["tokens"]) <= 4


def test_tpc_run_imports_no_torch_and_bad_arguments_stop_before_the_artifact(artifacts, tmp_path):
    art = str(artifacts(0.89, "ort"))
    done = _python(_CLI_RUN.format(heavy=HEAVY), "run", art, "--image", DEMO, "--prompt", "Hi", "--max-new-tokens", "2")
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, done.stderr
    # an argument error comes before the artifact is read: a missing artifact is not reported
    missing = str(tmp_path / "not-there")
    done = _python(_CLI_RUN.format(heavy=HEAVY), "run", missing, "--prompt", "x", "--max-new-tokens", "0")
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "error: --max-new-tokens must be at least 1, got 0"
    assert json.loads(lines[-1]) == {"code": 2, "heavy": []}


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1, got -5"),
        (["--temperature", "-0.5"], "--temperature must be >= 0"),
        (["--temperature", "nan"], "--temperature must be >= 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--keep", "0"], "--keep must be at least 1"),
        (["--ratio", "1"], "--ratio 1.0 is outside [0, 1)"),
        (["--ratio", "-0.1"], "--ratio -0.1 is outside [0, 1)"),
        (["--keep", "8", "--ratio", "0.5"], "--keep and --ratio both set the visual-token budget"),
        (["--image", "/no/such/picture.png"], "image /no/such/picture.png: no such file"),
        (["--image", "/"], "image /: not a file"),
    ],
)
def test_bad_run_arguments_are_one_line_usage_errors(tmp_path, capsys, flags, message):
    # the artifact does not exist: every one of these must be reported before it is looked at
    code, out, err = run_cli(["run", str(tmp_path / "art"), "--prompt", "q", *flags], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  "])
def test_empty_prompt_is_refused_by_the_cli_and_the_api(artifacts, capsys, prompt):
    code, out, err = run_cli(["run", str(artifacts(0.89, "ort")), "--prompt", prompt, "--image", DEMO], capsys)
    assert code == 2
    assert err.strip() == "error: --prompt is empty; a prompt needs text (a question or an instruction)"

    from tpc.runtimes.compiled_model import CompiledModel

    model = CompiledModel.load(artifacts(0.89, "ort"))
    with pytest.raises(UsageError, match="the prompt is empty; a prompt needs text"):
        model.generate([prompt], [DEMO], max_new_tokens=2)
    with pytest.raises(UsageError, match="prompt 1 is empty; a prompt needs text"):
        model.generate(["What is it?", prompt], None, max_new_tokens=2)
    with pytest.raises(UsageError, match="--max-new-tokens must be at least 1"):
        model.generate(["What is it?"], None, max_new_tokens=0)
