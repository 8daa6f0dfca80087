import importlib
from pathlib import Path

import pytest
from trl import GRPOConfig

from recipes.cli import RECIPES
from recipes.cli import main as cli
from rl.config import ConfigError, GRPORecipeConfig, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "recipes" / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# brl "), f"{path.name} must open with the command that runs it"
    command = first.split()[2]
    assert command in RECIPES, f"{path.name}: unknown command {command!r}"
    assert path.name in first, "the opening command must name this file"
    cfg = importlib.import_module(RECIPES[command][0]).load(str(path))
    assert cfg.output_dir


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  schem: rule\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*reward\.schem.*Did you mean"):
        load_config(GRPORecipeConfig, bad)


def test_wrong_type_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: lots\n")
    with pytest.raises(ConfigError, match=r"key 'seed'"):
        load_config(GRPORecipeConfig, bad)


def test_trainer_keys_are_checked_against_trl(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  num_generation: 4\n")
    with pytest.raises(ConfigError, match=r"trainer\.num_generation.*GRPOConfig.*num_generations"):
        load_config(GRPORecipeConfig, bad, passthrough={"trainer": GRPOConfig})


def test_a_bare_no_is_the_strategy_no_not_false(tmp_path):
    """YAML reads `no` as false; transformers' save/eval/logging strategies spell "off" as the string "no"."""
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  save_strategy: no\n  gradient_checkpointing: no\n")
    cfg = load_config(GRPORecipeConfig, config, ["trainer.eval_strategy=no"], passthrough={"trainer": GRPOConfig})
    assert cfg.trainer == {"save_strategy": "no", "eval_strategy": "no", "gradient_checkpointing": False}
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, **cfg.trainer)  # what a run builds: accepted
    assert args.save_strategy == "no" and args.eval_strategy == "no"


def test_command_line_overrides_win_and_are_checked(tmp_path):
    cfg = load_config(GRPORecipeConfig, None, ["seed=7", "reward.scheme=hybrid", "trainer.beta=0.1"])
    assert cfg.seed == 7 and cfg.reward.scheme == "hybrid" and cfg.trainer == {"beta": 0.1}
    with pytest.raises(ConfigError, match="command line.*polcy"):
        load_config(GRPORecipeConfig, None, ["polcy.path=x"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(GRPORecipeConfig, None, ["seed"])


def test_cli_reports_a_misspelled_key_without_a_traceback(capsys):
    code = cli(["grpo", str(CONFIGS[0].parent / "tiny_cpu_rule.yaml"), "trainer.max_step=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "trainer.max_step" in err and "Traceback" not in err


def test_cli_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli(["--help"])
    out = capsys.readouterr().out
    for command in ("grpo", "sft", "make-tiny", "validate-data"):
        assert command in out


def test_local_model_paths_reach_actors_as_absolute_paths(tmp_path, monkeypatch):
    """Actors and learner workers open the models from directories of their own: a relative local path
    is made absolute where `brl grpo` runs; hub ids pass through (where the hub can be reached)."""
    from huggingface_hub import constants

    from recipes import grpo
    from rl.models import resolve_model_path
    from rl.rewards import resolve_reward_models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    for rm in ("rm", "text-rm"):
        (tmp_path / rm).mkdir()
        (tmp_path / rm / "reward_head.json").write_text("{}")
    (tmp_path / "policy").mkdir()
    cfg = grpo.load(None, ["reward.scheme=model", "reward.model.paths=[rm]", "reward.model.text_path=text-rm"])
    resolve_reward_models(cfg.reward)
    assert cfg.reward.model.paths == [str((tmp_path / "rm").resolve())]
    assert cfg.reward.model.text_path == str((tmp_path / "text-rm").resolve())
    assert resolve_model_path("policy", "out") == str((tmp_path / "policy").resolve())
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct", "out") == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_a_policy_that_cannot_load_here_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    """A run's output that is not there yet (the two-learner config needs `brl sft` first) or a hub id
    that is not cached while the hub is offline: one line naming the field, before any actor starts
    (it was an HFValidationError traceback from inside a rollout actor)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = []
    monkeypatch.setattr("pipeline.placement.ray_cluster", lambda *a, **k: started.append(1))
    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_two_learners.yaml"
    assert cli(["grpo", str(config), f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "policy.path: runs/tiny_cpu_sft/final is neither a directory nor a hub id" in err and "brl sft" in err
    assert cli(["grpo", str(config), f"output_dir={tmp_path}", "policy.path=Qwen/Qwen2.5-VL-3B-Instruct"]) == 2
    assert "not in the hub cache, and the hub is offline" in capsys.readouterr().err and not started
