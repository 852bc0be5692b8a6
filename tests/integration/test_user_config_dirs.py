"""Users' own Hydra config dirs next to this package's Hydra plugin (issue 23, finding 6).

(a) The recipe pattern: a user config that inherits verl's ``ppo_trainer`` through its own
``hydra.searchpath`` (as verl's multi-turn examples and the DAPO recipe do) composes to RePO with
the README's launch form ``python -m verl.trainer.main_ppo --config-path=<dir> --config-name=<cfg>
+algorithm=repo``.
(b) A user config that selects ``algorithm: mine`` on top of ``ppo_trainer`` composes exactly as
without the plugin, whether its directory is ``--config-path`` or ``--config-dir``.
(c) A Hydra application that is not verl's, with ``algorithm`` and ``preset`` groups of its own,
composes exactly as without the plugin (same config, same config sources).

The launches go through verl's real entry point: one driver process runs ``verl.trainer.main_ppo``
as ``__main__`` (``runpy.run_module``, what ``python -m`` does) once per case, so verl is imported
once. "Without the plugin" is the same launch with Hydra's plugin discovery filtered so that
``hydra_plugins.repo_ext_searchpath`` is not found: Hydra then builds the search path it builds for
an environment where this package is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

OUR_PLUGIN_PACKAGE = "hydra_plugins.repo_ext_searchpath"
REPO_ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _env():
    """This checkout's ``repo_ext`` and ``hydra_plugins`` first in every child process (not whichever
    checkout the environment's editable install points at)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO_ROOT + (os.pathsep + path if path else ""), "HYDRA_FULL_ERROR": "1"}

# a recipe-pattern config dir, as verl's examples/sglang_multiturn/config/*.yaml are written
# (there: `file://verl/trainer/config`, relative to a verl checkout; an installed verl is `pkg://`)
RECIPE_CONFIG = """\
hydra:
  searchpath:
    - pkg://verl.trainer.config
defaults:
  - ppo_trainer
  - _self_
algorithm:
  adv_estimator: grpo
  use_kl_in_reward: false
data:
  train_batch_size: 64
actor_rollout_ref:
  rollout:
    n: 4
"""

# a user config that selects an algorithm option of its own (its group lives next to it)
MINE_CONFIG = """\
hydra:
  searchpath:
    - pkg://verl.trainer.config
defaults:
  - ppo_trainer
  - algorithm: mine
  - _self_
"""
MINE_OPTION = "# @package _global_\nalgorithm:\n  adv_estimator: rloo\n  gamma: 0.5\n"

DRIVER = r'''
import contextlib, io, json, runpy, sys
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins

discover = Plugins.discover
def discover_all_but_ours(self, plugin_type=None):
    return [c for c in discover(self, plugin_type) if not c.__module__.startswith(%(ours)r)]

results = {}
for name, with_plugin, argv in json.loads(sys.argv[1]):
    Plugins.discover = discover if with_plugin else discover_all_but_ours
    GlobalHydra.instance().clear()
    sys.argv = ["main_ppo", *argv]
    out, err, rc = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("verl.trainer.main_ppo", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # HYDRA_FULL_ERROR=1: Hydra raises instead of exiting
            rc = 1
            err.write(f"{type(e).__name__}: {e}")
    results[name] = {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}
print("@@RESULTS@@" + json.dumps(results))
''' % {"ours": OUR_PLUGIN_PACKAGE}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_configs")
    recipe = root / "recipe"
    recipe.mkdir()
    (recipe / "my_trainer.yaml").write_text(RECIPE_CONFIG)
    (recipe / "mine_trainer.yaml").write_text(MINE_CONFIG)
    (recipe / "algorithm").mkdir()
    (recipe / "algorithm" / "mine.yaml").write_text(MINE_OPTION)
    return {"root": root, "recipe": str(recipe)}


def _cases(recipe: str):
    job = ["--cfg", "job"]
    with_our_dir = "hydra.searchpath=[pkg://verl.trainer.config,pkg://repo_ext.config]"
    return [
        # (a) the README's form for a config dir of your own
        ("recipe_plus", True, [f"--config-path={recipe}", "--config-name=my_trainer", "+algorithm=repo",
                               "algorithm.repo.strategy=highest_k", *job]),
        # ... its reference: no plugin, this package's configs put on the path by Hydra's own searchpath
        ("recipe_plus_ref", False, [f"--config-path={recipe}", "--config-name=my_trainer", "+algorithm=repo",
                                    "algorithm.repo.strategy=highest_k", with_our_dir, *job]),
        ("recipe_plus_callbacks", True, [f"--config-path={recipe}", "--config-name=my_trainer", "+algorithm=repo",
                                         "--cfg", "hydra", "--package", "hydra.callbacks"]),
        ("recipe_plus_config_dir", True, [f"--config-dir={recipe}", "--config-name=my_trainer", "+algorithm=repo",
                                          "algorithm.repo.strategy=highest_k", *job]),
        # the literal form on a config of your own: Hydra's own refusal, which names the `+` form
        ("recipe_literal", True, [f"--config-path={recipe}", "--config-name=my_trainer", "algorithm=repo", *job]),
        # verl's own ppo_trainer with a --config-dir of yours: no slot, so `+` there too
        ("verl_with_config_dir_plus", True, [f"--config-dir={recipe}", "+algorithm=repo", *job]),
        # (b) a config with `algorithm: mine`, with and without the plugin
        ("mine_config_dir", True, [f"--config-dir={recipe}", "--config-name=mine_trainer", *job]),
        ("mine_config_dir_ref", False, [f"--config-dir={recipe}", "--config-name=mine_trainer", *job]),
        ("mine_config_path", True, [f"--config-path={recipe}", "--config-name=mine_trainer", *job]),
        ("mine_config_path_ref", False, [f"--config-path={recipe}", "--config-name=mine_trainer", *job]),
        # ... and RePO instead of `mine`: the group has an entry, so the literal form replaces it
        ("mine_literal", True, [f"--config-path={recipe}", "--config-name=mine_trainer", "algorithm=repo", *job]),
        ("mine_literal_ref", False, [f"--config-path={recipe}", "--config-name=mine_trainer", "algorithm=repo",
                                     with_our_dir, *job]),
    ]


@pytest.fixture(scope="module")
def launched(dirs):
    """Every case's exit status and output, from one driver process (verl imported once)."""
    root = dirs["root"]
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    cases = _cases(dirs["recipe"])
    try:
        run = subprocess.run([sys.executable, str(driver), json.dumps(cases)], cwd=root,
                             capture_output=True, text=True, timeout=240, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail("the main_ppo driver did not finish within 240 s")
    assert run.returncode == 0, run.stderr[-3000:]
    marker = run.stdout.rindex("@@RESULTS@@")
    return json.loads(run.stdout[marker + len("@@RESULTS@@"):])


def _job(launched, name):
    result = launched[name]
    assert result["rc"] == 0, (name, result["err"][-3000:])
    return OmegaConf.create(result["out"])


def _assert_repo_on_the_recipe(cfg):
    # RePO's parts, written out from algorithm/repo.yaml
    assert cfg.algorithm.adv_estimator == "repo_split"
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo"
    assert cfg.trainer.v1.trainer_mode == "repo_sync"
    assert cfg.algorithm.repo.strategy == "highest_k" and cfg.algorithm.repo.num_replays == 8
    # the user's own values survive; verl's stock values under them too
    assert cfg.data.train_batch_size == 64 and cfg.actor_rollout_ref.rollout.n == 4
    assert cfg.algorithm.use_kl_in_reward is False
    assert cfg.data.max_prompt_length == 512 and "rollout_correction" in cfg.algorithm


def test_recipe_pattern_readme_form_composes_to_repo(launched):
    cfg = _job(launched, "recipe_plus")
    _assert_repo_on_the_recipe(cfg)
    # field by field what Hydra composes with this package's configs put on the path by hand
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(_job(launched, "recipe_plus_ref"))
    _assert_repo_on_the_recipe(_job(launched, "recipe_plus_config_dir"))


def test_recipe_pattern_runs_the_launch_check(launched):
    # `--cfg hydra --package hydra.callbacks` prints that node's content under a `# @package` line
    assert launched["recipe_plus_callbacks"]["rc"] == 0
    callbacks = OmegaConf.create(launched["recipe_plus_callbacks"]["out"])
    assert callbacks.repo_launch_check._target_ == "repo_ext.integration.config_checks.RePOLaunchCheck"


def test_literal_form_on_a_users_config_is_hydras_refusal_naming_the_plus_form(launched):
    result = launched["recipe_literal"]
    assert result["rc"] != 0
    assert "Could not override 'algorithm'" in result["err"]
    assert "+algorithm=repo" in result["err"]


def test_verls_config_with_a_users_config_dir_takes_the_plus_form(launched):
    cfg = _job(launched, "verl_with_config_dir_plus")
    assert cfg.algorithm.adv_estimator == "repo_split" and cfg.data.train_batch_size == 1024


@pytest.mark.parametrize("how", ["config_dir", "config_path"])
def test_users_own_algorithm_choice_composes_as_without_the_plugin(launched, how):
    ours, reference = launched[f"mine_{how}"], launched[f"mine_{how}_ref"]
    assert ours["rc"] == 0, ours["err"][-3000:]
    assert ours["out"] == reference["out"]
    # and that is the user's option, over verl's ppo_trainer (values from MINE_OPTION and verl's yaml)
    cfg = OmegaConf.create(ours["out"])
    assert cfg.algorithm.adv_estimator == "rloo" and cfg.algorithm.gamma == 0.5
    assert cfg.data.train_batch_size == 1024 and "repo" not in cfg.algorithm


def test_literal_form_replaces_a_users_own_algorithm_choice(launched):
    cfg = _job(launched, "mine_literal")
    assert cfg.algorithm.adv_estimator == "repo_split" and cfg.algorithm.gamma == 1.0
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(_job(launched, "mine_literal_ref"))


# ---------------------------------------------------------------- (c) an application that is not verl's

APP = '''
import json
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

@hydra.main(config_path="conf", config_name="app", version_base=None)
def main(cfg):
    runtime = HydraConfig.get().runtime
    print(json.dumps({
        "config": OmegaConf.to_container(cfg),
        "choices": OmegaConf.to_container(runtime.choices),
        "sources": [[s.provider, s.path] for s in runtime.config_sources],
    }))

if __name__ == "__main__":
    main()
'''

WITHOUT_OUR_PLUGIN = r'''
import runpy, sys
from hydra.core.plugins import Plugins
discover = Plugins.discover
Plugins.discover = lambda self, plugin_type=None: [
    c for c in discover(self, plugin_type) if not c.__module__.startswith(%r)]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
''' % OUR_PLUGIN_PACKAGE


def _unrelated_app(tmp_path):
    """An app with its own ``algorithm`` group: ``ppo`` next to it, ``grpo`` and ``preset/cpu`` in a
    second directory on its ``hydra.searchpath`` (which Hydra puts after every plugin's entries)."""
    conf, extra = tmp_path / "conf", tmp_path / "extra"
    (conf / "algorithm").mkdir(parents=True)
    (extra / "algorithm").mkdir(parents=True)
    (extra / "preset").mkdir(parents=True)
    (conf / "app.yaml").write_text(
        f"hydra:\n  searchpath:\n    - file://{extra}\ndefaults:\n  - algorithm: ppo\n  - _self_\nlr: 0.1\n")
    (conf / "algorithm" / "ppo.yaml").write_text("name: their_ppo\n")
    (extra / "algorithm" / "grpo.yaml").write_text("name: their_grpo\n")
    (extra / "preset" / "cpu.yaml").write_text("# @package _global_\ndevice: their_cpu\n")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "without_our_plugin.py").write_text(WITHOUT_OUR_PLUGIN)


@pytest.mark.parametrize("overrides", [[], ["algorithm=grpo"], ["algorithm=grpo", "+preset=cpu"]])
def test_an_app_that_is_not_verls_composes_as_without_the_plugin(tmp_path, overrides):
    _unrelated_app(tmp_path)
    runs = {}
    for label, cmd in (("ours", [sys.executable, "app.py"]),
                       ("reference", [sys.executable, "without_our_plugin.py", "app.py"])):
        run = subprocess.run([*cmd, *overrides, "hydra.run.dir=."], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=_env())
        assert run.returncode == 0, (label, run.stderr[-3000:])
        runs[label] = json.loads(run.stdout.strip().splitlines()[-1])
    assert runs["ours"] == runs["reference"]
    # the app's own options, written out (ours are algorithm/grpo.yaml and preset/cpu.yaml too)
    expected_name = "their_grpo" if overrides else "their_ppo"
    assert runs["ours"]["config"]["algorithm"] == {"name": expected_name}
    if "+preset=cpu" in overrides:
        assert runs["ours"]["config"]["device"] == "their_cpu"
    assert not any("repo" in path for _, path in runs["ours"]["sources"]), runs["ours"]["sources"]


def test_the_plugin_module_tells_verls_entry_point_from_other_programs():
    import types

    from hydra_plugins.repo_ext_searchpath.repo_ext_searchpath import running_verl_entry_point, verl_package_dir

    verl_package = verl_package_dir()
    as_module = types.ModuleType("__main__")
    as_module.__spec__ = types.SimpleNamespace(name="verl.trainer.main_ppo")
    assert running_verl_entry_point(verl_package, main_module=as_module)
    as_script = types.ModuleType("__main__")
    as_script.__file__ = os.path.join(verl_package, "trainer", "main_ppo.py")
    assert running_verl_entry_point(verl_package, main_module=as_script)
    for other in ("verlish.main", "my_project.verl.main", "pytest"):
        module = types.ModuleType("__main__")
        module.__spec__ = types.SimpleNamespace(name=other)
        module.__file__ = f"/somewhere/{other.replace('.', '/')}.py"
        assert not running_verl_entry_point(verl_package, main_module=module), other
    assert not running_verl_entry_point(verl_package, main_module=types.ModuleType("__main__"))


def test_recipe_pattern_readme_command_by_hand(dirs):
    """The README's command, typed as a user types it (``python -m``, no driver)."""
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={dirs['recipe']}",
           "--config-name=my_trainer", "+algorithm=repo", "algorithm.repo.strategy=highest_k", "--cfg", "job"]
    try:
        run = subprocess.run(cmd, cwd=dirs["root"], capture_output=True, text=True, timeout=150, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish within 150 s")
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_repo_on_the_recipe(OmegaConf.create(run.stdout))


def test_readme_gives_the_recipe_form():
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    assert "--config-path=/abs/path/to/your/config --config-name=your_trainer +algorithm=repo" in readme
