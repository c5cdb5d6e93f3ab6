"""Model arguments are classified without loading anything; missing local paths fail at once."""

from __future__ import annotations

import time

import pytest

from tpc.errors import ModelLoadError, UsageError
from tpc.models.source import check_model_arg, looks_like_hub_id, looks_like_path, resolve_model_arg


def test_presets_local_directories_and_hub_ids(tmp_path):
    assert resolve_model_arg("llava-tiny").kind == "preset"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    assert resolve_model_arg(str(ckpt)).kind == "local"
    assert resolve_model_arg("owner/name").kind == "hub"


@pytest.mark.parametrize("arg", ["./ckpt", "../x/y", "/no/such/dir", "~/models/llava", "a/b/c", "ckpt/"])
def test_path_like_arguments_that_do_not_exist_are_reported_as_missing_folders(arg):
    assert looks_like_path(arg)
    with pytest.raises(UsageError, match="no such local directory"):
        resolve_model_arg(arg)


def test_owner_name_under_an_existing_local_folder_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    started = time.perf_counter()
    with pytest.raises(UsageError, match="model checkpoints/my-llava: no such local directory"):
        check_model_arg("checkpoints/my-llava")
    assert time.perf_counter() - started < 5  # no hub look-up, no retries


def test_hub_ids_fail_fast_offline_and_name_both_readings(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        check_model_arg("checkpoints/my-llava")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "no local directory 'checkpoints/my-llava' exists" in message


def test_hub_id_shape():
    assert looks_like_hub_id("llava-hf/llava-1.5-7b-hf")
    assert not looks_like_hub_id("a/b/c") and not looks_like_hub_id("no-slash") and not looks_like_hub_id("a/")
