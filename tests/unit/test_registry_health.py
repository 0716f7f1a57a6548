"""Adapter health computed by the registry at upload, from the uploaded bytes."""

from __future__ import annotations

from common.adapter_health import adapter_health
from common.peft_format import ADAPTER_FILES, WEIGHTS_FILE
from registry.health import upload_health
from tests.helpers.tiny_artifacts import adapter_files, lora_tensors


def test_upload_health_equals_the_training_report(demo):
    directory = demo.adapter_dirs["reverse"]
    files = {f: (directory / f).read_bytes() for f in ADAPTER_FILES}
    stored, trained = upload_health(files), adapter_health(directory)
    assert stored["rank"] == trained["rank"] == 8 and stored["modules"] == trained["modules"] == 14
    for key in ("effective_rank", "energy_rank", "near_zero_share", "utilization", "zero_modules", "notes"):
        assert stored[key] == trained[key], key
    module = next(iter(trained["per_module"]))
    assert stored["per_module"][module] == {k: trained["per_module"][module][k]
                                            for k in ("effective_rank", "energy_rank", "near_zero_share")}


def test_a_rank_one_update_in_a_rank_eight_adapter_is_reported():
    tensors = lora_tensors(rank=8)
    for key in tensors:  # every lora_B column the same: B·A has rank 1
        if ".lora_B." in key:
            tensors[key] = tensors[key][:, :1].repeat(1, 8)
    health = upload_health(adapter_files(rank=8, tensors=tensors))
    assert health["energy_rank"]["max"] == 1 and health["near_zero_share"] >= 7 / 8 - 1e-6
    assert health["effective_rank"]["max"] < 1.01


def test_unreadable_weights_give_no_health_instead_of_an_error():
    files = adapter_files(rank=4)
    assert upload_health({**files, WEIGHTS_FILE: b"\0" * 16}) is None
    assert upload_health(files)["rank"] == 4
