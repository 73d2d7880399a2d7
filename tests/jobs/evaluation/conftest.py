"""Fixtures of the evaluation tests: the tiny sample and run the training tests share, and a sample that learns."""
from tests.jobs.evaluation.learning_run import learned  # noqa: F401
from tests.jobs.training.tiny_run import sample, trained  # noqa: F401
