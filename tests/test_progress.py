import io

from tpc.progress import StageProgress


def test_one_line_per_stage_without_a_terminal():
    stream = io.StringIO()
    with StageProgress(3, title="compile ", stream=stream).running() as progress:
        progress("load model")
        progress("trace vision")
    lines = stream.getvalue().splitlines()
    assert [line.split(" (+")[0] for line in lines] == ["compile [1/3] load model", "compile [2/3] trace vision"]
    assert all(line.endswith(" s)") for line in lines)


def test_quiet_prints_nothing():
    stream = io.StringIO()
    with StageProgress(2, quiet=True, stream=stream).running() as progress:
        progress("load model")
    assert stream.getvalue() == ""
