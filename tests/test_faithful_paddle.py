"""PaddleClas ResNet50_vd (.pdparams) -> timm resnet50d (issue 15 item 4).

The synthetic Paddle files are built from a random timm resnet50d through the inverse of the
name tables, in Paddle's own layout (numpy arrays, Linear weight [in, out], BN scale / offset /
mean / variance), pickled as paddle.save does; converting back must give the timm weights
exactly, and the converted file must load as an SSLD teacher. A pickle naming any global other
than numpy's array constructors is refused before anything in it runs."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fastdisco.errors import FastdiscoError
from fastdisco.models.paddle_convert import convert_file, read_pdparams, static_names, structured_names


@pytest.fixture(scope="module")
def timm_sd():
    import timm

    torch.manual_seed(0)
    sd = timm.create_model("resnet50d", pretrained=False).state_dict()
    with torch.no_grad():  # BN statistics away from their 0 / 1 init, so a swapped name shows
        for k, v in sd.items():
            if k.endswith(("running_mean", "running_var", "bn1.weight", "bn1.bias")):
                v.copy_(torch.rand_like(v) + 0.5)
    return sd


def _paddle_params(sd, table) -> dict:
    params = {}
    for paddle_name, key in table.items():
        arr = sd[key].numpy().copy()
        params[paddle_name] = arr.T.copy() if key == "fc.weight" else arr  # Paddle Linear: [in, out]
    return params


@pytest.mark.parametrize("scheme,protocol", [("static", 2), ("structured", 4), ("structured", 5)])
def test_pdparams_convert_to_timm_exactly(timm_sd, tmp_path, scheme, protocol):
    table = static_names() if scheme == "static" else structured_names()
    params = _paddle_params(timm_sd, table)
    if scheme == "structured":  # paddle.save's name table rides along; it is not a parameter
        params["StructuredToParameterName@@"] = {k: f"p_{i}" for i, k in enumerate(table)}
    src = tmp_path / "ResNet50_vd_ssld_pretrained.pdparams"
    src.write_bytes(pickle.dumps(params, protocol=protocol))
    info = convert_file(src, tmp_path / "r50d.safetensors")
    assert info["scheme"] == scheme and info["num_classes"] == 1000
    from safetensors.torch import load_file

    out = load_file(str(tmp_path / "r50d.safetensors"))
    assert set(out) == set(timm_sd)
    for k, v in timm_sd.items():
        assert torch.equal(out[k], v), k
    assert "conv1_1_weights" in static_names() and "bnv1_1_scale" in static_names()  # PaddleClas's names


@pytest.mark.slow
def test_converted_file_loads_as_ssld_teacher(timm_sd, tmp_path):
    from fastdisco.config import ModelConfig
    from fastdisco.models.teacher import load_teacher

    src = tmp_path / "t.pdparams"
    src.write_bytes(pickle.dumps(_paddle_params(timm_sd, static_names()), protocol=2))
    convert_file(src, tmp_path / "t.pt")
    teacher = load_teacher(ModelConfig(teacher="resnet50d", teacher_ckpt=str(tmp_path / "t.pt"),
                                       teacher_format="timm", teacher_bn="eval"), output="logits")
    assert torch.equal(teacher.backbone.fc.weight, timm_sd["fc.weight"])
    x = torch.randn(2, 3, 64, 64)
    assert teacher(x).shape == (2, 1000)
    # the .pdparams itself is a teacher checkpoint too (teacher_format auto -> paddle, arch resnet50d)
    direct = load_teacher(ModelConfig(teacher_ckpt=str(src), teacher_bn="eval"), output="logits")
    assert direct.format == "paddle" and direct.name == "resnet50d"
    assert torch.equal(direct(x), teacher(x))


def test_wrong_names_and_shapes_are_named(timm_sd, tmp_path):
    params = _paddle_params(timm_sd, static_names())
    del params["res3b_branch2b_weights"]
    params["res2a_branch2a_weights"] = params["res2a_branch2a_weights"][:32]
    params["extra_w"] = np.zeros(3, np.float32)
    src = tmp_path / "bad.pdparams"
    src.write_bytes(pickle.dumps(params, protocol=2))
    with pytest.raises(FastdiscoError) as e:
        convert_file(src, tmp_path / "bad.pt")
    msg = str(e.value)
    assert "\n" not in msg
    assert "extra_w" in msg and "layer2.1.conv2.weight (Paddle res3b_branch2b_weights)" in msg
    assert "layer1.0.conv1.weight (32, 64, 1, 1) vs (64, 64, 1, 1)" in msg
    (tmp_path / "foreign.pdparams").write_bytes(pickle.dumps({"w": np.zeros(2)}))
    with pytest.raises(FastdiscoError, match="not a PaddleClas ResNet50_vd parameter file"):
        convert_file(tmp_path / "foreign.pdparams", tmp_path / "x.pt")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pdparams"
    src.write_bytes(pickle.dumps({"conv1_1_weights": _Evil(marker)}, protocol=2))
    with pytest.raises(FastdiscoError, match=r"refusing to read .*global '(posix|os|nt)\.system' is not allowed"):
        read_pdparams(src)
    assert not marker.exists()


def test_cli_convert_teacher(timm_sd, tmp_path, capsys):
    from fastdisco.cli.main import main

    src = tmp_path / "t.pdparams"
    src.write_bytes(pickle.dumps(_paddle_params(timm_sd, structured_names()), protocol=4))
    assert main(["convert-teacher", "--from", "paddle", str(src), str(tmp_path / "t.safetensors")]) == 0
    assert "timm resnet50d" in capsys.readouterr().out and (tmp_path / "t.safetensors").is_file()
    assert main(["convert-teacher", "--from", "paddle", str(tmp_path / "missing.pdparams"), str(tmp_path / "o.pt")]) == 1
    assert "Paddle parameter file not found" in capsys.readouterr().err
