"""Pair and category files: line numbers, JSON arrays, and files that are not text at all."""
from __future__ import annotations

import json

import pytest

from common.errors import InputError
from jobs.data.pair_files import PairFileError, Reject, parse_pairs, read_categories
from tests.jobs.data.stl_lines import CATS, LINES, P1, S2


def test_json_array_input_keeps_line_numbers(tmp_path):
    items = [json.loads(LINES[0]), {"product": P1, "scene": S2, "bbox": [0.5, 0.5, 0.1, 0.9]},
             json.loads(LINES[15])]
    text = "[\n" + ",\n".join(json.dumps(i, indent=1) for i in items) + "\n]\n"
    (tmp_path / "pairs.json").write_text(text)
    records, rejects = parse_pairs(tmp_path / "pairs.json", CATS)
    assert [r.line for r in records] == [2, 22] and [(r.line, r.reason) for r in rejects] == [(12, "bbox_inverted")]
    (tmp_path / "broken.json").write_text("[\n" + LINES[0] + ",\n{oops}\n]")
    with pytest.raises(PairFileError, match="broken.json: line 3"):
        parse_pairs(tmp_path / "broken.json", CATS)


def test_edge_noise_is_clamped_and_a_bom_is_accepted(tmp_path):
    (tmp_path / "pairs.jsonl").write_text("\ufeff" + LINES[14] + "\r\n" + LINES[15] + "\r\n", encoding="utf-8")
    records, rejects = parse_pairs(tmp_path / "pairs.jsonl", CATS)
    assert rejects == [] and [r.line for r in records] == [1, 2]
    assert records[0].bbox == (0.0, 0.0, 1.0, 1.0)


def test_a_binary_pair_file_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "pairs.json.gz"
    path.write_bytes(LINES[0].encode() + b"\n" + LINES[15].encode() + b"\n\x1f\x8b\x08\x00 binary")
    with pytest.raises(PairFileError) as caught:
        parse_pairs(path, CATS)
    assert str(caught.value) == (f"{path}: line 3, column 2: not UTF-8 text (byte 0x8b); expected a JSON text file")
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "expected a JSON object mapping product -> category, got a list"),
    (b"{oops", "not valid JSON"),
    (json.dumps({P1: ""}).encode(), "1 product\\(s\\) have an empty or non-string category"),
    (b'{"a": "Shoes",\n "b": "\xff"}', "line 2, column 8: not UTF-8 text \\(byte 0xff\\)"),
])
def test_category_file_problems(tmp_path, content, message):
    (tmp_path / "cat.json").write_bytes(content)
    with pytest.raises(PairFileError, match=message):
        read_categories(tmp_path / "cat.json")


def test_a_folder_is_not_a_pair_file(tmp_path):
    with pytest.raises(PairFileError, match="cannot read it"):
        parse_pairs(tmp_path, CATS)


def test_reject_as_dict():
    assert Reject(3, "malformed", "invalid JSON", "{").as_dict() == {
        "line": 3, "reason": "malformed", "detail": "invalid JSON", "text": "{"}
