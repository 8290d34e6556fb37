"""Checkpoints are validated as a pair before use: every broken file is one CheckpointError line naming the
field or tensor and the file, never a raw KeyError/TypeError/ValueError from deep inside loading."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kronos import CheckpointError, KronosPathSampler
from support.kronos_checkpoints import write_checkpoint_pair


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_checkpoint_pair(tmp_path_factory.mktemp("kronos_ckpt"), "tiny", seed=5)


def broken_copy(tmp_path: Path, pair: tuple[Path, Path]) -> tuple[Path, Path]:
    model, tok = tmp_path / "model", tmp_path / "tok"
    shutil.copytree(pair[0], model)
    shutil.copytree(pair[1], tok)
    return model, tok


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is DELETE:
            del cfg[key]
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


DELETE = object()


def load_error(model: Path, tok: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        KronosPathSampler.from_pretrained(model, tok, device="cpu")
    message = str(err.value)
    assert "\n" not in message, "one line"
    return message


def test_tiny_pair_loads(tiny):
    s = KronosPathSampler.from_pretrained(*tiny, device="cpu")
    assert s.model.cfg.d_model == 32 and s.tokenizer.cfg.d_model == 32 and s.max_context == 512


@pytest.mark.parametrize("which,changes,message", [
    ("model", dict(n_heads="2"), "field 'n_heads' must be a positive integer, got '2'"),
    ("model", dict(d_model=32.0), "field 'd_model' must be a positive integer, got 32.0"),
    ("model", dict(n_layers=True), "field 'n_layers' must be a positive integer, got True"),
    ("model", dict(ff_dim=0), "field 'ff_dim' must be a positive integer, got 0"),
    ("model", dict(s1_bits=-10), "field 's1_bits' must be a positive integer"),
    ("model", dict(learn_te="yes"), "field 'learn_te' must be true or false"),
    ("model", dict(learn_te=False), "field 'learn_te' is false"),
    ("model", dict(n_heads=3), r"field 'd_model' \(32\) is not divisible by n_heads \(3\)"),
    ("model", dict(d_model=36, n_heads=3), "head dimension d_model/dependency-layer n_heads = 9 must be even"),
    ("model", dict(d_model=34, n_heads=1), r"'d_model' \(34\) is not divisible by dependency-layer n_heads \(4\)"),
    ("model", dict(n_heads=32), "head dimension d_model/n_heads = 1 must be even"),
    ("model", dict(n_layers=DELETE), "not a Kronos predictor config: missing field 'n_layers'"),
    ("tok", dict(d_in=5), "field 'd_in' must be 6"),
    ("tok", dict(n_heads=5), r"field 'd_model' \(32\) is not divisible by n_heads \(5\)"),
    ("tok", dict(n_enc_layers=0), "field 'n_enc_layers' must be a positive integer, got 0"),
    ("tok", dict(n_dec_layers=None), "field 'n_dec_layers' must be a positive integer, got None"),
    ("tok", dict(ff_dim=[64]), "field 'ff_dim' must be a positive integer"),
    ("tok", dict(s2_bits=DELETE), "not a Kronos tokenizer config: missing field 's2_bits'"),
    ("tok", dict(s1_bits=9), "field 's1_bits' is 9 but the predictor .* has 10: tokenizer and predictor do not pair"),
    ("model", dict(s2_bits=11), "field 's2_bits' is 10 but the predictor .* has 11"),
])
def test_bad_config_is_named(tmp_path, tiny, which, changes, message):
    model, tok = broken_copy(tmp_path, tiny)
    edit_config(model if which == "model" else tok, **changes)
    text = load_error(model, tok)
    assert re.search(message, text), text
    assert "config.json" in text


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object, got list"),
    ("42", "must hold a JSON object, got int"),
    ("", "not valid JSON"),
])
def test_config_that_is_not_an_object(tmp_path, tiny, content, message):
    model, tok = broken_copy(tmp_path, tiny)
    (model / "config.json").write_text(content)
    text = load_error(model, tok)
    assert message in text and str(model / "config.json") in text


def test_wrong_kind_of_checkpoint(tiny):
    assert "not a Kronos predictor config" in load_error(tiny[1], tiny[1])  # a tokenizer where the model should be


@pytest.mark.parametrize("which,value", [("model", float("nan")), ("model", float("inf")), ("tok", float("-inf"))])
def test_non_finite_weights_are_named(tmp_path, tiny, which, value):
    model, tok = broken_copy(tmp_path, tiny)
    folder = model if which == "model" else tok
    name = "transformer.1.ffn.w2.weight" if which == "model" else "decoder.0.self_attn.v_proj.bias"
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[name][0] = value
    save_file(tensors, str(folder / "model.safetensors"))
    text = load_error(model, tok)
    assert f"tensor {name} has non-finite values" in text and str(folder / "model.safetensors") in text


def test_integer_weights_are_named(tmp_path, tiny):
    model, tok = broken_copy(tmp_path, tiny)
    tensors = load_file(str(model / "model.safetensors"))
    tensors["norm.weight"] = tensors["norm.weight"].to(torch.int32)
    save_file(tensors, str(model / "model.safetensors"))
    assert "tensor norm.weight has dtype torch.int32" in load_error(model, tok)


def test_unreadable_weights(tmp_path, tiny):
    model, tok = broken_copy(tmp_path, tiny)
    (tok / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert f"cannot read {tok / 'model.safetensors'}" in load_error(model, tok)


@pytest.mark.parametrize("edit,message", [
    ("drop", "missing tensor head.proj_s1.weight"),
    ("extra", "unexpected tensor head.proj_s3.weight"),
    ("reshape", r"mis-shaped tensor head.proj_s1.weight: checkpoint \(1024, 7\)"),
])
def test_tensor_mismatch_is_named(tmp_path, tiny, edit, message):
    model, tok = broken_copy(tmp_path, tiny)
    tensors = load_file(str(model / "model.safetensors"))
    if edit == "drop":
        del tensors["head.proj_s1.weight"]
    elif edit == "extra":
        tensors["head.proj_s3.weight"] = torch.zeros(2)
    else:
        tensors["head.proj_s1.weight"] = torch.zeros(1024, 7)
    save_file(tensors, str(model / "model.safetensors"))
    assert re.search(message, load_error(model, tok))


def test_config_shape_mismatch_is_named(tmp_path, tiny):
    model, tok = broken_copy(tmp_path, tiny)
    edit_config(model, n_layers=3)
    assert "missing tensor transformer.2" in load_error(model, tok)


def test_missing_files(tmp_path, tiny):
    assert "does not exist" in load_error(tmp_path / "nowhere", tiny[1])
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny[0] / "config.json", partial)
    assert "lacks model.safetensors" in load_error(partial, tiny[1])
