"""PPO: GAE and the losses against hand-computed values, the value head trains, the entropy term counts, and on the
one-turn bandit PPO beats a random policy within 50 CPU steps through the real loop."""

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric

from rcl.rl import ppo, ppo_math

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lightning_configs"


def test_gae_two_episodes_with_a_done_in_the_middle():
    # episode 1: t0, t1 (done); episode 2: t2, t3, t4 (done). gamma 0.9, lambda 0.8 -> gamma * lambda = 0.72
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.2, 0.1]])
    dones = torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0]])
    adv, ret = ppo_math.gae(rewards, values, dones, torch.ones(1, 5), gamma=0.9, lam=0.8)
    # t4: 2 - 0.1 = 1.9
    # t3: 0 + 0.9 * 0.1 - 0.2 = -0.11; -0.11 + 0.72 * 1.9 = 1.258
    # t2: 0 + 0.9 * 0.2 - 0.3 = -0.12; -0.12 + 0.72 * 1.258 = 0.78576
    # t1 (done: no bootstrap from t2): 1 - 0.4 = 0.6
    # t0: 0 + 0.9 * 0.4 - 0.5 = -0.14; -0.14 + 0.72 * 0.6 = 0.292
    expected = torch.tensor([[0.292, 0.6, 0.78576, 1.258, 1.9]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_gae_skips_masked_environment_text_between_turns():
    """The same two episodes with environment tokens (mask 0, junk values) between the actions: identical results on
    the actions, 0 elsewhere."""
    rewards = torch.tensor([[0.0, 9.0, 1.0, 0.0, 9.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 7.0, 0.4, 0.3, 7.0, 0.2, 0.1]])
    dones = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]])
    adv, ret = ppo_math.gae(rewards, values, dones, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.292, 0.0, 0.6, 0.78576, 0.0, 1.258, 1.9]]))
    assert torch.all(ret[mask == 0] == 0)


def test_policy_and_value_losses_hand_computed():
    logp = torch.log(torch.tensor([[0.5, 0.3]]))
    old = torch.log(torch.tensor([[0.25, 0.3]]))  # ratios 2.0 and 1.0
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = ppo_math.policy_loss(logp, old, adv, torch.ones(1, 2), clip=0.2)
    # token 0: max(-2, -1.2) = -1.2 (clipped); token 1: max(1, 1) = 1 -> mean -0.1
    assert float(loss) == pytest.approx(-0.1)
    assert float(stats["policy/clip_frac"]) == pytest.approx(0.5)
    values, old_v, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    vl, vstats = ppo_math.value_loss(values, old_v, returns, torch.ones(1, 2), clip=0.2)
    # token 0: max(1, 0.04) = 1; token 1: max(1, 1) = 1 -> 0.5 * 1
    assert float(vl) == pytest.approx(0.5)
    assert float(ppo_math.value_loss(values, old_v, returns, torch.ones(1, 2), clip=None)[0]) == pytest.approx(0.5)


def test_whiten_kl_explained_variance_and_the_adaptive_controller():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(ppo_math.whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert float(ppo_math.kl_per_token(logp, ref, "k1")) == pytest.approx(1.0)
    assert float(ppo_math.kl_per_token(logp, ref, "k3")) == pytest.approx(math.exp(-1) + 1 - 1)
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(ppo_math.explained_variance(r, r, torch.ones(1, 3))) == pytest.approx(1.0)
    assert float(ppo_math.explained_variance(torch.full((1, 3), 2.0), r, torch.ones(1, 3))) == pytest.approx(0.0)
    controller = ppo_math.AdaptiveKLController(value=0.1, target=1.0, horizon=100)
    assert controller.update(current_kl=3.0, n_steps=10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # clipped error
    assert controller.update(current_kl=0.9, n_steps=10) == pytest.approx(0.102 * (1 - 0.1 * 10 / 100))


def test_token_rewards_place_each_step_on_its_last_token():
    rewards, dones = ppo_math.token_rewards([[(1, 0.5), (4, 1.0)], [(2, 3.0)]], width=5)
    torch.testing.assert_close(rewards, torch.tensor([[0, 0.5, 0, 0, 1.0], [0, 0, 3.0, 0, 0]]))
    torch.testing.assert_close(dones, torch.tensor([[0, 0, 0, 0, 1.0], [0, 0, 1.0, 0, 0]]))


def make_state(model_dir, args: ppo.PPOArgs, lr=1e-2):
    from transformers import AutoModelForCausalLM

    from rcl.optim import OptimizerArgs, build_optimizer, build_scheduler

    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    opt_args = OptimizerArgs(learning_rate=lr, schedule="constant")
    optimizer = build_optimizer(model.parameters(), opt_args)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "scheduler": build_scheduler(optimizer, 10, opt_args),
             "ref_model": None, "step": 0}
    ppo.setup_critic(fabric, state, args, model_dir, opt_args, 10, seed=0)
    return fabric, state, opt_args


def rollout_of(rewards):
    from rcl.engines import Completion
    from rcl.rl.rollout import Rollout

    g = torch.Generator().manual_seed(0)
    n = len(rewards)
    completions = [Completion(torch.randint(5, 300, (3 + i,), generator=g).tolist(), None, "length", "")
                   for i in range(n)]
    prompts = [torch.randint(5, 300, (6,), generator=g).tolist() for _ in range(n)]
    return Rollout(prompts, completions, [], torch.tensor(rewards), {}, torch.zeros(n), torch.zeros(n), {}, {}, 1)


def run_step(model_dir, args, rollout):
    from rcl.rl.args import GenerationArgs

    fabric, state, opt_args = make_state(model_dir, args)

    def mask_fn(index, comp):
        lengths = torch.tensor([len(rollout.completions[i].token_ids) for i in index])
        return (torch.arange(comp.shape[1])[None, :] < lengths[:, None]).float()

    stats = ppo.train_step(fabric, state, rollout, args, GenerationArgs(temperature=1.0), opt_args, mask_fn, 0)
    return state, stats


@pytest.mark.parametrize("critic", ["value_head", "model"])
def test_the_critic_changes_after_one_update(tiny_model_dir, critic):
    args = ppo.PPOArgs(critic=critic, ppo_epochs=1, mini_batch_size=4)
    _, state0, _ = make_state(tiny_model_dir, args)
    before = {n: p.detach().clone() for n, p in state0["critic"].named_parameters()}
    state, stats = run_step(tiny_model_dir, args, rollout_of([1.0, 0.0, 0.5, 2.0]))
    after = dict(state["critic"].named_parameters())
    assert before.keys() == after.keys()
    head = [n for n in before if "net." in n or "head." in n]
    assert head and all(not torch.equal(before[n], after[n].detach()) for n in head)
    for key in ("value/loss", "value/explained_variance", "policy/entropy", "policy/approx_kl", "policy/clip_frac",
                "value/clip_frac", "returns/mean"):
        assert math.isfinite(stats[key]), key
    assert stats["ppo/updates"] == 1.0


def test_the_entropy_bonus_enters_the_loss(tiny_model_dir):
    rollout = rollout_of([1.0, 0.0, 0.5, 2.0])
    base = ppo.PPOArgs(ppo_epochs=1, mini_batch_size=4, entropy_coef=0.0)
    _, without = run_step(tiny_model_dir, base, rollout)
    _, with_bonus = run_step(tiny_model_dir, ppo.PPOArgs(ppo_epochs=1, mini_batch_size=4, entropy_coef=0.5), rollout)
    # one update from the same start: the losses differ by exactly the bonus
    assert with_bonus["policy/entropy"] == pytest.approx(without["policy/entropy"])
    assert with_bonus["loss"] == pytest.approx(without["loss"] - 0.5 * without["policy/entropy"], rel=1e-5)
    assert without["policy/entropy"] > 0


def test_ppo_beats_a_random_policy_on_the_bandit_within_50_cpu_steps(models_dir, tmp_path):
    from rcl.rl.loop import cli_main
    from rcl.tasks import get_task
    from transformers import AutoTokenizer

    import rcl.tasks.envs  # noqa: F401

    out = tmp_path / "ppo"
    cli_main("fit", ["--config", str(CONFIGS / "quickstart_ppo.yaml"), "--trainer.out_dir", str(out),
                     "--trainer.loggers", "[csv]", "--trainer.max_steps", "50", "--trainer.export_hf", "true"])
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    assert len(train) == 50
    # a uniformly random first token: the share of the vocabulary that starts with a vowel
    tok = AutoTokenizer.from_pretrained(out / "hf_model")
    bandit = get_task("bandit")
    random_reward = sum(bandit.score(tok.decode([i]), {}).reward for i in range(len(tok))) / len(tok)
    last = sum(r["reward"] for r in train[-10:]) / 10
    assert last > 0.8 and last > 4 * random_reward, (last, random_reward)
    assert rows[-1]["eval/accuracy"] == 1.0
    assert (out / "hf_model" / "value_head.safetensors").is_file()
    assert all(math.isfinite(r["value/loss"]) for r in train)


def test_affine_ppo_recipe_pins_the_guides_hyper_parameters():
    from rcl.rl.loop import parse_recipe

    parsed = parse_recipe("fit", ["--config", str(CONFIGS / "affine_ppo.yaml")])
    p = parsed["ppo"]
    assert parsed["algorithm"] == "ppo"
    assert (p.clip_range, p.vf_coef, p.entropy_coef, p.lam, p.gamma, p.ppo_epochs) == (0.2, 0.5, 0.01, 0.95, 0.99, 4)
    assert parsed["optimizer"].learning_rate == 1e-5 and parsed["optimizer"].max_grad_norm == 1.0
    assert p.whiten_advantages and p.critic == "value_head"
    lora = parsed["lora"]
    assert lora.enabled and (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (64, 128.0, 0.05, "attention")
    assert parsed["task"].name == "grid" and parsed["task"].module == "rcl.tasks.envs"


def test_ppo_resumes_exactly_with_its_critic(models_dir, tmp_path):
    from rcl.rl.loop import cli_main

    common = ["--config", str(CONFIGS / "quickstart_ppo.yaml"), "--trainer.loggers", "[csv]",
              "--trainer.export_hf", "false", "--eval.at_start", "false", "--trainer.keep_last_checkpoints", "5"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    cli_main("fit", [*common, "--trainer.out_dir", str(full), "--trainer.max_steps", "4"])
    cli_main("fit", [*common, "--trainer.out_dir", str(cut), "--trainer.max_steps", "2"])
    cli_main("fit", [*common, "--trainer.out_dir", str(cut), "--trainer.max_steps", "4",
                     "--ckpt_path", str(cut / "checkpoints" / "step-000002.ckpt")])
    a = torch.load(full / "checkpoints" / "step-000004.ckpt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "step-000004.ckpt", weights_only=True)
    for part in ("model", "critic"):
        assert a[part].keys() == b[part].keys() and a[part]
        for name in a[part]:
            torch.testing.assert_close(a[part][name], b[part][name], rtol=0, atol=0)


def test_ppo_under_a_sharded_strategy_is_refused():
    from rcl.rl.args import GRPOArgs
    from rcl.rl.loop import ConfigError, TrainerArgs, validate_ppo

    with pytest.raises(ConfigError, match="not supported yet"):
        validate_ppo("ppo", GRPOArgs(num_generations=1), ppo.PPOArgs(), TrainerArgs(strategy="deepspeed_stage_3"))
    with pytest.raises(ConfigError, match="ppo.kl_coef"):
        validate_ppo("ppo", GRPOArgs(beta=0.1), ppo.PPOArgs())


def test_one_ppo_update_on_two_processes_equals_one_process_on_the_same_rows(models_dir, tiny_model_dir, tmp_path,
                                                                             repo_env):
    """DDP on two gloo processes, each with half of a fixed multi-turn rollout whose halves hold different numbers of
    trained tokens, lands on the policy and value-head weights one process reaches on the whole rollout: whitening,
    the token means of the losses and the mini-batch size span the global batch."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from serving_support import free_port

    script = Path(__file__).with_name("ddp_ppo_step.py")
    weights = {}
    for devices in (1, 2):
        out = tmp_path / f"weights-{devices}.pt"
        env = dict(repo_env, RCL_MODELS_DIR=str(models_dir), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                   OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, str(script), str(devices), str(out)], capture_output=True, text=True,
                              timeout=300, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[devices] = torch.load(out, weights_only=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    head = ppo.build_critic(ppo.PPOArgs(), AutoModelForCausalLM.from_pretrained(tiny_model_dir), "", seed=0)
    start = {f"policy.{k}": v for k, v in base.items()} | {f"critic.{k}": v for k, v in head.state_dict().items()}
    assert weights[1].keys() == start.keys()
    for part in ("policy.", "critic."):
        assert any(not torch.equal(start[k], weights[1][k]) for k in start if k.startswith(part)), f"{part} moved"
    for name in weights[1]:
        torch.testing.assert_close(weights[2][name], weights[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_ppo_on_the_grid_under_ddp_two_processes_on_cpu(models_dir, tmp_path, repo_env):
    """The whole loop: multi-turn rollouts on each process, PPO updates over DDP, the critic exported."""
    import subprocess
    import sys

    from serving_support import free_port

    out = tmp_path / "ddp"
    args = ["--config", str(CONFIGS / "quickstart_grid.yaml"), "--teacher.model_name_or_path", "tiny-1m",
            "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--trainer.max_steps", "2", "--grpo.prompts_per_step", "4", "--ppo.mini_batch_size", "4",
            "--eval.num_prompts", "2", "--eval.at_start", "false", "--trainer.loggers", "[csv]",
            "--trainer.out_dir", str(out)]
    env = dict(repo_env, RCL_MODELS_DIR=str(models_dir), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    train = [r for r in train if "reward" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["ppo/updates"] == 4.0 and math.isfinite(r["value/loss"]) for r in train)  # 4 epochs x 1 mini-batch
    assert (out / "hf_model" / "value_head.safetensors").is_file()
