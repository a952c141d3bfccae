"""Rollouts: what the policy sampled, what the student did with it, and the rewards.

Adaptive teaching, per prompt (one student baseline and one probe per prompt, shared by the whole group, so every
group member is scored against the same baseline and conditioned on the same context, as GRPO requires):
  1. the student solves alone k times (the baseline);
  2. the student states a short approach (the probe, at most `max_probe_tokens`);
  3. the policy (teacher) writes G teachings for question + approach;
  4. the student solves m times with each teaching.
Direct: the policy answers the question G times and the task scores it.
Every answer (the student's in adaptive teaching, the policy's in direct) is scored by the task (`rcl.tasks`), whose
prompt text fills {question} in the templates; verifier errors and timeouts are counted per rollout.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import torch

from rcl.engines import Completion, GenerationEngine, SamplingParams
from rcl.grpo import group_advantages
from rcl.metrics import completion_share
from rcl.prompts import (
    MissingTeaching,
    PromptTemplates,
    extract_teaching,
    render_prompt,
    student_messages,
    teacher_messages,
)
from rcl.rewards import RolloutSample, combine_rewards
from rcl.tasks import Score, Task, get_task
from rcl.tasks.health import VerifierHealth
from rcl.tasks.mixture import per_task_sums


@dataclass(frozen=True)
class RolloutSettings:
    protocol: str
    num_generations: int
    baseline_samples: int
    student_samples: int
    max_probe_tokens: int
    missing_teaching: MissingTeaching
    policy: SamplingParams
    student: SamplingParams
    scale_rewards: str = "group"


@dataclass
class Interaction:
    """One policy completion and what followed from it (the unit NDR/TES and the degradation log count)."""

    question: str
    ground_truth: str
    policy_completion: str
    approach: str = ""
    teaching: str = ""
    has_teaching_tags: bool = True
    teaching_tokens: int = 0
    probe_tokens: int = 0
    baseline_responses: list[str] = field(default_factory=list)
    with_teaching_responses: list[str] = field(default_factory=list)
    baseline_correct: list[bool] | None = None
    """Correctness of the k student solutions without teaching (None for the direct protocol)."""
    with_teaching_correct: list[bool] | None = None
    """Correctness of the m student solutions with this teaching (None for the direct protocol)."""
    p_base: float = 0.0
    p_with: float = 0.0
    completed: float = 0.0
    """Share of the responses scored as p_with that ended by a stop with an answer the task could score."""
    reward: float = 0.0
    score: Score | None = None
    """The task's score of the policy's completion (direct protocol only)."""


@dataclass
class Rollout:
    prompt_ids: list[list[int]]
    """Policy prompt ids per completion: exactly the ids that were sampled from, and that the loss scores."""
    completions: list[Completion]
    interactions: list[Interaction]
    rewards: torch.Tensor
    reward_components: dict[str, torch.Tensor]
    advantages: torch.Tensor
    zero_std_groups: torch.Tensor
    timings: dict[str, float]
    generated_tokens: dict[str, int]
    num_generations: int
    verifier: dict[str, float] = field(default_factory=dict)
    """This rollout's verifier counts: verifier/checks, verifier/errors, verifier/timeouts."""
    by_task: dict[str, float] = field(default_factory=dict)
    """For a task mixture (direct protocol): per-task sums, tasks/<name>/{count, correct, reward}."""
    action_masks: list[list[int]] | None = None
    """Multi-turn: per completion, 1 on the policy's sampled tokens and 0 on environment text (the loss mask)."""
    turn_rewards: list[list[tuple[int, float]]] | None = None
    """Multi-turn: per completion, (position of a turn's last token, that step's reward)."""

    def __len__(self) -> int:
        return len(self.completions)

    def state_dict(self) -> dict:
        """Plain lists, strings and tensors (what `torch.load(weights_only=True)` reads back), for checkpoints."""
        return {
            "prompt_ids": self.prompt_ids,
            "completions": [asdict(c) for c in self.completions],
            "interactions": [asdict(i) for i in self.interactions],
            "rewards": self.rewards,
            "reward_components": dict(self.reward_components),
            "advantages": self.advantages,
            "zero_std_groups": self.zero_std_groups,
            "timings": dict(self.timings),
            "generated_tokens": dict(self.generated_tokens),
            "num_generations": self.num_generations,
            "verifier": dict(self.verifier),
            "by_task": dict(self.by_task),
            "action_masks": self.action_masks,
            "turn_rewards": [[list(t) for t in row] for row in self.turn_rewards] if self.turn_rewards else None,
        }

    @classmethod
    def from_state(cls, state: dict) -> "Rollout":
        return cls(
            prompt_ids=[list(p) for p in state["prompt_ids"]],
            completions=[Completion(**c) for c in state["completions"]],
            interactions=[Interaction(**i) for i in state["interactions"]],
            rewards=state["rewards"],
            reward_components=dict(state["reward_components"]),
            advantages=state["advantages"],
            zero_std_groups=state["zero_std_groups"],
            timings=dict(state["timings"]),
            generated_tokens=dict(state["generated_tokens"]),
            num_generations=int(state["num_generations"]),
            verifier=dict(state.get("verifier", {})),
            by_task=dict(state.get("by_task", {})),
            action_masks=state.get("action_masks"),
            turn_rewards=[[tuple(t) for t in row] for row in state["turn_rewards"]] if state.get("turn_rewards")
            else None,
        )


def encode_prompts(tokenizer: Any, conversations: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    texts = [render_prompt(tokenizer, messages) for messages in conversations]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _scores(task: Task, texts: Sequence[str], row: dict) -> list[Score]:
    """The task's scores of several completions of one row; in parallel through `score_batch` when the task has one
    (the code tasks run each completion's tests in the sandbox's worker pool)."""
    batch = getattr(task, "score_batch", None)
    return list(batch(list(texts), [row] * len(texts))) if batch else [task.score(text, row) for text in texts]


def _correctness(task: Task, outputs: Sequence[Completion], row: dict) -> tuple[list[Score], list[bool], float]:
    scores = _scores(task, [c.text for c in outputs], row)
    completed = completion_share([s.has_answer for s in scores], [c.finish_reason == "stop" for c in outputs])
    return scores, [s.correct for s in scores], completed


class RolloutRunner:
    """Routes each role to its own engine and tokenizer: the policy's text is decoded by the policy's tokenizer,
    the student's by the student's, so teacher and student may use different vocabularies."""

    def __init__(
        self,
        policy_engine: GenerationEngine,
        student_engine: GenerationEngine | None,
        templates: PromptTemplates,
        reward_functions: dict[str, Any],
        reward_weights: dict[str, float],
        task: Task | None = None,
        health: VerifierHealth | None = None,
    ):
        self.policy = policy_engine
        self.student = student_engine
        self.templates = templates
        self.reward_functions = reward_functions
        self.reward_weights = reward_weights
        self.task = task if task is not None else get_task("math")
        self.health = health if health is not None else VerifierHealth()

    def close(self) -> None:
        """Nothing to release (the multi-turn runner's `close` stops its environment workers)."""

    def run(self, rows: Sequence[dict], seed: int, settings: RolloutSettings) -> Rollout:
        if settings.protocol == "adaptive_teaching":
            if self.student is None:
                raise ValueError("the adaptive_teaching protocol needs a student engine")
            prompt_ids, completions, interactions, timings, tokens, scores = self._adaptive(rows, seed, settings)
        else:
            prompt_ids, completions, interactions, timings, tokens, scores = self._direct(rows, seed, settings)
        counts = self.health.record(scores, f"the verifier of task {self.task.name!r}")
        start = time.perf_counter()
        samples = [_to_sample(i, c) for i, c in zip(interactions, completions)]
        rewards, components = combine_rewards(samples, self.reward_functions, self.reward_weights)
        for interaction, r in zip(interactions, rewards.tolist()):
            interaction.reward = r
        advantages, zero_std = (
            group_advantages(rewards, settings.num_generations, settings.scale_rewards)
            if settings.num_generations > 1
            else (torch.zeros_like(rewards), torch.zeros(len(rewards), dtype=torch.bool))
        )
        timings["reward"] = timings.get("reward", 0.0) + time.perf_counter() - start
        names = getattr(self.task, "subtasks", None)
        by_task = per_task_sums(names, [(i.score, i.p_with, i.reward) for i in interactions]) if names else {}
        return Rollout(
            prompt_ids, completions, interactions, rewards, components, advantages, zero_std, timings, tokens,
            settings.num_generations, counts.metrics(), by_task,
        )

    def _adaptive(self, rows, seed, s: RolloutSettings):
        t_tok, s_tok = self.policy.tokenizer, self.student.tokenizer
        questions = [self.task.prompt(r) for r in rows]
        truths = [r.get("ground_truth", "") for r in rows]
        timings = {"generation/student": 0.0, "generation/policy": 0.0, "reward": 0.0}
        tokens = {"student": 0, "policy": 0}

        def student_generate(conversations, params):
            start = time.perf_counter()
            out = self.student.generate(encode_prompts(s_tok, conversations), params)
            timings["generation/student"] += time.perf_counter() - start
            tokens["student"] += sum(len(c.token_ids) for group in out for c in group)
            return out

        base = student_generate(
            [student_messages(self.templates, "baseline", q) for q in questions],
            replace(s.student, n=s.baseline_samples, seed=seed),
        )
        probes = student_generate(
            [student_messages(self.templates, "probe", q) for q in questions],
            replace(s.student, n=1, max_tokens=s.max_probe_tokens, seed=seed + 1),
        )
        approaches = [p[0].text.strip() for p in probes]

        start = time.perf_counter()
        policy_prompts = encode_prompts(t_tok, [teacher_messages(self.templates, q, a) for q, a in zip(questions, approaches)])
        teachings = self.policy.generate(policy_prompts, replace(s.policy, n=s.num_generations, seed=seed + 2))
        timings["generation/policy"] += time.perf_counter() - start
        tokens["policy"] += sum(len(c.token_ids) for group in teachings for c in group)

        start = time.perf_counter()
        base_scores = [_correctness(self.task, outs, row) for outs, row in zip(base, rows)]
        scores = [score for group, _, _ in base_scores for score in group]
        timings["reward"] += time.perf_counter() - start
        shown, owners = [], []
        for i, group in enumerate(teachings):
            for c in group:
                shown.append(extract_teaching(c.text, s.missing_teaching))
                owners.append(i)
        solved = student_generate(
            [student_messages(self.templates, "with_teaching", questions[i], t.text) for i, t in zip(owners, shown)],
            replace(s.student, n=s.student_samples, seed=seed + 3),
        )
        start = time.perf_counter()
        teaching_lengths = [len(ids) for ids in t_tok([t.text for t in shown], add_special_tokens=False)["input_ids"]]
        prompt_ids, completions, interactions = [], [], []
        flat = [c for group in teachings for c in group]
        for j, (i, teaching, completion, outs) in enumerate(zip(owners, shown, flat, solved)):
            base_correct = base_scores[i][1]
            with_scores, with_correct, completed = _correctness(self.task, outs, rows[i])
            scores += with_scores
            prompt_ids.append(policy_prompts[i])
            completions.append(completion)
            interactions.append(
                Interaction(
                    question=questions[i],
                    ground_truth=truths[i],
                    policy_completion=completion.text,
                    approach=approaches[i],
                    teaching=teaching.text,
                    has_teaching_tags=teaching.has_tags,
                    teaching_tokens=teaching_lengths[j],
                    probe_tokens=len(probes[i][0].token_ids),
                    baseline_responses=[c.text for c in base[i]],
                    with_teaching_responses=[c.text for c in outs],
                    baseline_correct=base_correct,
                    with_teaching_correct=with_correct,
                    p_base=sum(base_correct) / len(base_correct),
                    p_with=sum(with_correct) / len(with_correct),
                    completed=completed,
                )
            )
        timings["reward"] += time.perf_counter() - start
        return prompt_ids, completions, interactions, timings, tokens, scores

    def _direct(self, rows, seed, s: RolloutSettings):
        t_tok = self.policy.tokenizer
        questions = [self.task.prompt(r) for r in rows]
        truths = [r.get("ground_truth", "") for r in rows]
        start = time.perf_counter()
        prompts = encode_prompts(t_tok, [student_messages(self.templates, "baseline", q) for q in questions])
        outs = self.policy.generate(prompts, replace(s.policy, n=s.num_generations, seed=seed))
        timings = {"generation/policy": time.perf_counter() - start}
        start = time.perf_counter()
        prompt_ids, completions, interactions, scores = [], [], [], []
        for i, group in enumerate(outs):
            for c, score in zip(group, _scores(self.task, [c.text for c in group], rows[i])):
                completed = completion_share([score.has_answer], [c.finish_reason == "stop"])
                scores.append(score)
                prompt_ids.append(prompts[i])
                completions.append(c)
                interactions.append(
                    Interaction(
                        question=questions[i],
                        ground_truth=truths[i],
                        policy_completion=c.text,
                        p_with=float(score.correct),
                        completed=completed,
                        score=score,
                    )
                )
        timings["reward"] = time.perf_counter() - start
        tokens = {"policy": sum(len(c.token_ids) for c in completions)}
        return prompt_ids, completions, interactions, timings, tokens, scores


def _to_sample(interaction: Interaction, completion: Completion) -> RolloutSample:
    adaptive = interaction.baseline_correct is not None
    return RolloutSample(
        question=interaction.question,
        ground_truth=interaction.ground_truth,
        completion=completion.text,
        completion_tokens=len(completion.token_ids),
        teaching=interaction.teaching if adaptive else None,
        teaching_tokens=interaction.teaching_tokens if adaptive else None,
        has_teaching_tags=interaction.has_teaching_tags if adaptive else None,
        baseline_correct=interaction.baseline_correct,
        with_teaching_correct=interaction.with_teaching_correct,
        score=interaction.score,
    )
