"""fastrnn.Vocabulary: ids, one-hot rows, round trips, padded batches, special symbols, errors."""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn.errors import ArgumentError, DTypeError, FormatError, ShapeError
from fastrnn.vocab import check_ids


def test_course_example_one_hot():
    v = fastrnn.Vocabulary("ATCG")
    assert len(v) == 4 and v.symbols == ("A", "T", "C", "G")
    assert [v.id(s) for s in "ATCG"] == [0, 1, 2, 3]
    expected = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    np.testing.assert_array_equal(v.one_hot("AACG"), expected)
    assert v.one_hot("AACG").dtype == np.float32
    np.testing.assert_array_equal(v.one_hot(np.array([[0, 2], [3, 1]])),
                                  np.eye(4, dtype=np.float32)[[[0, 2], [3, 1]]])


@pytest.mark.parametrize("text", ["", "A", "GATTACA", "CCCCCCCCCCCCCCCCCCCC"])
def test_char_round_trip(text):
    v = fastrnn.Vocabulary("ATCG")
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert v.decode(ids) == text
    assert v.decode(ids, join=False) == list(text)


def test_token_vocabulary_round_trip():
    v = fastrnn.Vocabulary(["the", "cat", "sat"], unknown="<unk>", bos="<s>", eos="</s>")
    assert not v.chars
    assert v.symbols[:3] == ("<unk>", "<s>", "</s>")       # specials go in front, in order
    ids = v.encode("the cat sat", bos=True, eos=True)
    assert ids.tolist() == [1, 3, 4, 5, 2]
    assert v.decode(ids) == "the cat sat"                 # bos dropped, stops at eos
    assert v.decode(ids, strip=False) == "<s> the cat sat </s>"
    assert v.encode("the dog").tolist() == [3, 0]          # unknown policy
    assert v.encode(["cat", "the"]).tolist() == [4, 3]     # pre-split tokens


def test_specials_already_present_keep_their_place():
    v = fastrnn.Vocabulary("ab$", eos="$", pad="_")
    assert v.symbols == ("_", "a", "b", "$")
    assert v.pad_id == 0 and v.eos_id == 3 and v.bos_id is None
    assert v.decode(np.array([1, 0, 2, 3, 1])) == "ab"


def test_encode_batch_pads_and_reports_lengths():
    v = fastrnn.Vocabulary("ATCG", pad="-")
    ids, lengths = v.encode_batch(["AT", "GATC", ""])
    assert ids.shape == (3, 4) and lengths.tolist() == [2, 4, 0]
    assert ids[0].tolist() == [1, 2, 0, 0]
    ids_t, _ = v.encode_batch(["AT", "GATC"], batch_first=False)
    np.testing.assert_array_equal(ids_t, v.encode_batch(["AT", "GATC"])[0].T)
    for row, n, text in zip(ids, lengths, ["AT", "GATC", ""]):
        assert v.decode(row[:n]) == text


def test_unknown_symbol_is_an_argument_error():
    v = fastrnn.Vocabulary("ATCG")
    with pytest.raises(ArgumentError, match="'N' is not in the vocabulary"):
        v.encode("ACGN")
    assert fastrnn.Vocabulary("ATCG", unknown="N").encode("ACGX").tolist() == [1, 3, 4, 0]


@pytest.mark.parametrize("bad, err", [
    (np.array([0, 4]), ArgumentError), (np.array([-1]), ArgumentError),
    (np.array([[0, 1], [2, 9]]), ArgumentError), (np.array([0.0, 1.0]), DTypeError),
    (np.array([True]), DTypeError), (np.array(["A"]), DTypeError)])
def test_out_of_range_and_non_integer_ids_are_rejected(bad, err):
    v = fastrnn.Vocabulary("ATCG")
    with pytest.raises(err):
        v.decode(bad if bad.ndim == 1 else bad[1])
    with pytest.raises(err):
        v.one_hot(bad) if bad.dtype.kind in "iub" else check_ids(bad, 4)
    with pytest.raises(err):
        check_ids(bad, 4)


def test_error_message_names_the_bad_id_and_where():
    with pytest.raises(ArgumentError, match=r"in \[0, 4\), got 7 at index \(1, 0\)"):
        check_ids(np.array([[0, 1], [7, 2]]), 4)


@pytest.mark.parametrize("symbols", ["", "AAT", ["a", "a"], ["a", ""], [1, 2], b"AT", 5])
def test_bad_symbol_sets(symbols):
    with pytest.raises(ArgumentError):
        fastrnn.Vocabulary(symbols)


def test_missing_special_symbol_and_bad_decode_shape():
    v = fastrnn.Vocabulary("ab")
    with pytest.raises(ArgumentError, match="no bos symbol"):
        v.encode("ab", bos=True)
    with pytest.raises(ShapeError):
        v.decode(np.zeros((2, 2), np.int64))
    with pytest.raises(ArgumentError):
        v.encode_batch("ab")


def test_save_load_and_meta_round_trip(tmp_path):
    v = fastrnn.Vocabulary("abc", eos="<eos>", unknown="?")
    assert fastrnn.Vocabulary.from_meta(v.to_meta()) == v
    fastrnn.save(v, tmp_path / "v.frnn")
    w = fastrnn.load(tmp_path / "v.frnn")
    assert w == v and w.chars == v.chars and w.decode(w.encode("abz")) == "ab?"
    with pytest.raises(FormatError):
        fastrnn.Vocabulary.from_meta({"symbols": "ab", "eos": "$"})
    with pytest.raises(FormatError):
        fastrnn.Vocabulary.from_meta({})


def test_non_symbols_and_non_lists_are_typed_errors():
    v = fastrnn.Vocabulary("ATCG")
    for call in (lambda: v.encode([["A"]]), lambda: v[["A"]], lambda: v.id(3),
                 lambda: v.encode_batch(5), lambda: v.encode_batch(None)):
        with pytest.raises(ArgumentError):
            call()
    assert [] not in v and 1 not in v and "A" in v
    with pytest.raises(ShapeError):
        v.symbol([1, 2])
    assert v.symbol(np.int64(2)) == "C"
    for dtype in ("bogus", object, "(2,3", "(-1,)f4"):  # numpy parses the last two as Python
        with pytest.raises(DTypeError):
            v.one_hot("A", dtype=dtype)


def test_one_hot_of_an_array_of_symbols():
    v = fastrnn.Vocabulary("ATCG")
    symbols = np.array([["A", "T"], ["G", "G"]])
    np.testing.assert_array_equal(v.one_hot(symbols), v.one_hot(np.array([[0, 1], [3, 3]])))
    assert v.one_hot("AT", dtype=np.int8).dtype == np.int8
    with pytest.raises(ArgumentError):
        v.one_hot(np.array(["A", "X"]))


def test_specials_among_the_symbols_do_not_change_character_mode():
    added = fastrnn.Vocabulary(["a", "b"], unknown="<unk>")
    given = fastrnn.Vocabulary(["<unk>", "a", "b"], unknown="<unk>")
    assert added.symbols == given.symbols and added.chars and given.chars
    assert added == given
    assert given.encode("ab").tolist() == [1, 2] and given.encode("az").tolist() == [1, 0]
    assert not fastrnn.Vocabulary(["<s>", "a"]).chars  # "<s>" is not special here: tokens


def test_one_hot_of_a_list_of_ids():
    v = fastrnn.Vocabulary("ATCG")
    np.testing.assert_array_equal(v.one_hot([0, 3]), v.one_hot(np.array([0, 3])))
    np.testing.assert_array_equal(v.one_hot([[0, 1], [3, 3]]), v.one_hot("ATGG").reshape(2, 2, 4))
    np.testing.assert_array_equal(v.one_hot(["A", "G"]), v.one_hot("AG"))   # symbols, as before
    np.testing.assert_array_equal(v.one_hot([["A", "T"]]), v.one_hot("AT")[None])
    assert v.one_hot([]).shape == (0, 4)
    with pytest.raises(ArgumentError, match=r"in \[0, 4\), got 4"):
        v.one_hot([0, 4])
    with pytest.raises(DTypeError):
        v.one_hot([0.0, 1.0])
    with pytest.raises(ArgumentError, match="a symbol is a string, got int 1"):
        fastrnn.Vocabulary("AT", unknown="?").one_hot(["A", 1])   # not the unknown symbol's row


@pytest.mark.parametrize("pad_id", [[1, 2], [1, 2, 3], [[3]]])
def test_encode_batch_pads_with_one_id(pad_id):
    """np.full broadcast a list: [1, 2] padded row 0 as [A, 2], [1, 2, 3] was numpy's ValueError."""
    v = fastrnn.Vocabulary("ATCG")
    with pytest.raises(ShapeError, match="pad_id must be one id"):
        v.encode_batch(["A", "AT"], pad_id=pad_id)
    assert v.encode_batch(["A", "AT"], pad_id=np.int8(3))[0].tolist() == [[0, 3], [0, 1]]


def test_a_vocabulary_records_chars_flag_is_a_bool():
    meta = fastrnn.Vocabulary(["a", "b"]).to_meta()
    assert not fastrnn.Vocabulary.from_meta({**meta, "chars": False}).chars  # kept as saved
    for chars in ("no", 0, None, [True]):   # bool("no") made a character vocabulary
        with pytest.raises(FormatError, match="chars must be true or false"):
            fastrnn.Vocabulary.from_meta({**meta, "chars": chars})


def test_one_hot_dtype_none_is_float32_as_for_the_stages():
    """dtype=None gave float64 (numpy's reading of None); the stages (OneHot, Embedding,
    Linear, the layers) read None as float32, the default."""
    v = fastrnn.Vocabulary("ATCG")
    for x in ("GATC", np.array([[0, 2], [3, 1]]), [["A", "T"]], ""):
        got = v.one_hot(x, dtype=None)
        assert got.dtype == np.float32 == fastrnn.OneHot(4, dtype=None).dtype
        np.testing.assert_array_equal(got, v.one_hot(x))
    assert v.one_hot("A", dtype="float64").dtype == np.float64   # other dtypes as asked


@pytest.mark.parametrize("empty", ["", [], np.zeros(0, np.int64), np.zeros((2, 0), np.int64),
                                   np.array([], dtype="<U1")])
def test_empty_inputs_give_empty_results(empty):
    v = fastrnn.Vocabulary("ATCG", pad="_")
    shape = np.shape(empty) if not isinstance(empty, str) else (0,)
    hot = v.one_hot(empty)
    assert hot.shape == shape + (5,) and hot.dtype == np.float32
    if np.ndim(empty) <= 1 and np.asarray(empty).dtype.kind != "U":  # decode takes ids
        assert v.decode(v.encode(empty) if isinstance(empty, str) else empty) == ""
    ids, lengths = v.encode_batch([])
    assert ids.shape == (0, 0) and lengths.shape == (0,)
    ids, lengths = v.encode_batch(["", ""], batch_first=False)
    assert ids.shape == (0, 2) and lengths.tolist() == [0, 0]
