"""Fixtures of the training tests: the shared tiny sample and its frozen-mode run."""
from tests.jobs.training.tiny_run import sample, trained  # noqa: F401
