"""The adaptive-teaching rollout with scripted engines: routing, sharing within a group, tokenizers per role."""

import pytest
import torch
from transformers import AutoTokenizer

from rcl.engines import Completion, SamplingParams
from rcl.prompts import PromptTemplates, render_prompt, teacher_messages
from rcl.rewards import get_reward
from rcl.rl.rollout import RolloutRunner, RolloutSettings
from rcl.tasks import Score, Task, get_task
from rcl.tasks.health import VerifierFailure
from rcl.tiny_models import build_tokenizer


class ScriptedEngine:
    """Answers each prompt with `respond(prompt_text, sample_index)`, tokenized by its own tokenizer."""

    def __init__(self, tokenizer, respond):
        self.tokenizer = tokenizer
        self.respond = respond
        self.calls: list[tuple[list[str], SamplingParams]] = []

    def generate(self, prompts, params):
        texts = [self.tokenizer.decode(p) for p in prompts]
        self.calls.append((texts, params))
        out = []
        for text in texts:
            group = []
            for j in range(params.n):
                reply = self.respond(text, j)
                ids = self.tokenizer(reply, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
                group.append(Completion(ids, [-0.5] * len(ids), "stop", reply))
            out.append(group)
        return out


def student_reply(text, j):
    if "State your approach" in text:
        return "add the ones, then the tens"
    if "Guidance: good" in text:
        return "<solution>85</solution>"
    if "Guidance:" in text:
        return "<solution>0</solution>"
    return "<solution>85</solution>" if j == 0 else "<solution>84</solution>"  # baseline: 1 of 2 right


def teacher_reply(text, j):
    return "<thinking>carry</thinking>\n<teaching>good</teaching>" if j % 2 == 0 else "<teaching>bad</teaching>"


def settings(**kw):
    base = dict(
        protocol="adaptive_teaching", num_generations=4, baseline_samples=2, student_samples=3, max_probe_tokens=7,
        missing_teaching="strip_thinking", policy=SamplingParams(max_tokens=30, temperature=1.0),
        student=SamplingParams(max_tokens=10, temperature=0.7),
    )
    base.update(kw)
    return RolloutSettings(**base)


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir, tmp_path_factory):
    teacher = AutoTokenizer.from_pretrained(tiny_model_dir)
    student = build_tokenizer(tmp_path_factory.mktemp("student_tok"), vocab_size=300, seed=7)
    assert len(student) != len(teacher), "the test needs two different vocabularies"
    return teacher, student


def make_runner(tokenizers):
    teacher_tok, student_tok = tokenizers
    policy, student = ScriptedEngine(teacher_tok, teacher_reply), ScriptedEngine(student_tok, student_reply)
    runner = RolloutRunner(
        policy, student, PromptTemplates(),
        {"adaptive_teaching": get_reward("adaptive_teaching", efficiency_weight=0.0)}, {"adaptive_teaching": 1.0},
    )
    return runner, policy, student


def test_roles_are_routed_to_their_own_engine_and_tokenizer(tokenizers):
    runner, policy, student = make_runner(tokenizers)
    rows = [{"question": "What is 47+38?", "ground_truth": "85"}, {"question": "What is 1+2?", "ground_truth": "85"}]
    rollout = runner.run(rows, seed=11, settings=settings())
    # student: baseline, probe, with-teaching; policy: teaching only
    assert len(student.calls) == 3 and len(policy.calls) == 1
    (base_texts, base_p), (probe_texts, probe_p), (with_texts, with_p) = student.calls
    assert all("<solution></solution>" in t and "Guidance" not in t for t in base_texts)
    assert all("State your approach" in t for t in probe_texts)
    assert all("Guidance:" in t for t in with_texts)
    assert all("Student's approach" in t for t in policy.calls[0][0])
    assert (base_p.n, probe_p.n, with_p.n, policy.calls[0][1].n) == (2, 1, 3, 4)
    assert probe_p.max_tokens == 7 and base_p.temperature == 0.7 and policy.calls[0][1].temperature == 1.0
    # the student's text is decoded by the student's tokenizer: the approach survives the round trip
    assert {i.approach for i in rollout.interactions} == {"add the ones, then the tens"}
    # only the teaching (never the thinking) reaches the student, once per teaching sample
    assert sorted("Guidance: good" in t for t in with_texts) == [False] * 4 + [True] * 4
    assert not any("carry" in t or "thinking>" in t for t in with_texts)


def test_baseline_and_probe_are_shared_by_the_whole_group(tokenizers):
    runner, policy, student = make_runner(tokenizers)
    rows = [{"question": "What is 47+38?", "ground_truth": "85"}]
    rollout = runner.run(rows, seed=3, settings=settings())
    base_texts, _ = student.calls[0]
    probe_texts, _ = student.calls[1]
    assert len(base_texts) == 1 and len(probe_texts) == 1, "one baseline request (n=k) and one probe per prompt"
    assert len(rollout) == 4
    assert {tuple(i.baseline_correct) for i in rollout.interactions} == {(True, False)}
    assert {i.p_base for i in rollout.interactions} == {0.5}
    assert [i.p_with for i in rollout.interactions] == [1.0, 0.0, 1.0, 0.0]
    # good teaching: delta 0.5 -> reward 0.5 (w = 0); bad: degradation with multiplier 0 -> 0
    assert rollout.rewards.tolist() == [0.5, 0.0, 0.5, 0.0]
    expected = (rollout.rewards - rollout.rewards.mean()) / (rollout.rewards.std() + 1e-4)
    torch.testing.assert_close(rollout.advantages, expected)


def test_policy_prompt_ids_are_exactly_the_sampled_prompt(tokenizers):
    runner, policy, student = make_runner(tokenizers)
    rollout = runner.run([{"question": "What is 4+5?", "ground_truth": "9"}], seed=0, settings=settings())
    teacher_tok = tokenizers[0]
    expected = teacher_tok(
        render_prompt(teacher_tok, teacher_messages(PromptTemplates(), "What is 4+5?", "add the ones, then the tens")),
        add_special_tokens=False,
    ).input_ids
    assert all(ids == expected for ids in rollout.prompt_ids)
    assert teacher_tok.decode(rollout.prompt_ids[0]) == policy.calls[0][0][0]
    assert rollout.interactions[1].has_teaching_tags and rollout.interactions[1].teaching == "bad"


def test_seeds_differ_per_phase(tokenizers):
    runner, policy, student = make_runner(tokenizers)
    runner.run([{"question": "What is 4+5?", "ground_truth": "9"}], seed=100, settings=settings())
    seeds = [p.seed for _, p in student.calls] + [policy.calls[0][1].seed]
    assert len(set(seeds)) == 4 and 100 in seeds


def test_direct_protocol_scores_the_policy_itself(tokenizers):
    teacher_tok = tokenizers[0]
    policy = ScriptedEngine(teacher_tok, lambda text, j: "<solution>9</solution>" if j < 3 else "no idea")
    runner = RolloutRunner(policy, None, PromptTemplates(), {"correctness": get_reward("correctness")},
                           {"correctness": 1.0})
    rollout = runner.run([{"question": "What is 4+5?", "ground_truth": "9"}], 0, settings(protocol="direct"))
    assert rollout.rewards.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert [i.completed for i in rollout.interactions] == [1.0, 1.0, 1.0, 0.0]
    assert all(i.baseline_correct is None for i in rollout.interactions)


def test_adaptive_protocol_needs_a_student(tokenizers):
    runner = RolloutRunner(ScriptedEngine(tokenizers[0], teacher_reply), None, PromptTemplates(), {}, {})
    with pytest.raises(ValueError, match="needs a student engine"):
        runner.run([{"question": "q", "ground_truth": "1"}], 0, settings())


class KeywordTask(Task):
    """A test task with its own row field: right when the completion names the row's `keyword`."""

    fields = ("keyword",)
    name = "keyword_test"

    def prompt(self, row):
        return f"Say the secret word for {row['question']}"

    def score(self, completion, row):
        if "crash" in completion:
            return Score(0.0, False, {"outcome": "error", "error": "the checker crashed"})
        hit = row["keyword"] in completion
        return Score(float(hit), hit, {"outcome": "correct" if hit else "wrong"})


def test_the_task_renders_the_prompt_scores_the_answer_and_reads_its_own_fields(tokenizers):
    replies = ["the word is plum", "pear", "crash", "plum!"]
    policy = ScriptedEngine(tokenizers[0], lambda text, j: replies[j])
    runner = RolloutRunner(policy, None, PromptTemplates(), {"correctness": get_reward("correctness")},
                           {"correctness": 1.0}, KeywordTask())
    rollout = runner.run([{"question": "fruit", "keyword": "plum"}], 0, settings(protocol="direct"))
    assert "Say the secret word for fruit" in policy.calls[0][0][0]
    assert rollout.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert [i.p_with for i in rollout.interactions] == [1.0, 0.0, 0.0, 1.0]
    assert rollout.verifier == {"verifier/checks": 4.0, "verifier/errors": 1.0, "verifier/timeouts": 0.0}


def test_adaptive_teaching_scores_the_students_answers_with_the_task(tokenizers):
    teacher_tok, student_tok = tokenizers
    student = ScriptedEngine(student_tok, lambda text, j: "plum" if "Guidance: good" in text else "fig")
    runner = RolloutRunner(ScriptedEngine(teacher_tok, teacher_reply), student, PromptTemplates(),
                           {"adaptive_teaching": get_reward("adaptive_teaching", efficiency_weight=0.0)},
                           {"adaptive_teaching": 1.0}, KeywordTask())
    rollout = runner.run([{"question": "fruit", "keyword": "plum"}], 0, settings())
    assert all("Say the secret word for fruit" in texts[0] for texts, _ in student.calls)
    assert {i.p_base for i in rollout.interactions} == {0.0}
    assert [i.p_with for i in rollout.interactions] == [1.0, 0.0, 1.0, 0.0]
    assert rollout.verifier["verifier/checks"] == 2 + 4 * 3  # k baseline + m per teaching


def test_a_verifier_that_mostly_fails_stops_the_rollout(tokenizers):
    policy = ScriptedEngine(tokenizers[0], lambda text, j: "crash")
    runner = RolloutRunner(policy, None, PromptTemplates(), {"correctness": get_reward("correctness")},
                           {"correctness": 1.0}, KeywordTask())
    rows = [{"question": f"q{i}", "keyword": "plum"} for i in range(4)]
    with pytest.raises(VerifierFailure, match="the verifier of task 'keyword_test' failed on 16 of 16 checks"):
        runner.run(rows, 0, settings(protocol="direct"))


def test_a_format_only_reward_is_never_accuracy(tokenizers):
    # right format, wrong answer: the format reward pays, accuracy (p_with, the task's `correct`) stays 0
    policy = ScriptedEngine(tokenizers[0], lambda text, j: "<reasoning>4+5 is 8</reasoning>\n<answer>8</answer>")
    task = get_task("arithmetic", format="reasoning_answer", format_mode="additive")
    runner = RolloutRunner(policy, None, PromptTemplates(), {"correctness": get_reward("correctness"),
                                                             "format": get_reward("format")},
                           {"correctness": 1.0, "format": 0.5}, task)
    rollout = runner.run([{"question": "What is 4+5?", "ground_truth": "9"}], 0, settings(protocol="direct"))
    assert rollout.rewards.tolist() == [0.5] * 4
    assert rollout.reward_components["format"].tolist() == [1.0] * 4
    assert rollout.reward_components["correctness"].tolist() == [0.0] * 4
    assert [i.p_with for i in rollout.interactions] == [0.0] * 4
