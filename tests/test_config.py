"""Config errors are one line naming the key; every shipped recipe resolves."""
from pathlib import Path

import pytest

from fastdisco.cli import main as cli_main
from fastdisco.config import build_config
from fastdisco.errors import FastdiscoError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_recipes_resolve(path):
    cfg = build_config(path)
    assert cfg.method.name in ("mocov2", "disco", "ssld", "supervised")  # supervised: the demo's teacher


def test_faithful_disco_recipe():
    cfg = build_config(Path(__file__).parent.parent / "configs/disco_effb0_r50.yaml")
    assert (cfg.method.temperature, cfg.method.queue_size, cfg.method.momentum) == (0.2, 65536, 0.999)
    assert cfg.method.distill_reduction == "sum" and cfg.model.proj_hidden == 2048
    assert (cfg.optim.lr, cfg.optim.base_batch, cfg.optim.weight_decay) == (0.03, 256, 1e-4)


@pytest.mark.parametrize("sets, key", [
    (["train.nonsense=1"], "train.nonsense"),
    (["optim.lr=fast"], "optim.lr"),
    (["train.max_steps=1.5"], "train.max_steps"),
    (["method.name=simclr"], "method.name"),
    (["bogus.x=1"], "bogus"),
])
def test_bad_values_name_the_key(sets, key):
    with pytest.raises(FastdiscoError) as e:
        build_config(None, sets)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_cli_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.epochz" in err


def test_cli_print_config(capsys):
    assert cli_main(["train", "--set", "optim.lr=0.5", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
