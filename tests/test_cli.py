"""The command line: fast help without torch, nested `eval` subcommands, config fields in
`train --help`, exit codes (1 runtime error, 2 usage error), the public API and the
torchvision import fix applied at start-up."""
import subprocess
import sys
import textwrap

import pytest

from fastdisco.cli.main import COMMANDS, main


def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS], ["eval", "knn", "--help"]])
def test_help_never_imports_torch(argv):
    r = _run_py(f"""
        import sys
        from fastdisco.cli.main import main
        try:
            main({argv!r})
        except SystemExit as e:
            assert e.code == 0, e.code
        heavy = sorted(m for m in ("torch", "timm", "numpy", "nvidia.dali", "ffcv") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout, (argv, r.stdout[-300:])


def test_eval_subcommand_help_shows_only_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "knn", "--help"])
    knn = capsys.readouterr().out
    assert "--k K" in knn and "--temperature" in knn
    assert "--full" not in knn and "--fractions" not in knn and "--teacher-ckpt" not in knn
    with pytest.raises(SystemExit):
        main(["eval", "linear", "--help"])
    linear = capsys.readouterr().out
    assert "--full" in linear and "--milestones" in linear and "--k K" not in linear


def test_train_help_lists_every_config_field_with_default_and_meaning(capsys):
    import dataclasses

    from fastdisco.config import Config

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory()):
            assert f"{sec.name}.{f.name}:" in out, f"{sec.name}.{f.name} missing from train --help"
    # a default and the meaning written beside the field in config.py
    assert "train.out_dir: str = 'runs/default'  # run directory; re-running with the same one resumes" in out
    assert "method.name: mocov2|disco|ssld|supervised" in out


def test_exit_codes(tmp_path, capsys):
    assert main(["train", "--set", "train.epochz=3"]) == 2          # unknown config key: usage
    assert main(["train", "--set", "optim.lr=fast"]) == 2           # wrong type: usage
    assert main(["inspect", str(tmp_path)]) == 1                    # not a prepared dataset: runtime
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("fastdisco ") for line in err)
    with pytest.raises(SystemExit) as e:
        main(["eval", "knn"])                                       # argparse: missing CKPT
    assert e.value.code == 2


def test_public_api_is_lazy_and_complete():
    r = _run_py("""
        import sys
        import fastdisco
        assert "torch" not in sys.modules
        names = ("Config", "load_config", "train", "make_loader", "load_teacher", "export_student")
        assert set(names) <= set(dir(fastdisco))
        for n in names:
            assert callable(getattr(fastdisco, n)), n
        cfg = fastdisco.load_config(None, ["train.epochs=2"])
        assert isinstance(cfg, fastdisco.Config) and cfg.train.epochs == 2
        print("OK")
    """)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_plain_import_timm_works_in_this_environment():
    """The install puts the torchvision fix where the interpreter applies it at start-up (a .pth),
    only where torchvision's compiled ops cannot load: a bare `import timm` must work."""
    r = _run_py("import timm, sys; print('fastdisco' in sys.modules)")
    assert r.returncode == 0, r.stderr[-2000:]
