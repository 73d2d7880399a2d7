"""Evaluation job: FITB and HR@K of each method on a split, written as report.json and pictures."""
