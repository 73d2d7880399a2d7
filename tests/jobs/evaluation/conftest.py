"""Fixtures of the evaluation tests: the tiny sample and frozen-mode run the training tests share."""
from tests.jobs.training.tiny_run import sample, trained  # noqa: F401
