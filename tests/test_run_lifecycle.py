"""The run folder's lifecycle, unit by unit: which outputs count as a run, truncating step logs on resume, the
resume command an interrupted run prints, the signal handler, and the ETA both loops print."""

import json
import os
import signal

import pytest

from rcl.interrupt import StopRequest, TrainingInterrupted, resume_command
from rcl.progress import StepClock, format_duration
from rcl.rl.loop import progress_line
from rcl.run_dir import RL_OUTPUTS, RunFolderInUse, earlier_outputs, log_version, refuse_to_replace, truncate_to_step


def test_only_rcls_own_non_empty_outputs_count_as_an_earlier_run(tmp_path):
    (tmp_path / "launch-20260101").mkdir()  # a launcher's logs, written before training starts
    (tmp_path / "csv").mkdir()  # an empty folder left by a run that failed at once
    (tmp_path / "notes.txt").write_text("mine")
    assert earlier_outputs(tmp_path, RL_OUTPUTS) == []
    refuse_to_replace(tmp_path, RL_OUTPUTS, "trainer.out_dir")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-000010.ckpt").write_bytes(b"")
    (tmp_path / "checkpoints" / "step-000020.ckpt").write_bytes(b"")
    with pytest.raises(RunFolderInUse, match=r"\(checkpoints/\): resume it with --ckpt_path .*step-000020\.ckpt"):
        refuse_to_replace(tmp_path, RL_OUTPUTS, "trainer.out_dir")


def test_truncating_a_step_log_keeps_the_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "history.jsonl"
    rows = [{"step": 0, "eval/accuracy": 0.1}, {"step": 1, "reward": 1.0}, {"step": 2, "reward": 2.0},
            {"step": 2, "eval/accuracy": 0.2}, {"step": 3, "reward": 3.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew')  # cut short by a crash
    assert truncate_to_step(path, 2) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:4]
    assert truncate_to_step(path, 2) == 0, "a second resume at the same step changes nothing"
    assert truncate_to_step(tmp_path / "absent.jsonl", 2) == 0


def test_log_versions_keep_each_session_apart():
    assert log_version("fit", None) == ""
    assert log_version("fit", "runs/x/checkpoints/step-000004.ckpt") == "resumed-step-000004"
    assert log_version("validate", "runs/x/checkpoints/last.ckpt") == "validate-last"
    assert log_version("test", None) == "test"


def test_the_resume_command_is_the_same_command_line_with_the_checkpoint(tmp_path):
    argv = ["--config", "a b.yaml", "--trainer.max_steps", "10", "--ckpt_path", "old.ckpt", "--overwrite", "true",
            "--ckpt_path=older.ckpt"]
    assert resume_command("fit", argv, tmp_path / "step-000003.ckpt") == (
        f"python -m rcl fit --config 'a b.yaml' --trainer.max_steps 10 --ckpt_path {tmp_path / 'step-000003.ckpt'}")


def test_the_first_signal_asks_to_stop_and_a_second_stops_at_once(capsys):
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        assert "SIGTERM: stopping after this step" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the previous handlers are back"
    assert TrainingInterrupted(signal.SIGTERM, 3, "c.ckpt").exit_code == 143


def test_eta_is_the_remaining_steps_at_this_sessions_average_pace():
    clock = StepClock(start_step=10, now=100.0)
    assert clock.eta(10, 50, now=100.0) is None
    assert clock.eta(14, 50, now=120.0) == pytest.approx(36 * 5.0)  # 4 steps in 20 s, 36 to go
    assert [format_duration(s) for s in (4.4, 65, 3600 + 7 * 60 + 20)] == ["4s", "1m05s", "1h07m"]
    metrics = {"reward": 0.5, "accuracy": 0.25, "loss": 0.1, "time/generation/policy": 1.0, "time/training": 2.0}
    assert progress_line(14, 50, metrics, eta_s=180.0).endswith("| gen 1.0s train 2.0s | eta 3m00s")
