"""`python -m rcl evaluate`: multi-task evaluation with intervals, pass@k, paired teaching effects and Pareto
comparison. Maths in rcl.eval.stats and rcl.eval.compare; phases in rcl.eval.generate and rcl.eval.score."""
