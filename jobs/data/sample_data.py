"""Transitional re-export: the generator now lives in jobs.data.sample, the file names in jobs.data.layouts.

Kept only so that jobs/demo.py and tests/jobs/training/test_train.py keep working until they import
from those homes; delete this module then.
"""
from jobs.data.layouts import DONE_FILE, PRODUCT_DIR, SCENE_DIR
from jobs.data.sample import generate

__all__ = ["DONE_FILE", "PRODUCT_DIR", "SCENE_DIR", "generate"]
