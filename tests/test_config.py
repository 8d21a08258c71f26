"""Config errors are one line naming the key; every shipped recipe resolves."""
from pathlib import Path

import pytest

from fastdisco.cli.main import main as cli_main
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


# ---------------------------------------------------------------- hostile or mistyped input
BAD_VALUES = ["optim.lr=-1", "train.log_every=0", "train.ckpt_every=0", "train.epochs=-5", "data.resolution=0",
              "data.num_workers=-1", "method.queue_size=-5", "optim.grad_accum=0", "train.max_steps=-3",
              "method.momentum=2", "optim.weight_decay=-1", "train.keep_ckpts=0", "train.epochs=0", "optim.lr=.nan"]


@pytest.mark.parametrize("item", BAD_VALUES)
def test_out_of_range_values_are_one_line_usage_errors(item):
    from fastdisco.errors import UsageError

    with pytest.raises(UsageError) as e:
        build_config(None, [item])
    msg = str(e.value)
    assert item.split("=")[0] in msg and "\n" not in msg


def test_train_validates_configs_built_in_code(tmp_path):
    from fastdisco.config import Config
    from fastdisco.engine.trainer import train
    from fastdisco.errors import UsageError

    cfg = Config()
    cfg.optim.grad_accum = 0
    with pytest.raises(UsageError, match="optim.grad_accum"):
        train(cfg)


def test_exponent_floats_parse_as_floats():
    assert build_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    assert build_config(None, ["optim.weight_decay=5E-5"]).optim.weight_decay == 5e-5


def test_yaml_aliases_are_refused_fast(tmp_path):
    """A 'billion laughs' file: refused at the first alias, before anything expands."""
    import time

    from fastdisco.errors import UsageError

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ntrain:\n  epochs: *i\n")
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match="aliases are not allowed"):
        build_config(bomb)
    assert time.perf_counter() - t0 < 5


def test_duplicate_yaml_keys_are_refused(tmp_path):
    from fastdisco.errors import UsageError

    f = tmp_path / "dup.yaml"
    f.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UsageError, match="duplicate config key 'lr'"):
        build_config(f)


def test_error_lines_stay_short_whatever_the_value():
    from fastdisco.errors import UsageError

    with pytest.raises(UsageError) as e:
        build_config(None, ["optim.lr=" + "x" * 5_000_000])
    assert len(str(e.value)) < 300
