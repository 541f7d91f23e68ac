"""Issue 16 unit checks: one scrubbing function everywhere a URI is written or printed, safe model
loading errors, deterministic skip reasons, one-line worker errors, and the --resume params guard."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reidflow.errors import ArtifactError, ConfigError, DataError, one_line
from reidflow.store.scrub import scrub, scrub_text
from tests.unit.test_engine import cfg, make_loader, new_method
from tests.unit.test_shards import raw  # noqa: F401  (fixture)

PASSWORD = "hunter2SuperSecret"
SIGNED = "https://bucket.example.com/w.pth?X-Amz-Credential=AKIA&X-Amz-Signature=deadbeef"


@pytest.mark.parametrize(
    "text",
    [
        f"s3://user:{PASSWORD}@bucket/prefix",
        f"https://me:{PASSWORD}@host:8443/w.pth",
        f"https://host/w.pth?sig={PASSWORD}&se=2030",
        f"https://host/w.pth?token={PASSWORD}",
        f"Authorization: Bearer {PASSWORD}",
        f"error: could not reach https://u:{PASSWORD}@h/x (retrying)",
    ],
)
def test_scrub_text_masks_every_kind_of_secret(text):
    assert PASSWORD not in scrub_text(text)
    assert "***" in scrub_text(text)


def test_scrub_keeps_ordinary_values_and_masks_secret_keys(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", PASSWORD)
    cleaned = scrub({"lr": 0.1, "uri": "s3://bucket/a/b", "token": "t0k3n", "nested": [f"x {PASSWORD} y"]})
    assert cleaned == {"lr": 0.1, "uri": "s3://bucket/a/b", "token": "***", "nested": ["x *** y"]}


def test_credentials_in_an_s3_uri_are_refused_without_echoing_them(tmp_path):
    from reidflow.stages.trained_model import checkpoint_dir
    from reidflow.store.uri import parse_uri

    uri = f"s3://user:{PASSWORD}@bucket/runs/a"
    for call in (lambda: parse_uri(uri), lambda: checkpoint_dir(None, uri)):
        with pytest.raises(ConfigError, match="credentials in an s3:// URI are not accepted") as err:
            call()
        assert PASSWORD not in str(err.value)
    assert PASSWORD not in str(checkpoint_dir(None, "s3://bucket/runs/a"))


def test_model_json_never_holds_a_signed_url(tmp_path):
    from reidflow.models.artifact import save_model_artifact
    from reidflow.models.reid_model import ModelConfig, build_reid_model

    cfg_ = ModelConfig(backbone="osnet_x0_25", num_classes=3)
    model = build_reid_model(cfg_)
    cfg_ = cfg_.model_copy(update={"pretrained": SIGNED})  # as given in params: a signed URL
    save_model_artifact(tmp_path, model, cfg_, height=32, width=16, mean=(0.5,) * 3, std=(0.2,) * 3)
    text = (tmp_path / "model.json").read_text()
    assert "deadbeef" not in text and "X-Amz-Signature" not in text
    assert json.loads(text)["model"]["pretrained"] == "https://bucket.example.com/w.pth?***"


def test_a_pickle_posing_as_safetensors_is_refused_in_one_line(tmp_path):
    from reidflow.models.artifact import load_model_artifact, save_model_artifact
    from reidflow.models.reid_model import ModelConfig, build_reid_model

    cfg_ = ModelConfig(backbone="osnet_x0_25", num_classes=3)
    save_model_artifact(
        tmp_path, build_reid_model(cfg_), cfg_, height=32, width=16, mean=(0.5,) * 3, std=(0.2,) * 3
    )
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"w": torch.zeros(2)}))
    with pytest.raises(ArtifactError, match="model.safetensors: not a safetensors file") as err:
        load_model_artifact(tmp_path)
    assert "\n" not in str(err.value)


def test_skip_reasons_are_deterministic(raw, tmp_path):  # noqa: F811
    from reidflow.data.shards import write_shards

    root, samples = raw
    (root / samples[3].path).write_bytes(b"not an image at all")
    reasons = []
    for name in ("one", "two"):
        result = write_shards(samples, tmp_path / name, "market1501", root, skip_bad=True)
        reasons.append(json.loads(result.card_json.read_text())["skipped"])
    assert reasons[0] == reasons[1]
    assert (
        "0x" not in reasons[0][0]["reason"] and "cannot identify the image format" in reasons[0][0]["reason"]
    )


class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        raise DataError(f"shard-000000.tar: member {i} is not a JPEG")


def test_dataloader_worker_errors_become_one_line():
    loader = DataLoader(_Broken(), batch_size=2, num_workers=1)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert "Traceback" in str(err.value)  # what torch hands over: the worker's traceback
    assert one_line(err.value) == "shard-000000.tar: member 0 is not a JPEG"


# ------------------------------------------------------------------------------------------------
# --resume refuses changed training params, naming them


PARAMS = {"optimizer": {"lr": 0.003}, "engine": {"log_every": 1, "max_iters": 2}, "num_workers": 0}


def _fit(directory: Path, params: dict, resume: bool, max_iters: int = 2):
    from reidflow.train.engine import Engine

    loader = make_loader()
    engine = Engine(
        new_method(loader), loader, cfg(max_iters=max_iters), directory, default_hooks=False, params=params
    )
    return engine.fit(resume=resume)


def test_resume_with_changed_training_params_is_refused_naming_the_keys(tmp_path):
    _fit(tmp_path / "ck", PARAMS, resume=False)
    changed = json.loads(json.dumps(PARAMS))
    changed["optimizer"]["lr"] = 0.002
    changed["seed"] = 3
    with pytest.raises(ConfigError, match=r"--resume: .* optimizer\.lr, seed changed") as err:
        _fit(tmp_path / "ck", changed, resume=True)
    assert "\n" not in str(err.value)
    allowed = json.loads(json.dumps(PARAMS))
    allowed["engine"].update(log_every=5, max_iters=4)  # listed in RESUMABLE_KEYS
    allowed["num_workers"] = 2
    result = _fit(tmp_path / "ck", allowed, resume=True, max_iters=4)
    assert result.start_iteration == 2 and result.final_iteration == 4
    assert [r["iteration"] for r in result.history] == [1, 2, 3, 4]  # the history came back too
