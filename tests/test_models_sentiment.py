"""Sentiment model: lexicon rules (v1), TF-IDF export against scikit-learn (v2), training command,
and both versions served by a real tritonserver against the in-process reference.

Version 2 is trained on the Financial PhraseBank (non-commercial: tests and evaluation only) into
a temp copy of the repository, never into triton_models/.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from core.errors import ModelError
from core.models import sentiment as st
from core.models._repo import file_sha256, load_card, load_weights
from tests._models import MODELS, temp_repo, train_args
from tests.conftest import shared_file

PHRASEBANK = "news/financial_phrasebank_allagree.txt"
text = st.text_runtime()


@pytest.fixture(scope="module")
def phrasebank():
    """The PhraseBank sentences and labels, with the seeded stratified 80/20 split."""
    texts, labels = st.read_labelled([shared_file(PHRASEBANK)])
    train_idx, test_idx = st.holdout_split(labels, 0.2, seed=0)
    return texts, labels, train_idx, test_idx


@pytest.fixture(scope="module")
def trained_repo(tmp_path_factory):
    """A temp repository with version 1 compiled and version 2 trained by `st.train`."""
    root = tmp_path_factory.mktemp("sentiment")
    repo = temp_repo(root, st.NAME, [1, 2])
    data = str(shared_file(PHRASEBANK))
    steps = []
    metrics = {
        1: st.train(train_args(root, st, "--version", "1"), lambda *a: steps.append(a)),
        2: st.train(train_args(root, st, "--version", "2", "--data", data), lambda *a: steps.append(a)),
    }
    return repo, metrics, steps


# --- version 1: lexicon rules ---------------------------------------------------------------


def test_lexicon_tokens_split_words_contractions_and_breaks():
    assert text.lexicon_tokens("Loss-making unit ISN'T up, it\u2019s down 5.2 %") == [
        "loss", "making", "unit", "is", "n't", "up", ",", "it", "s", "down", "5.2"]
    assert text.lexicon_tokens("cannot; can't") == ["cannot", ";", "ca", "n't"]


SMALL = text.Lexicon(
    ["rose", "fell", "narrowed", "up", "loss", "costs", "strong", "not", "sharply", "slightly", "from", "up to", "but"],
    ["up", "down", "down", "up", "inv", "inv", "pol", "neg", "int", "int", "blk", "pol", "brk"],
    [1.0, 1.0, 0.8, 1.0, -1.0, 0.0, 0.7, 3, 1.5, 0.5, 0, 0, 0],
    margin=0.75, beta=2.0)


@pytest.mark.parametrize("sentence, score", [
    ("Sales rose", 1.0),
    ("Sales fell", -1.0),
    ("The operating loss narrowed", 0.8),  # a falling inv noun is good news
    ("Costs rose", -1.0),
    ("Net loss", -1.0),  # an untied inv noun scores its value
    ("Sales were up from a loss", 0.0),  # 'from' blocks the tie: up (+1) and loss (-1)
    ("The loss for the year rose", -1.0),  # 3 tokens between: still tied
    ("The loss for the full year rose", 0.0),  # 4 tokens between: not tied
    ("Sales did not rise", 0.0),  # 'rise' is not in SMALL
    ("Sales did not rose", -1.0),
    ("Not that sales, they rose", 1.0),  # the comma ends the negation
    ("Not a b c rose", 1.0),  # beyond the negator's 3 tokens
    ("Not a b rose", -1.0),
    ("Sales rose sharply", 1.5),
    ("Sharply a b c rose", 1.0),  # intensifiers reach over at most 2 tokens
    ("Sharply a b rose", 1.5),
    ("Sales rose , sharply", 1.0),
    ("Sales rose slightly but costs fell", 0.5 + 1.0),
    ("strong sales rose up to 5", 0.7 + 1.0),  # 'up to' shields 'up'
    ("Sales did not rise sharply, not strong", 0.0 - 0.7),
    ("", 0.0),
])
def test_lexicon_rules(sentence, score):
    assert SMALL.score(sentence) == pytest.approx(score, abs=1e-12)


def test_margin_softmax_is_neutral_inside_the_margin():
    m, beta = 0.75, 2.0
    p = np.asarray(text.margin_softmax(np.array([0.0, m, -m, 5.0, -5.0, 0.3]), m, beta))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert p[0, 0] == pytest.approx(p[0, 2]) and p[0, 1] == pytest.approx(1 / (1 + 2 * math.exp(-beta * m)))
    assert p[1, 2] == pytest.approx(p[1, 1]) and p[2, 0] == pytest.approx(p[2, 1])
    np.testing.assert_allclose(p[3], p[4][::-1], rtol=0, atol=1e-15)
    assert p.argmax(axis=1).tolist()[3:] == [2, 0, 1]


def test_shipped_version_1_is_the_compiled_lexicon():
    shipped = MODELS / "sentiment" / "1"
    weights = load_weights(shipped)
    want = st.lexicon_weights(st.DEFAULT_LEXICON)
    assert sorted(weights) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(weights[k], want[k], err_msg=k)
    card = load_card(shipped)
    assert card["model"] == "sentiment" and card["version"] == 1
    # Trained on nothing but the lexicon, whose exact bytes the card pins.
    assert [d.get("sha256") for d in card["data"]] == [file_sha256(st.DEFAULT_LEXICON)]
    assert len(weights["terms"]) >= 300


@pytest.mark.parametrize("sentence, label", [
    ("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .", "positive"),
    ("The company swung to a net profit of EUR 2.1 mn from a net loss a year earlier .", "positive"),
    ("Operating loss narrowed to EUR 0.4 mn .", "positive"),
    ("Net sales decreased by 9.4 % to EUR 949.2 mn .", "negative"),
    ("The company slipped to an operating loss of EUR 2.6 million .", "negative"),
    ("Costs increased sharply in the second quarter .", "negative"),
    ("Sales did not increase in 2009 .", "negative"),
    ("The company filed a lawsuit after the bankruptcy of its supplier .", "negative"),
    ("The plant is located in Oulu and employs 120 people .", "neutral"),
    ("The office will be set up in Tallinn .", "neutral"),
])
def test_shipped_lexicon_reads_financial_news(sentence, label):
    lexicon = text.Lexicon.from_weights(load_weights(MODELS / "sentiment" / "1"))
    probs = np.asarray(lexicon.probs([sentence]))[0]
    assert st.LABELS[int(probs.argmax())] == label, lexicon.contributions(sentence)


def test_lexicon_file_errors(tmp_path):
    bad = tmp_path / "lex.tsv"
    bad.write_text("# comment\nrose\tup\t1\nrose\tpol\t1\n")
    with pytest.raises(ModelError, match=r"lex.tsv:3: term 'rose' repeats line 2"):
        st.read_lexicon(bad)
    bad.write_text("rose\tupward\t1\n")
    with pytest.raises(ModelError, match="kind 'upward'"):
        st.read_lexicon(bad)
    bad.write_text("rose up\n")
    with pytest.raises(ModelError, match="TERM<TAB>KIND<TAB>VALUE"):
        st.read_lexicon(bad)
    with pytest.raises(ModelError, match="lexicon not found"):
        st.read_lexicon(tmp_path / "missing.tsv")


# --- inputs ---------------------------------------------------------------------------------


def test_decode_texts_refuses_bad_rows_by_index():
    assert text.decode_texts([b"Profit rose", "Sales fell", "Umsatz \u2013 stieg".encode()]) == [
        "Profit rose", "Sales fell", "Umsatz \u2013 stieg"]
    with pytest.raises(text.TextError, match="row 1 is empty"):
        text.decode_texts([b"ok", b""])
    with pytest.raises(text.TextError, match="row 0 is empty"):
        text.decode_texts([b" \n\t"])
    with pytest.raises(text.TextError, match=r"row 1 is not valid UTF-8 \(byte 0xff at offset 3\)"):
        text.decode_texts([b"ok", b"abc\xffdef"])
    with pytest.raises(text.TextError, match="row 0 has 20001 bytes"):
        text.decode_texts([b"a" * 20_001])
    with pytest.raises(text.TextError, match="row 0 is int"):
        text.decode_texts([3])


def test_read_labelled_formats_and_errors(tmp_path):
    pb = tmp_path / "pb.txt"
    pb.write_bytes("Mail me@home , sales fell .@negative\n\nEUR \xe9 up@Positive\n".encode("latin-1"))
    csv_file = tmp_path / "s.csv"
    csv_file.write_text('id,text,label\n1,"Profit rose, again",positive\n2,The plant is in Oulu,neutral\n')
    texts, labels = st.read_labelled([pb, csv_file])
    assert texts == ["Mail me@home , sales fell .", "EUR \xe9 up", "Profit rose, again", "The plant is in Oulu"]
    assert labels.tolist() == [0, 2, 2, 1]
    (tmp_path / "bad.txt").write_text("ok@positive\nSales fell@bearish\n")
    with pytest.raises(ModelError, match=r"bad.txt:2: label 'bearish' is not one of negative, neutral, positive"):
        st.read_labelled([tmp_path / "bad.txt"])
    (tmp_path / "nolabel.txt").write_text("Sales fell\n")
    with pytest.raises(ModelError, match=r"nolabel.txt:1: expected 'sentence@label'"):
        st.read_labelled([tmp_path / "nolabel.txt"])
    with pytest.raises(ModelError, match="not found"):
        st.read_labelled([tmp_path / "missing.csv"])


# --- version 2: TF-IDF + logistic regression -------------------------------------------------

ODD = ["zzz qqq xyzzy", "PROFIT ROSE PROFIT ROSE profit rose", "Umsatz \u2013 stieg 5 %", "a", "net sales net sales",
       "Operating profit rose , operating loss narrowed , and the outlook is strong ."]


def test_tfidf_export_equals_scikit_learn(phrasebank):
    texts, labels, train_idx, test_idx = phrasebank
    sub = train_idx[:700]  # a slice keeps the fit quick; the arithmetic is what is checked
    pipe = st.fit_tfidf([texts[i] for i in sub], labels[sub], seed=0, c=30.0, min_df=1)
    model = text.TfidfLinear(st.export_tfidf(pipe))
    check = [texts[i] for i in test_idx] + ODD
    x = pipe.named_steps["tfidf"].transform(check).toarray()
    cols, values = model.features(check)
    dense = np.zeros((len(check), x.shape[1] + 1))
    np.put_along_axis(dense, cols, values, axis=1)
    np.testing.assert_allclose(dense[:, :-1], x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(model.logits(check)), pipe.decision_function(check), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(model.probs(check)), st.reference_proba(pipe, check), rtol=0, atol=1e-9)
    assert not dense[len(check) - len(ODD)].any()  # no vocabulary n-gram: intercepts alone


def test_train_writes_both_versions_with_metrics(trained_repo, phrasebank):
    repo, metrics, steps = trained_repo
    texts, labels, train_idx, test_idx = phrasebank
    assert steps[-1][0] == steps[-1][1]  # the progress line reached its total
    card = load_card(repo / "sentiment" / "2")
    assert card["data"] == [{"path": shared_file(PHRASEBANK).name, "sha256": file_sha256(shared_file(PHRASEBANK))}]
    assert card["seed"] == 0 and card["metrics"]["n_test"] == test_idx.size
    f1 = metrics[2]["macro_f1"]
    # Held-out macro-F1: both models far above the majority class.
    assert f1["majority"] < 0.3 and f1["tfidf_v2"] > 0.75 and f1["lexicon_v1"] > 0.75, f1
    assert metrics[2]["export_max_abs_diff"] <= 1e-9
    weights = load_weights(repo / "sentiment" / "2")
    assert weights["vocabulary"].dtype.kind == "U" and weights["coef"].shape == (3, weights["vocabulary"].size)
    assert (repo / "sentiment" / "2" / "weights.npz").stat().st_size < 2_000_000
    # Version 1 from the committed lexicon equals the shipped weights.
    for k, v in load_weights(MODELS / "sentiment" / "1").items():
        np.testing.assert_array_equal(load_weights(repo / "sentiment" / "1")[k], v)


def test_training_is_seeded(trained_repo, tmp_path):
    repo, _, _ = trained_repo
    again = temp_repo(tmp_path, st.NAME, [1, 2])
    st.train(train_args(tmp_path, st, "--version", "2", "--data", str(shared_file(PHRASEBANK))), lambda *a: None)
    first, second = load_weights(repo / "sentiment" / "2"), load_weights(again / "sentiment" / "2")
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)


def test_version_1_with_data_is_evaluated_not_trained(tmp_path):
    repo = temp_repo(tmp_path, st.NAME, [1, 2])
    data = str(shared_file(PHRASEBANK))
    metrics = st.train(train_args(tmp_path, st, "--version", "1", "--data", data), lambda *a: None)
    card = load_card(repo / "sentiment" / "1")
    assert [d["sha256"] for d in card["data"]] == [file_sha256(st.DEFAULT_LEXICON)]
    assert card["evaluation"]["data"][0]["sha256"] == file_sha256(data)
    assert metrics["macro_f1"]["lexicon_v1"] > metrics["macro_f1"]["majority"] + 0.4


def test_train_errors(tmp_path):
    temp_repo(tmp_path, st.NAME, [1, 2])
    with pytest.raises(ModelError, match="versions 1 \\(lexicon\\), 2 \\(tfidf-logreg\\); got --version 3"):
        st.train(train_args(tmp_path, st, "--version", "3"), lambda *a: None)
    with pytest.raises(ModelError, match="pass --data FILE"):
        st.train(train_args(tmp_path, st, "--version", "2"), lambda *a: None)
    one_class = tmp_path / "one.txt"
    one_class.write_text("Sales rose@positive\nProfit rose@positive\nIt is in Oulu@neutral\n")
    with pytest.raises(ModelError, match="at least 2 sentences"):
        st.train(train_args(tmp_path, st, "--version", "2", "--data", str(one_class)), lambda *a: None)


# --- served by tritonserver -----------------------------------------------------------------


async def _infer(client, rows: list[bytes], version: str) -> dict[str, np.ndarray]:
    x = np.array(rows, dtype=object).reshape(-1, 1)
    inp = grpcclient.InferInput("TEXT", list(x.shape), "BYTES")
    inp.set_data_from_numpy(x)
    res = await client.infer("sentiment", [inp], model_version=version,
                             outputs=[grpcclient.InferRequestedOutput(n) for n in ("PROBS", "LABEL")])
    return {n: res.as_numpy(n) for n in ("PROBS", "LABEL")}


async def test_triton_outputs_equal_the_reference(trained_repo, phrasebank, triton_server):
    repo, _, _ = trained_repo
    texts, _, _, test_idx = phrasebank
    sentences = [texts[i] for i in test_idx[:160]] + ODD
    rows = [s.encode() for s in sentences]
    # Reference forwards: version 1 the lexicon in-process; version 2 scikit-learn's predict_proba
    # of a pipeline refitted exactly as training did (same data, split, seed).
    v1_ref = np.asarray(text.Lexicon.from_weights(load_weights(repo / "sentiment" / "1")).probs(sentences))
    all_texts, labels, train_idx, _ = phrasebank
    pipe = st.fit_tfidf([all_texts[i] for i in train_idx], labels[train_idx], seed=0)
    v2_ref = st.reference_proba(pipe, sentences)
    server = triton_server(repo, ["sentiment"])
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for version, ref in (("1", v1_ref), ("2", v2_ref)):
            # Uneven requests sent together, so the dynamic batcher merges some of them.
            cuts = [0, 1, 9, 40, 41, 100, len(rows)]
            parts = await asyncio.gather(*[_infer(client, rows[a:b], version) for a, b in zip(cuts, cuts[1:])])
            probs = np.concatenate([p["PROBS"] for p in parts])
            label = np.concatenate([p["LABEL"] for p in parts])
            assert probs.dtype == np.float64 and label.dtype == np.int32 and label.shape == (len(rows), 1)
            np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-6, err_msg=f"version {version}")
            np.testing.assert_array_equal(label[:, 0], probs.argmax(axis=1))
        # Without a version Triton serves the highest one.
        latest = await _infer(client, rows[:5], "")
        np.testing.assert_allclose(latest["PROBS"], v2_ref[:5], rtol=0, atol=1e-6)


async def test_triton_bad_text_fails_alone(trained_repo, triton_server):
    repo, _, _ = trained_repo
    server = triton_server(repo, ["sentiment"])
    good = [b"Operating profit rose sharply .", b"The plant is in Oulu ."]
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for version in ("1", "2"):
            results = await asyncio.gather(
                _infer(client, good, version), _infer(client, [b"Sales fell", b""], version),
                _infer(client, [b"caf\xe9 sales"], version), _infer(client, [b"   "], version),
                _infer(client, good, version), return_exceptions=True)
            assert isinstance(results[1], InferenceServerException) and "row 1 is empty" in str(results[1])
            assert isinstance(results[2], InferenceServerException)
            assert "'TEXT': row 0 is not valid UTF-8 (byte 0xe9 at offset 3)" in str(results[2])
            assert isinstance(results[3], InferenceServerException) and "row 0 is empty" in str(results[3])
            for ok in (results[0], results[4]):
                assert isinstance(ok, dict), results
                assert ok["LABEL"][:, 0].tolist() == [2, 1], (version, ok)
