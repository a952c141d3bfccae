"""experiments/quickstart.py's report: the before/after summary, the verdict lines and the plot, from a history file
shaped like the RL loop's (the full pipeline itself takes minutes and is measured in the README, not run here)."""

import json

import pytest

from experiments.quickstart import load_history, plot, print_table, summarize, trailing_mean


def _history(rewards: list[float], evals: dict[int, tuple[float, float]]) -> list[dict]:
    rows = [{"step": s, "eval/baseline_accuracy": b, "eval/with_teaching_accuracy": w, "eval/ndr": 0.9}
            for s, (b, w) in evals.items() if s == 0]
    for step, reward in enumerate(rewards, start=1):
        rows.append({"step": step, "reward": reward, "teaching/ndr": 0.8})
        if step in evals:
            b, w = evals[step]
            rows.append({"step": step, "eval/baseline_accuracy": b, "eval/with_teaching_accuracy": w, "eval/ndr": 0.95})
    return rows


def test_summary_compares_first_and_last_fifth_and_first_and_last_eval():
    history = _history([0.1] * 2 + [0.5] * 6 + [0.3] * 2, {0: (0.1, 0.3), 5: (0.1, 0.35), 10: (0.1, 0.45)})
    s = summarize(history)
    assert s["reward_first_fifth"] == pytest.approx(0.1)
    assert s["reward_last_fifth"] == pytest.approx(0.3)
    assert s["first_eval"]["step"] == 0 and s["last_eval"]["step"] == 10
    assert s["steps"] == 10


def test_table_states_both_verdicts(capsys):
    learned = summarize(_history([0.1] * 5 + [0.4] * 5, {0: (0.1, 0.3), 10: (0.1, 0.45)}))
    print_table(learned, {"GRPO": 12.0})
    out = capsys.readouterr().out
    assert "teacher + student beats student alone: yes" in out and "reward rose over training: yes" in out
    assert "0.450" in out and "GRPO 12s" in out

    flat = summarize(_history([0.4] * 5 + [0.1] * 5, {0: (0.3, 0.3), 10: (0.4, 0.2)}))
    print_table(flat, {})
    out = capsys.readouterr().out
    assert "beats student alone: NO" in out and "reward rose over training: NO" in out


def test_history_without_training_steps_is_a_clear_error(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"step": 0, "eval/baseline_accuracy": 0.1, "eval/with_teaching_accuracy": 0.2}) + "\n")
    with pytest.raises(SystemExit, match="no evaluation or no training steps"):
        summarize(load_history(path))
    with pytest.raises(SystemExit, match="is missing"):
        load_history(tmp_path / "absent.jsonl")


def test_plot_draws_the_history_series(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real_savefig(fig, *a, **k))[1])
    out = plot(_history([0.1, 0.2, 0.3, 0.4], {0: (0.1, 0.3), 4: (0.1, 0.4)}), tmp_path / "quickstart.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = saved
    series = {(ax.get_title(), line.get_label()): ([int(x) for x in line.get_xdata()],
                                                   pytest.approx([float(y) for y in line.get_ydata()]))
              for ax in fig.axes for line in ax.get_lines()}
    assert series[("reward", "reward (train)")] == ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    assert series[("reward", "mean of last 1 steps")] == ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    assert series[("non-degradation rate", "NDR (train)")] == ([1, 2, 3, 4], [0.8] * 4)
    assert series[("non-degradation rate", "NDR (held-out)")] == ([0, 4], [0.9, 0.95])
    assert series[("held-out accuracy", "student alone")] == ([0, 4], [0.1, 0.1])
    assert series[("held-out accuracy", "teacher + student")] == ([0, 4], [0.3, 0.4])
    assert all(ax.get_xlabel() == "optimizer step" for ax in fig.axes)


def test_trailing_mean_is_the_mean_of_each_full_window():
    assert trailing_mean([1.0, 2.0, 3.0, 6.0], 2) == [1.5, 2.5, 4.5]
    assert trailing_mean([1.0, 2.0, 3.0], 3) == [2.0]
    assert trailing_mean([4.0, 5.0], 1) == [4.0, 5.0]


def test_table_shows_the_logged_intervals(capsys):
    history = _history([0.1] * 5 + [0.4] * 5, {0: (0.1, 0.3), 10: (0.1, 0.45)})
    for row in history:
        if "eval/with_teaching_accuracy" in row:
            row.update({"eval/with_teaching_accuracy_ci_low": 0.25, "eval/with_teaching_accuracy_ci_high": 0.5})
    print_table(summarize(history), {})
    assert "0.450 [0.250, 0.500]" in capsys.readouterr().out


def test_rl_change_is_read_from_the_evaluation(capsys):
    from experiments.quickstart import print_rl_change

    results = {"paired_differences": [
        {"model": "teacher_rl", "reference": "teacher_sft", "protocol": "adaptive_teaching", "delta": 0.04,
         "ci_low": -0.01, "ci_high": 0.09, "ci_level": 0.8, "problems": 200, "task": "arithmetic"}]}
    print_rl_change(results)
    out = capsys.readouterr().out
    assert "paired over 200 held-out problems" in out and "+0.040 [-0.010, +0.090] (80% interval)" in out
    print_rl_change({"paired_differences": []})
    assert "no teacher_rl - teacher_sft difference" in capsys.readouterr().out
