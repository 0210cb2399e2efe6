"""$readmemh files: exact round trips, two's complement, clear range errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ttfs.contract.readmemh import (
    ReadmemhError,
    format_words,
    parse_words,
    read_readmemh,
    write_readmemh,
)


@st.composite
def words(draw, signed: bool):
    width = draw(st.integers(1, 64 if signed else 63))
    low, high = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    values = draw(st.lists(st.integers(low, high), max_size=40))
    return width, values


@settings(max_examples=200, deadline=None)
@given(words(signed=True))
def test_signed_round_trip(case):
    width, values = case
    text = format_words(values, width, signed=True)
    assert parse_words(text, width, signed=True).tolist() == values


@settings(max_examples=200, deadline=None)
@given(words(signed=False))
def test_unsigned_round_trip(case):
    width, values = case
    text = format_words(values, width, signed=False)
    assert parse_words(text, width, signed=False).tolist() == values


def test_file_round_trip_and_layout(tmp_path):
    path = tmp_path / "w.hex"
    write_readmemh(path, np.array([[-1, 0], [5, -16]]), 5)
    # 5 bits -> 2 hex digits, two's complement: -1 = 0x1f, -16 = 0x10
    assert path.read_text() == "1f\n00\n05\n10\n"
    assert read_readmemh(path, 5).tolist() == [-1, 0, 5, -16]
    assert read_readmemh(path, 5, signed=False).tolist() == [31, 0, 5, 16]
    assert read_readmemh(path, 5).dtype == np.int64


def test_lenient_range_when_signedness_unspecified():
    # An unsigned 9-bit LUT entry (256) and a signed one (-256) both fit 9 bits.
    assert format_words([256, -256], 9) == "100\n100\n"
    with pytest.raises(ReadmemhError, match=r"values\[0\]: 256 does not fit 9 bits"):
        format_words([256], 9, signed=True)
    with pytest.raises(ReadmemhError, match=r"values\[1\]: -1 does not fit"):
        format_words([0, -1], 9, signed=False)


@pytest.mark.parametrize(
    "values, width, message",
    [
        ([512], 9, r"values\[0\]: 512 does not fit 9 bits"),
        ([-257], 9, r"values\[0\]: -257"),
        ([1.5], 8, "not an integer"),
        ([1], 0, "width"),
        ([1 << 200], 200, r"values\[0\]: \d+ does not fit 200 bits"),
    ],
)
def test_write_range_errors(tmp_path, values, width, message):
    path = tmp_path / "bad.hex"
    with pytest.raises(ReadmemhError, match=message):
        write_readmemh(path, values, width)
    assert not path.exists()


def test_wide_words_for_packed_roms(tmp_path):
    """Packed ROM words (lanes x weight bits) are wider than 64 bits: written exactly."""
    word = (1 << 1699) | 0b10110
    path = tmp_path / "wide.hex"
    write_readmemh(path, [word, -1], 1700)
    lines = path.read_text().splitlines()
    assert len(lines[0]) == 425 and int(lines[0], 16) == word
    assert int(lines[1], 16) == (1 << 1700) - 1
    with pytest.raises(ReadmemhError, match="width"):
        read_readmemh(path, 1700)


def test_reader_accepts_comments_blank_lines_and_underscores():
    text = "// weights\n\n0f // first\nf_f\n 1 2\n"
    assert parse_words(text, 8).tolist() == [15, -1, 1, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("1ff\n", r"text:1: '1ff' does not fit 8 bits"),
        ("0x\n", "not a hexadecimal word"),
        ("00\nzz\n", "text:2"),
        ("@10\n00\n", "address"),
        ("_\n", "not a hexadecimal word"),
    ],
)
def test_reader_errors_name_the_line(text, message):
    with pytest.raises(ReadmemhError, match=message):
        parse_words(text, 8)


def test_missing_file(tmp_path):
    with pytest.raises(ReadmemhError, match="no such file"):
        read_readmemh(tmp_path / "missing.hex", 8)


def test_unsigned_64_bit_words_beyond_int64_are_rejected():
    with pytest.raises(ReadmemhError, match="int64"):
        parse_words("ffffffffffffffff\n", 64, signed=False)
    assert parse_words("ffffffffffffffff\n", 64).tolist() == [-1]
