"""Forward passes of the text models: a financial lexicon scorer and a TF-IDF linear classifier.

Both turn UTF-8 sentences into class probabilities over `LABELS` (negative, neutral, positive).
Tokenizing is per-sentence Python (strings stay on the host); the arithmetic after it runs on the
array module ``xp`` (NumPy or CuPy, functions both have). Imports nothing but numpy, math and re,
and works with NumPy 1.26 (inside tritonserver) and NumPy 2 (the app, for tests and evaluation).

Lexicon model (version 1 of ``sentiment``): see `Lexicon` for the scoring rules, and
``triton_models/sentiment/1/lexicon.tsv`` for the entries. The sentence score ``s`` becomes
probabilities by a softmax with a neutral margin ``m`` and a sharpness ``beta``::

    logits = [beta * (-s - m), 0, beta * (s - m)]      # negative, neutral, positive
    probs = softmax(logits)

so a sentence is neutral until ``|s| > m``, and at ``s = ±m`` the polar class ties with neutral.

TF-IDF model (version 2): `TfidfLinear` repeats scikit-learn's ``TfidfVectorizer`` (word n-grams,
sublinear tf, smooth idf, l2 norm) and ``LogisticRegression.predict_proba`` (multinomial
softmax) from plain arrays, equal to scikit-learn to ~1e-15.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "LABELS",
    "KINDS",
    "TextError",
    "decode_texts",
    "lexicon_tokens",
    "Lexicon",
    "LexiconItem",
    "margin_softmax",
    "TfidfLinear",
]

# Class order of every text model's PROBS output.
LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
# Lexicon entry kinds (see Lexicon).
KINDS: tuple[str, ...] = ("pol", "up", "down", "inv", "neg", "int", "brk", "blk")
# A request row longer than this is refused: no financial sentence is, and the tokenizers are
# Python loops, so an unbounded row would stall the whole dynamic batch.
MAX_TEXT_BYTES = 20_000

# Lexicon tokens: words (letters only, so hyphens and apostrophes split them), the "n't" of a
# contraction ("isn't" -> "is", "n't"), numbers, and clause-ending punctuation.
_LEXICON_TOKEN = re.compile(r"n't|[^\W\d_]+(?=n't)|[^\W\d_]+|\d+(?:[.,]\d+)*|[.,;:!?]")
_PUNCT_BREAKS = frozenset(".,;:!?")
# Most tokens between an intensifier and the term it scales, and between a direction term and
# the inv noun it is tied to.
_INTENSIFIER_REACH = 2
_TIE_REACH = 3


class TextError(ValueError):
    """A text input row is unusable (empty, not UTF-8, too long, not a string)."""


def decode_texts(rows: Sequence[object], max_bytes: int = MAX_TEXT_BYTES) -> list[str]:
    """Decodes one batch of text rows (bytes from Triton, or str) into strings.

    Args:
        rows: a 1-D sequence of ``bytes`` (UTF-8) or ``str``.
        max_bytes: longest accepted row, in UTF-8 bytes.

    Raises:
        TextError: naming the first bad row: not UTF-8 (with the byte offset), empty or blank,
            longer than ``max_bytes``, or neither bytes nor str.
    """
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, (bytes, bytearray, np.bytes_)):
            raw = bytes(row)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TextError(f"row {i} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                f"{exc.start})") from None
        elif isinstance(row, str):
            text = str(row)
            raw = text.encode("utf-8", "surrogatepass")
        else:
            raise TextError(f"row {i} is {type(row).__name__}, expected UTF-8 bytes or str")
        if not text.strip():
            raise TextError(f"row {i} is empty; send one sentence per row")
        if len(raw) > max_bytes:
            raise TextError(f"row {i} has {len(raw)} bytes, more than the {max_bytes} accepted")
        out.append(text)
    return out


def lexicon_tokens(text: str) -> list[str]:
    """The tokens the lexicon matches: lowercase words, "n't", numbers, punctuation breaks.

    Example:
        >>> lexicon_tokens("Loss-making unit isn't up, it’s down 5.2 %")
        ['loss', 'making', 'unit', 'is', "n't", 'up', ',', 'it', 's', 'down', '5.2']
    """
    return _LEXICON_TOKEN.findall(text.lower().replace("\u2019", "'").replace("\u2018", "'"))


def margin_softmax(scores, margin: float, beta: float, xp=np):
    """Class probabilities (negative, neutral, positive) of lexicon scores.

    Args:
        scores: (n,) sentence scores.
        margin: neutral margin: ``|score| <= margin`` leans neutral.
        beta: sharpness of the softmax.
        xp: array module.

    Returns:
        (n, 3) float64 probabilities, rows summing to 1.
    """
    s = xp.asarray(scores, dtype=xp.float64).reshape(-1, 1)
    z = xp.concatenate([beta * (-s - margin), xp.zeros_like(s), beta * (s - margin)], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LexiconItem(NamedTuple):
    """One lexicon match in a sentence: its entry, token span and clause."""

    term: str
    kind: str
    value: float
    start: int  # first token
    end: int  # one past the last token
    clause: int


class Lexicon:
    """Rule-based sentence scorer over a weighted financial lexicon.

    Scoring of one sentence:

    1. Tokenize (`lexicon_tokens`); from each token, match the longest lexicon entry (up to the
       longest entry's length) and skip past it. Punctuation and ``brk`` entries end a clause.
    2. Tie each direction term (``up``/``down``) to the nearest ``inv`` noun of its clause with
       at most 3 tokens and no ``blk`` entry between them (the one before wins a tie). A
       direction term scores ``+v`` (up) or ``-v`` (down), negated when tied ("loss narrowed"
       is good news). ``pol`` entries and untied ``inv`` nouns score their value.
    3. Each scored term is multiplied by -1 for every negator of its clause whose next
       ``scope`` tokens (the negator's value) hold the term's first token, and by the value of
       every intensifier of its clause with at most 2 tokens between them (before or after).
    4. The sentence score is the sum; `margin_softmax` turns it into probabilities.

    Args:
        terms: entries, words separated by single spaces (as `lexicon_tokens` gives them).
        kinds: each entry's kind, one of `KINDS`.
        values: each entry's value (meaning by kind, see lexicon.tsv).
        margin: neutral margin of `margin_softmax`.
        beta: softmax sharpness of `margin_softmax`.
    """

    def __init__(self, terms: Sequence[str], kinds: Sequence[str], values: Sequence[float], *,
                 margin: float, beta: float) -> None:
        if not (len(terms) == len(kinds) == len(values)):
            raise ValueError(f"lexicon arrays differ in length: {len(terms)}, {len(kinds)}, {len(values)}")
        self.entries: dict[tuple[str, ...], tuple[str, float]] = {}
        for term, kind, value in zip(terms, kinds, values):
            kind, key = str(kind), tuple(str(term).split(" "))
            if kind not in KINDS:
                raise ValueError(f"lexicon entry {term!r} has kind {kind!r}, expected one of {KINDS}")
            if not all(key) or key in self.entries:
                raise ValueError(f"lexicon entry {term!r} is empty or repeated")
            self.entries[key] = (kind, float(value))
        self.max_words = max((len(k) for k in self.entries), default=1)
        self.margin = float(margin)
        self.beta = float(beta)

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray]) -> "Lexicon":
        """Builds the scorer from a version's weights (``terms``, ``kinds``, ``values``,
        ``margin``, ``beta``)."""
        return cls([str(t) for t in weights["terms"]], [str(k) for k in weights["kinds"]],
                   np.asarray(weights["values"], dtype=np.float64).tolist(),
                   margin=float(weights["margin"]), beta=float(weights["beta"]))

    def __repr__(self) -> str:
        return f"Lexicon(entries={len(self.entries)}, margin={self.margin}, beta={self.beta})"

    def items(self, text: str) -> list[LexiconItem]:
        """The lexicon matches of one sentence, in order (punctuation breaks included as ``brk``)."""
        tokens = lexicon_tokens(text)
        out: list[LexiconItem] = []
        clause, i = 0, 0
        while i < len(tokens):
            if tokens[i] in _PUNCT_BREAKS:
                out.append(LexiconItem(tokens[i], "brk", 0.0, i, i + 1, clause))
                clause += 1
                i += 1
                continue
            for n in range(min(self.max_words, len(tokens) - i), 0, -1):
                hit = self.entries.get(tuple(tokens[i:i + n]))
                if hit is not None:
                    kind, value = hit
                    out.append(LexiconItem(" ".join(tokens[i:i + n]), kind, value, i, i + n, clause))
                    if kind == "brk":
                        clause += 1
                    i += n
                    break
            else:
                i += 1
        return out

    def contributions(self, text: str) -> list[tuple[LexiconItem, float]]:
        """Each scored term of a sentence with what it adds to the score (explains `score`)."""
        items = self.items(text)
        tied: set[int] = set()
        base: dict[int, float] = {}
        for j, it in enumerate(items):
            if it.kind not in ("up", "down"):
                continue
            sign = 1.0 if it.kind == "up" else -1.0
            k = self._tied_noun(items, j)
            if k is not None:
                tied.add(k)
                sign = -sign
            base[j] = sign * it.value
        for j, it in enumerate(items):
            if it.kind == "pol" or (it.kind == "inv" and j not in tied):
                base[j] = it.value
        out = []
        for j in sorted(base):
            it, factor = items[j], 1.0
            for m in items:
                if m.clause != it.clause:
                    continue
                if m.kind == "neg" and m.end <= it.start and it.start - m.end < m.value:
                    factor = -factor
                elif m.kind == "int" and max(m.start - it.end, it.start - m.end) <= _INTENSIFIER_REACH:
                    factor *= m.value
            if base[j] != 0.0:
                out.append((it, base[j] * factor))
        return out

    @staticmethod
    def _tied_noun(items: Sequence[LexiconItem], j: int) -> int | None:
        it = items[j]
        best, best_gap = None, _TIE_REACH + 1
        for k, m in enumerate(items):
            if m.kind != "inv" or m.clause != it.clause:
                continue
            gap = it.start - m.end if k < j else m.start - it.end  # tokens strictly between
            lo, hi = (k, j) if k < j else (j, k)
            if gap >= best_gap or any(items[b].kind == "blk" for b in range(lo + 1, hi)):
                continue
            best, best_gap = k, gap
        return best

    def score(self, text: str) -> float:
        """The sentence score: the sum of `contributions` (math.fsum, so order-independent)."""
        return math.fsum(c for _, c in self.contributions(text))

    def probs(self, texts: Sequence[str], xp=np):
        """(n, 3) probabilities (negative, neutral, positive) of decoded sentences."""
        scores = np.array([self.score(t) for t in texts], dtype=np.float64)
        return margin_softmax(xp.asarray(scores), self.margin, self.beta, xp)


class TfidfLinear:
    """TF-IDF features + multinomial logistic regression, as scikit-learn computes them.

    Features: lowercase, tokens by ``token_pattern`` (scikit-learn's default
    ``(?u)\\b\\w\\w+\\b``), word n-grams in ``ngram_range`` joined by one space; the count of
    each vocabulary n-gram ``tf`` becomes ``(1 + ln tf) * idf`` (sublinear) and the row is
    scaled to unit l2 norm. Logits ``x @ coef.T + intercept``; probabilities by softmax.

    Args:
        weights: ``vocabulary`` (V,) unicode, ``idf`` (V,), ``coef`` (3, V), ``intercept`` (3,),
            ``token_pattern`` 0-d unicode, ``ngram_range`` (2,) int, ``sublinear_tf`` 0-d bool.
        xp: array module for the arithmetic.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], xp=np) -> None:
        vocabulary = [str(t) for t in weights["vocabulary"]]
        self.index = {t: i for i, t in enumerate(vocabulary)}
        if len(self.index) != len(vocabulary):
            raise ValueError("vocabulary holds repeated terms")
        coef = np.asarray(weights["coef"], dtype=np.float64)
        idf = np.asarray(weights["idf"], dtype=np.float64)
        intercept = np.asarray(weights["intercept"], dtype=np.float64)
        if coef.shape != (len(LABELS), len(vocabulary)) or idf.shape != (len(vocabulary),) \
                or intercept.shape != (len(LABELS),):
            raise ValueError(f"weight shapes do not fit a vocabulary of {len(vocabulary)}: coef "
                             f"{coef.shape}, idf {idf.shape}, intercept {intercept.shape}")
        self.pattern = re.compile(str(weights["token_pattern"]))
        self.ngram_min, self.ngram_max = (int(n) for n in weights["ngram_range"])
        self.sublinear_tf = bool(weights["sublinear_tf"])
        self.xp = xp
        self.idf = idf
        # One zero column past the vocabulary: padding slots of `features` point at it.
        self.coef_t = xp.asarray(np.concatenate([coef.T, np.zeros((1, coef.shape[0]))]))
        self.intercept = xp.asarray(intercept)

    def __repr__(self) -> str:
        return f"TfidfLinear(vocabulary={len(self.index)}, ngram_range=({self.ngram_min}, {self.ngram_max}))"

    def ngrams(self, text: str) -> list[str]:
        """The word n-grams of one text, in scikit-learn's order (all unigrams, then bigrams...)."""
        tokens = self.pattern.findall(text.lower())
        grams = list(tokens) if self.ngram_min == 1 else []
        for n in range(max(self.ngram_min, 2), min(self.ngram_max, len(tokens)) + 1):
            grams.extend(" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        return grams

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's TF-IDF vector: (column indices ascending, l2-normalized values)."""
        counts: dict[int, int] = {}
        for g in self.ngrams(text):
            j = self.index.get(g)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        cols = np.array(sorted(counts), dtype=np.int64)
        tf = np.array([counts[j] for j in cols.tolist()], dtype=np.float64)
        if self.sublinear_tf:
            tf = np.log(tf) + 1.0
        values = tf * self.idf[cols]
        norm = math.sqrt(float(np.dot(values, values))) if values.size else 0.0
        return cols, (values / norm if norm > 0.0 else values)

    def features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded sparse rows: ``(cols, values)``, both (n, longest row); padding points at the
        zero column past the vocabulary with value 0."""
        rows = [self.row(t) for t in texts]
        width = max([c.size for c, _ in rows] + [1])
        cols = np.full((len(rows), width), len(self.index), dtype=np.int64)
        values = np.zeros((len(rows), width), dtype=np.float64)
        for i, (c, v) in enumerate(rows):
            cols[i, :c.size] = c
            values[i, :c.size] = v
        return cols, values

    def logits(self, texts: Sequence[str]):
        """(n, 3) decision values ``x @ coef.T + intercept``."""
        xp = self.xp
        cols, values = self.features(texts)
        cols, values = xp.asarray(cols), xp.asarray(values)
        return (self.coef_t[cols] * values[:, :, None]).sum(axis=1) + self.intercept

    def probs(self, texts: Sequence[str]):
        """(n, 3) probabilities (negative, neutral, positive), scikit-learn's predict_proba."""
        z = self.logits(texts)
        z = z - z.max(axis=1, keepdims=True)
        e = self.xp.exp(z)
        return e / e.sum(axis=1, keepdims=True)
