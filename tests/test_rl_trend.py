from rcl.rl.loop import progress_line
from rcl.rl.trend import direction, room_warning, trend_line


def _eval(step, acc, ndr):
    return {"step": step, "eval/with_teaching_accuracy": acc, "eval/with_teaching_accuracy_ci_low": acc - 0.05,
            "eval/with_teaching_accuracy_ci_high": acc + 0.05, "eval/ndr": ndr, "eval/ndr_ci_low": ndr - 0.04,
            "eval/ndr_ci_high": ndr + 0.04}


def test_direction_against_the_start_interval():
    assert direction(0.40, 0.25, 0.35) == "rising"
    assert direction(0.20, 0.25, 0.35) == "falling"
    assert direction(0.30, 0.25, 0.35) == "no clear change"


def test_trend_line_uses_the_trailing_mean_of_the_last_evaluations():
    assert trend_line([_eval(0, 0.30, 0.80)]) is None
    evals = [_eval(0, 0.30, 0.80), _eval(50, 0.50, 0.80), _eval(100, 0.40, 0.82), _eval(150, 0.39, 0.81),
             _eval(200, 0.38, 0.83)]
    line = trend_line(evals)
    # last three: 0.40, 0.39, 0.38 -> 0.390 > 0.35; NDR 0.82 within [0.76, 0.84]
    assert "teacher + student 0.390 (mean of the last 3) vs 0.300 [0.250, 0.350] at step 0: rising" in line
    assert "best 0.500 at step 50" in line
    assert "NDR 0.820 (mean of the last 3) vs 0.800 [0.760, 0.840] at step 0: no clear change" in line


def test_trend_line_for_the_direct_protocol():
    evals = [{"step": 0, "eval/accuracy": 0.5, "eval/accuracy_ci_low": 0.45, "eval/accuracy_ci_high": 0.55},
             {"step": 10, "eval/accuracy": 0.3}]
    assert trend_line(evals).endswith("accuracy 0.300 (mean of the last 1) vs 0.500 [0.450, 0.550] at step 0: "
                                      "falling; best 0.500 at step 0")


def test_progress_line_prints_the_window_ndr_when_tracked():
    m = {"reward": 0.1, "accuracy": 0.3, "teaching/ndr": 0.5, "teaching/baseline_accuracy": 0.2,
         "teaching/window_ndr": 0.81, "loss": 0.0, "time/training": 1.0}
    assert "ndr(window) 0.810" in progress_line(1, 10, m)
    del m["teaching/window_ndr"]
    assert "ndr 0.500" in progress_line(1, 10, m)


def _first(alone, alone_ci, taught, taught_ci):
    return {"step": 0, "eval/baseline_accuracy": alone, "eval/baseline_accuracy_ci_low": alone_ci[0],
            "eval/baseline_accuracy_ci_high": alone_ci[1], "eval/with_teaching_accuracy": taught,
            "eval/with_teaching_accuracy_ci_low": taught_ci[0], "eval/with_teaching_accuracy_ci_high": taught_ci[1]}


def test_room_warning_when_the_student_alone_is_not_below_teacher_plus_student():
    # the 1-thread quickstart: student alone 0.835, teacher + student 0.290
    line = room_warning(_first(0.835, (0.80, 0.87), 0.290, (0.25, 0.33)))
    assert line.startswith("student alone 0.835 [0.800, 0.870] is not below teacher + student 0.290 [0.250, 0.330]")
    # overlapping intervals: no measured room either
    assert room_warning(_first(0.30, (0.25, 0.35), 0.33, (0.28, 0.38))) is not None
    # a student that needs teaching: quiet
    assert room_warning(_first(0.075, (0.05, 0.10), 0.265, (0.23, 0.30))) is None
    # the direct protocol has no baseline or teacher
    assert room_warning({"step": 0, "eval/accuracy": 0.5, "eval/accuracy_ci_low": 0.4,
                         "eval/accuracy_ci_high": 0.6}) is None
