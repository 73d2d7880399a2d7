"""The batch jobs' choice of the backbone's graph: traced on a CPU for a large enough job, else eager, with a reason."""
import pytest

from common.errors import InputError
from jobs.backbone_graph import TRACE_MIN_IMAGES, choose_graph


def test_a_cpu_job_of_enough_images_is_traced_and_a_small_one_is_not():
    big, small = choose_graph("cpu", TRACE_MIN_IMAGES), choose_graph("cpu", TRACE_MIN_IMAGES - 1)
    assert big.traced and big.name == "traced" and "CPU" in big.reason
    assert not small.traced and small.name == "eager" and f"{TRACE_MIN_IMAGES - 1} images" in small.reason


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_accelerator_runs_eagerly_whatever_the_size(device):
    choice = choose_graph(device, 10 * TRACE_MIN_IMAGES)
    assert not choice.traced and device in choice.reason


def test_a_compiled_backbone_is_not_traced():
    choice = choose_graph("cpu", 10 * TRACE_MIN_IMAGES, compile=True)
    assert not choice.traced and "--compile" in choice.reason


@pytest.mark.parametrize("asked", [True, False])
def test_what_the_user_asks_for_wins_on_a_cpu(asked):
    for images in (1, 10 * TRACE_MIN_IMAGES):
        choice = choose_graph("cpu", images, asked=asked)
        assert choice.traced is asked and "asked for" in choice.reason


def test_no_trace_beside_a_compile_is_eager():
    assert not choose_graph("cuda", 5, compile=True, asked=False).traced


@pytest.mark.parametrize("device, compile, message", [("cpu", True, "choose one"), ("cuda", False, "runs on a CPU")])
def test_a_trace_that_cannot_run_is_refused(device, compile, message):
    with pytest.raises(InputError, match=message):
        choose_graph(device, 10, compile=compile, asked=True)
