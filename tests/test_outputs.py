"""Writable-output checks and text reading: real read-only mounts, /proc, real binary files."""

from __future__ import annotations

import pytest

from tpc.errors import UsageError
from tpc.outputs import check_artifact_output, check_writable, read_text, write_text


def test_a_read_only_directory_is_refused_for_files_and_directories(readonly_dir):
    with pytest.raises(UsageError, match=r"^cannot write .*prof\.json"):
        check_writable(readonly_dir / "prof.json")
    with pytest.raises(UsageError, match="cannot write"):
        check_writable(readonly_dir / "deeper" / "out", "directory")
    assert list(readonly_dir.iterdir()) == []


def test_proc_is_refused():
    with pytest.raises(UsageError, match="cannot write /proc/out"):
        check_writable("/proc/out", "directory")


def test_a_directory_where_a_file_is_expected(tmp_path):
    with pytest.raises(UsageError, match="it is a directory"):
        check_writable(tmp_path)


def test_missing_parents_under_a_writable_directory_are_fine(tmp_path):
    assert check_writable(tmp_path / "a" / "b" / "c.json") == tmp_path / "a" / "b" / "c.json"
    assert not (tmp_path / "a").exists()  # the check creates nothing
    assert list(tmp_path.iterdir()) == []


def test_write_text_into_a_read_only_place_is_one_line(readonly_dir):
    with pytest.raises(UsageError, match="cannot write"):
        write_text(readonly_dir / "x.xml", "<x/>")


def test_read_text_refuses_binary_missing_directories_and_non_utf8(tmp_path):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(UsageError, match="a binary file, expected text"):
        read_text(png, "profile")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("caf\xe9: 1\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        read_text(latin, "budget")
    with pytest.raises(UsageError, match="no such file"):
        read_text(tmp_path / "missing.json", "profile")
    with pytest.raises(UsageError, match="is a directory"):
        read_text(tmp_path, "profile")
    good = tmp_path / "ok.json"
    good.write_text("{}")
    assert read_text(good, "profile") == "{}"


def test_artifact_output_rules(tmp_path):
    check_artifact_output(tmp_path / "new", force=False)
    (tmp_path / "empty").mkdir()
    check_artifact_output(tmp_path / "empty", force=False)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(UsageError, match="not a tpc artifact"):
            check_artifact_output(user, force=force)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "manifest.json").write_text("{}")
    with pytest.raises(UsageError, match="--force"):
        check_artifact_output(artifact, force=False)
    check_artifact_output(artifact, force=True)
    assert (user / "notes.txt").read_text() == "mine"


def test_artifact_output_in_a_read_only_place(readonly_dir):
    with pytest.raises(UsageError, match="cannot write"):
        check_artifact_output(readonly_dir / "out", force=False)
