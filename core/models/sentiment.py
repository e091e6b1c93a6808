"""Sentiment of financial news sentences: negative, neutral or positive.

Two versions share the Triton model ``sentiment`` (input ``TEXT``: one UTF-8 sentence per row;
outputs ``PROBS`` (negative, neutral, positive) and ``LABEL``, the argmax):

- Version 1, ``lexicon``: our own weighted financial lexicon
  (``triton_models/sentiment/1/lexicon.tsv``, written for the project and licensed with it) with
  negation, intensifiers and "good when it falls" nouns ("loss narrowed"), scored by
  ``triton_models/_runtime/text.py``'s `Lexicon`. No training data: ``tickmesh models train
  sentiment --version 1`` compiles the lexicon into ``weights.npz`` and writes the card; both are
  committed. With ``--data`` it also measures the lexicon on a held-out split (recorded in the
  card as an evaluation, not as training data).
- Version 2, ``tfidf-logreg``: scikit-learn TF-IDF (word 1-2-grams, sublinear tf, l2 norm) and
  multinomial logistic regression, trained by ``tickmesh models train sentiment --version 2
  --data LABELLED``. The only labelled data at hand, the Financial PhraseBank, is
  non-commercial, so these weights are never shipped (``.gitignore``); the model.py is.

Labelled files: Financial PhraseBank lines ``sentence@label``, or a CSV with columns ``text`` and
``label``; labels ``negative``/``neutral``/``positive``.

Example:
    >>> texts, labels = read_labelled(["financial_phrasebank_allagree.txt"])  # doctest: +SKIP
    >>> train_idx, test_idx = holdout_split(labels, 0.2, seed=0)  # doctest: +SKIP
    >>> pipe = fit_tfidf([texts[i] for i in train_idx], labels[train_idx], seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import io
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from core.errors import ModelError
from core.models._repo import DEFAULT_REPO, file_sha256, save_version, version_dir

__all__ = [
    "NAME",
    "LABELS",
    "ARCHITECTURES",
    "DEFAULT_LEXICON",
    "LEXICON_MARGIN",
    "LEXICON_BETA",
    "add_arguments",
    "train",
    "text_runtime",
    "read_labelled",
    "holdout_split",
    "read_lexicon",
    "lexicon_weights",
    "fit_tfidf",
    "export_tfidf",
    "reference_proba",
    "macro_f1",
    "evaluate",
]

NAME = "sentiment"
LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
# What each version directory holds (its model.py loads exactly this).
ARCHITECTURES: dict[int, str] = {1: "lexicon", 2: "tfidf-logreg"}
DEFAULT_LEXICON = DEFAULT_REPO / NAME / "1" / "lexicon.tsv"
# Version 1's softmax (see text.margin_softmax): a sentence stays neutral until |score| passes
# 0.75, i.e. one plain directional fact ("sales rose", 1.0) makes it polar, a weak hint (0.5)
# does not; beta 2 gives such a single fact ~0.6 probability rather than certainty.
LEXICON_MARGIN = 0.75
LEXICON_BETA = 2.0
# Version 2's exported forward must equal scikit-learn's predict_proba to this.
_EXPORT_TOLERANCE = 1e-9


@functools.cache
def text_runtime():
    """The model-side module ``triton_models/_runtime/text.py``, imported from its file.

    ``triton_models`` is not an installed package (Triton imports it from the repository), so the
    app side loads the same file to use the very code the server runs.
    """
    path = DEFAULT_REPO / "_runtime" / "text.py"
    spec = importlib.util.spec_from_file_location("tickmesh_triton_runtime_text", path)
    if spec is None or not path.is_file():
        raise ModelError(f"model runtime not found: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tickmesh models train sentiment``."""
    parser.add_argument("--data", nargs="+", metavar="FILE", default=[],
                        help="labelled sentences: PhraseBank 'sentence@label' lines or CSV text,label "
                             "(version 2 trains on them; version 1 is only evaluated on them)")
    parser.add_argument("--lexicon", default=str(DEFAULT_LEXICON),
                        help="lexicon TSV compiled into version 1 and used as its baseline "
                             "(default: the committed triton_models/sentiment/1/lexicon.tsv)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="fraction of the data held out (stratified, seeded) for metrics (default 0.2)")
    parser.add_argument("--c", type=float, default=30.0,
                        help="version 2: inverse L2 regularization strength of the logistic regression (default 30)")
    parser.add_argument("--min-df", type=int, default=2,
                        help="version 2: keep n-grams seen in at least this many training sentences (default 2)")


# --- data ----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ModelError(f"labelled data file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # The PhraseBank as distributed is ISO-8859-1.
        return raw.decode("latin-1")


def _label(value: str, where: str) -> int:
    key = value.strip().lower()
    if key not in LABELS:
        raise ModelError(f"{where}: label {value.strip()!r} is not one of {', '.join(LABELS)}")
    return LABELS.index(key)


def read_labelled(paths: Sequence[str | Path]) -> tuple[list[str], np.ndarray]:
    """Reads labelled sentences.

    A file whose first line is a CSV header with ``text`` and ``label`` columns is read as CSV;
    any other file as PhraseBank lines ``sentence@label`` (split at the last ``@``).

    Returns:
        ``(texts, labels)``: the sentences and (n,) int64 class indices into `LABELS`.

    Raises:
        ModelError: a file is missing, a line has no label, a label is unknown, a sentence is
            empty, or there is no data.
    """
    texts: list[str] = []
    labels: list[int] = []
    for p in map(Path, paths):
        content = _read_text(p)
        first = content.split("\n", 1)[0]
        header = [h.strip().lower() for h in next(csv.reader([first]), [])]
        if "text" in header and "label" in header:
            reader = csv.DictReader(io.StringIO(content))
            reader.fieldnames = [h.strip().lower() for h in reader.fieldnames or []]
            rows = ((f"{p}:{n}", r.get("text") or "", r.get("label") or "") for n, r in enumerate(reader, 2))
        else:
            rows = []
            for n, line in enumerate(content.splitlines(), 1):
                if not line.strip():
                    continue
                if "@" not in line:
                    raise ModelError(f"{p}:{n}: expected 'sentence@label' (or a CSV with columns text,label)")
                text, label = line.rsplit("@", 1)
                rows.append((f"{p}:{n}", text, label))
        for where, text, label in rows:
            if not text.strip():
                raise ModelError(f"{where}: empty sentence")
            labels.append(_label(label, where))
            texts.append(text.strip())
    if not texts:
        raise ModelError(f"no labelled sentences in {', '.join(map(str, paths)) or '(no files given)'}")
    return texts, np.asarray(labels, dtype=np.int64)


def holdout_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of row indices into (train, held-out)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < holdout < 1.0:
        raise ModelError(f"--holdout must be between 0 and 1, got {holdout}")
    counts = np.bincount(labels, minlength=len(LABELS))
    if (counts < 2).any():
        raise ModelError(f"every class needs at least 2 sentences to split; counts "
                         f"{dict(zip(LABELS, counts.tolist()))}")
    idx = np.arange(labels.shape[0])
    try:
        train_idx, test_idx = train_test_split(idx, test_size=holdout, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise ModelError(f"cannot hold out {holdout} of {idx.size} sentences: {exc}") from None
    return np.sort(train_idx), np.sort(test_idx)


# --- version 1: lexicon -------------------------------------------------------------------


def read_lexicon(path: str | Path = DEFAULT_LEXICON) -> tuple[list[str], list[str], list[float]]:
    """Reads a lexicon TSV (``TERM<TAB>KIND<TAB>VALUE``, ``#`` comments).

    Terms are re-tokenized the way sentences are ("loss-making" -> "loss making").

    Returns:
        ``(terms, kinds, values)``.

    Raises:
        ModelError: missing file, malformed line, unknown kind, repeated term.
    """
    text = text_runtime()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"lexicon not found: {path}")
    terms, kinds, values, seen = [], [], [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ModelError(f"{path}:{n}: expected TERM<TAB>KIND<TAB>VALUE, got {line!r}")
        tokens = text.lexicon_tokens(parts[0])
        term, kind = " ".join(tokens), parts[1].strip()
        if not tokens or any(t in ".,;:!?" for t in tokens):
            raise ModelError(f"{path}:{n}: term {parts[0]!r} has no words or holds punctuation")
        if kind not in text.KINDS:
            raise ModelError(f"{path}:{n}: kind {kind!r} is not one of {', '.join(text.KINDS)}")
        try:
            value = float(parts[2])
        except ValueError:
            raise ModelError(f"{path}:{n}: value {parts[2]!r} is not a number") from None
        if term in seen:
            raise ModelError(f"{path}:{n}: term {term!r} repeats line {seen[term]}")
        seen[term] = n
        terms.append(term)
        kinds.append(kind)
        values.append(value)
    if not terms:
        raise ModelError(f"lexicon {path} has no entries")
    return terms, kinds, values


def lexicon_weights(path: str | Path = DEFAULT_LEXICON, margin: float = LEXICON_MARGIN,
                    beta: float = LEXICON_BETA) -> dict[str, np.ndarray]:
    """Version 1's weights: the lexicon as arrays plus the softmax margin and sharpness."""
    terms, kinds, values = read_lexicon(path)
    return {
        "terms": np.array(terms, dtype=str),
        "kinds": np.array(kinds, dtype=str),
        "values": np.array(values, dtype=np.float64),
        "margin": np.array(margin, dtype=np.float64),
        "beta": np.array(beta, dtype=np.float64),
    }


# --- version 2: TF-IDF + logistic regression ----------------------------------------------


def fit_tfidf(texts: Sequence[str], labels: np.ndarray, *, seed: int, c: float = 30.0, min_df: int = 2):
    """Fits the scikit-learn pipeline (TfidfVectorizer -> LogisticRegression), seeded.

    Classes are weighted inversely to their frequency (the target is macro-F1, and negatives are
    the rarest class). C=30 and min_df=2 were chosen by 4-fold cross-validation inside the
    training part of the PhraseBank split (macro-F1 0.84 vs 0.82 at C=10, 0.76 at C=1).

    Returns:
        The fitted ``sklearn.pipeline.Pipeline``; its ``predict_proba`` is the reference forward.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    present = np.unique(labels)
    if present.tolist() != list(range(len(LABELS))):
        raise ModelError(f"training data must hold all of {LABELS}; it has "
                         f"{[LABELS[i] for i in present]}")
    if c <= 0 or min_df < 1:
        raise ModelError(f"--c must be > 0 and --min-df >= 1 (got {c}, {min_df})")
    pipe = Pipeline([
        ("tfidf", TfidfVectorizer(lowercase=True, ngram_range=(1, 2), sublinear_tf=True, norm="l2",
                                  min_df=min_df, dtype=np.float64)),
        ("logreg", LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)),
    ])
    try:
        pipe.fit(list(texts), np.asarray(labels))
    except ValueError as exc:  # e.g. min_df leaves no vocabulary
        raise ModelError(f"cannot fit the TF-IDF model: {exc}") from None
    return pipe


def export_tfidf(pipe) -> dict[str, np.ndarray]:
    """Version 2's weights from a fitted `fit_tfidf` pipeline (plain arrays, no pickles)."""
    vec, lr = pipe.named_steps["tfidf"], pipe.named_steps["logreg"]
    if lr.classes_.tolist() != list(range(len(LABELS))) or lr.coef_.shape[0] != len(LABELS):
        raise ModelError(f"expected a 3-class multinomial model, got classes {lr.classes_.tolist()}")
    if vec.analyzer != "word" or vec.preprocessor is not None or vec.tokenizer is not None \
            or vec.stop_words is not None or vec.strip_accents is not None or not vec.lowercase \
            or vec.norm != "l2" or not vec.use_idf:
        raise ModelError("the exported TF-IDF supports only lowercase word n-grams, l2 norm and idf")
    return {
        "vocabulary": np.array(vec.get_feature_names_out().tolist(), dtype=str),
        "idf": np.asarray(vec.idf_, dtype=np.float64),
        "coef": np.asarray(lr.coef_, dtype=np.float64),
        "intercept": np.asarray(lr.intercept_, dtype=np.float64),
        "token_pattern": np.array(vec.token_pattern, dtype=str),
        "ngram_range": np.array(vec.ngram_range, dtype=np.int64),
        "sublinear_tf": np.array(bool(vec.sublinear_tf)),
    }


def reference_proba(pipe, texts: Sequence[str]) -> np.ndarray:
    """The reference forward pass: scikit-learn's ``predict_proba``, (n, 3) float64."""
    return np.asarray(pipe.predict_proba(list(texts)), dtype=np.float64)


# --- evaluation -----------------------------------------------------------------------------


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of the three classes' F1 (a class never predicted scores 0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(len(LABELS))), average="macro", zero_division=0))


def evaluate(texts: Sequence[str], labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, *,
             lexicon: Mapping[str, np.ndarray], pipe=None) -> dict[str, object]:
    """Macro-F1 and accuracy on the held-out rows: majority class, lexicon (v1), TF-IDF (v2).

    Args:
        texts, labels: all sentences and their classes.
        train_idx, test_idx: the split (`holdout_split`); the majority class is the training
            rows' most frequent one.
        lexicon: version 1 weights (`lexicon_weights`).
        pipe: a fitted `fit_tfidf` pipeline, or None to leave version 2 out.
    """
    y = labels[test_idx]
    test_texts = [texts[i] for i in test_idx]
    majority = int(np.bincount(labels[train_idx], minlength=len(LABELS)).argmax())
    preds = {"majority": np.full(y.shape, majority),
             "lexicon_v1": np.asarray(text_runtime().Lexicon.from_weights(lexicon).probs(test_texts)).argmax(axis=1)}
    if pipe is not None:
        preds["tfidf_v2"] = reference_proba(pipe, test_texts).argmax(axis=1)
    return {
        "n_train": int(train_idx.size),
        "n_test": int(test_idx.size),
        "test_class_counts": dict(zip(LABELS, np.bincount(y, minlength=len(LABELS)).tolist())),
        "macro_f1": {k: round(macro_f1(y, p), 4) for k, p in preds.items()},
        "accuracy": {k: round(float((p == y).mean()), 4) for k, p in preds.items()},
    }


# --- training command -----------------------------------------------------------------------


def _data_sources(paths: Sequence[str]) -> list[dict[str, str]]:
    return [{"path": str(p), "sha256": file_sha256(p)} for p in paths]


def train(args: argparse.Namespace, progress: Callable[..., None]) -> dict:
    """``tickmesh models train sentiment``: writes version 1 (lexicon) or 2 (TF-IDF).

    Returns:
        The metrics (also written to the card).

    Raises:
        ModelError: unknown version, missing/bad data or lexicon.
    """
    arch = ARCHITECTURES.get(args.version)
    if arch is None:
        raise ModelError(f"sentiment has versions {', '.join(f'{v} ({a})' for v, a in ARCHITECTURES.items())}; "
                         f"got --version {args.version}")
    path = version_dir(args.repo, NAME, args.version)
    lexicon = lexicon_weights(args.lexicon)
    if arch == "lexicon":
        return _train_lexicon(args, path, lexicon, progress)
    return _train_tfidf(args, path, lexicon, progress)


def _train_lexicon(args, path: Path, lexicon: Mapping[str, np.ndarray], progress) -> dict:
    total = 3
    progress(1, total, f"lexicon: {lexicon['terms'].size} entries")
    kinds, counts = np.unique(lexicon["kinds"], return_counts=True)
    metrics: dict[str, object] = {"entries": int(lexicon["terms"].size),
                                  "entries_by_kind": dict(zip(kinds.tolist(), counts.tolist()))}
    extra: dict[str, object] = {
        "architecture": "lexicon: weighted financial terms, negation, intensifiers, margin softmax",
        "labels": list(LABELS),
        "inputs": {"TEXT": "one UTF-8 sentence per row"},
        "outputs": {"PROBS": list(LABELS), "LABEL": "argmax of PROBS"},
        "lexicon_licence": "written for tickmesh, licensed with the project",
        "softmax": {"margin": float(lexicon["margin"]), "beta": float(lexicon["beta"])},
    }
    if args.data:
        texts, labels = read_labelled(args.data)
        train_idx, test_idx = holdout_split(labels, args.holdout, args.seed)
        ev = evaluate(texts, labels, train_idx, test_idx, lexicon=lexicon)
        extra["evaluation"] = {"data": _data_sources(args.data), "holdout": args.holdout, "seed": args.seed,
                               "stratified": True, "test_class_counts": ev["test_class_counts"],
                               "note": "metrics measured on this data's held-out part; the weights come "
                                       "from the lexicon alone"}
        metrics.update({"macro_f1": ev["macro_f1"], "accuracy": ev["accuracy"], "n_test": ev["n_test"]})
    progress(2, total, "evaluated" if args.data else "no evaluation data")
    save_version(path, lexicon, seed=args.seed, data=[str(args.lexicon)], metrics=metrics, extra=extra)
    progress(3, total, f"saved {path}")
    return metrics


def _train_tfidf(args, path: Path, lexicon: Mapping[str, np.ndarray], progress) -> dict:
    if not args.data:
        raise ModelError("version 2 trains on labelled sentences: pass --data FILE "
                         "(PhraseBank 'sentence@label' lines or CSV text,label)")
    total = 5
    texts, labels = read_labelled(args.data)
    train_idx, test_idx = holdout_split(labels, args.holdout, args.seed)
    progress(1, total, f"{len(texts)} sentences, {test_idx.size} held out")
    pipe = fit_tfidf([texts[i] for i in train_idx], labels[train_idx], seed=args.seed, c=args.c,
                     min_df=args.min_df)
    progress(2, total, f"fitted, vocabulary {len(pipe.named_steps['tfidf'].vocabulary_)}")
    ev = evaluate(texts, labels, train_idx, test_idx, lexicon=lexicon, pipe=pipe)
    progress(3, total, f"macro-F1 {ev['macro_f1']['tfidf_v2']}")
    weights = export_tfidf(pipe)
    # The exported arrays must reproduce scikit-learn before they are written.
    check = [texts[i] for i in test_idx]
    diff = float(np.abs(np.asarray(text_runtime().TfidfLinear(weights).probs(check))
                        - reference_proba(pipe, check)).max())
    if not diff <= _EXPORT_TOLERANCE:
        raise ModelError(f"exported TF-IDF forward differs from scikit-learn by {diff:.3g}")
    progress(4, total, f"export checked ({diff:.1e})")
    metrics = {"macro_f1": ev["macro_f1"], "accuracy": ev["accuracy"], "n_train": ev["n_train"],
               "n_test": ev["n_test"], "vocabulary": int(weights["vocabulary"].size),
               "export_max_abs_diff": diff}
    extra = {
        "architecture": f"tfidf(word 1-2-grams, sublinear tf, l2, min_df={args.min_df}) + "
                        f"multinomial logistic regression (C={args.c}, balanced class weights)",
        "labels": list(LABELS),
        "inputs": {"TEXT": "one UTF-8 sentence per row"},
        "outputs": {"PROBS": list(LABELS), "LABEL": "argmax of PROBS"},
        "split": {"holdout": args.holdout, "seed": args.seed, "stratified": True,
                  "trained_on": "the training part only"},
        "test_class_counts": ev["test_class_counts"],
        "licence_note": "weights trained on the data above carry its licence (the Financial "
                        "PhraseBank is CC BY-NC-SA 3.0): never commit them",
    }
    save_version(path, weights, seed=args.seed, data=list(args.data), metrics=metrics, extra=extra)
    progress(5, total, f"saved {path}")
    return metrics
