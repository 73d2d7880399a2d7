"""Progress bars: live on a terminal, one line per tenth of the work (no carriage returns) in a log."""
import io

from common.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_a_bar_is_a_line_per_tenth_of_the_work_and_no_carriage_return():
    log = io.StringIO()
    bar = progress_bar(total=1000, desc="embed", unit="img", file=log, initial=100)
    for _ in range(900):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10, lines                # from 10% (resumed) to 100%; the closing redraw is not a line again
    assert lines[0].startswith("embed:  10% 100/1000") and lines[-1].startswith("embed: 100% 1000/1000")


def test_a_log_without_a_total_gets_its_first_and_last_lines_only_within_a_minute():
    log = io.StringIO()
    for _ in progress_bar(iter(range(5000)), desc="hash", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) <= 3 and lines[-1].startswith("hash: 5000 [")


def test_on_a_terminal_the_bar_redraws_in_place_and_disable_writes_nothing():
    tty = Terminal()
    for _ in progress_bar(range(50), desc="train", file=tty, mininterval=0):
        pass
    assert tty.getvalue().count("\r") >= 50 and "\n" not in tty.getvalue().rstrip("\n")
    quiet = io.StringIO()
    for _ in progress_bar(range(50), file=quiet, disable=True):
        pass
    for _ in progress_bar(range(50), file=quiet, disable=None):      # None: on a terminal only
        pass
    assert quiet.getvalue() == ""
    tty = Terminal()
    for _ in progress_bar(range(50), file=tty, disable=None):
        pass
    assert "50/50" in tty.getvalue()
