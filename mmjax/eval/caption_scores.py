"""COCO caption metrics: BLEU-1…4 and CIDEr-D, as the COCO caption evaluation (pycocoevalcap) computes them.

Each image has one candidate caption and one or more references. Captions are first tokenized
(:func:`tokenize`), then scored on their n-grams (n = 1…4):

- ``bleu_n``: corpus BLEU (Papineni et al. 2002) as pycocoevalcap's ``Bleu`` scores it: the clipped n-gram
  matches and the n-grams of every caption summed over the corpus, the geometric mean of the precisions up to
  n, and a brevity penalty against the reference length closest to each candidate's (the shorter on a tie).
  Precisions are ``(matches + 1e-15) / (n-grams + 1e-9)``, as there, so a corpus without any 4-gram match
  scores ~0, not NaN.
- ``cider``: CIDEr-D (Vedantam et al. 2015; pycocoevalcap's ``Cider``): per image, the mean over n of the
  cosine similarity of TF-IDF n-gram vectors — the candidate's clipped to each reference's, the document
  frequencies counted over the references of the evaluated images — with a Gaussian length penalty
  (σ = 6), averaged over the references and times 10; the metric is the mean over images.

``tokenize`` stands in for the Stanford PTB tokenizer (CoreNLP 3.4.1, ``-lowerCase``) that pycocoevalcap runs
through Java, then drops PTB's punctuation tokens as pycocoevalcap does: lower case; the clitics ``n't``,
``'s``, ``'re``, ``'ve``, ``'ll``, ``'d``, ``'m`` and the halves of ``cannot``, ``gonna``, ``wanna``… split
off; words kept whole with inner hyphens, periods, slashes and apostrophes (``black-and-white``, ``o'clock``,
``and/or``, ``3.5``) and numbers with inner commas and colons (``1,000``, ``5:30``); initialisms, common
abbreviations and single letters keep their period (``t.v.``, ``a.m.``, ``st.``, ``etc.``, ``j. smith``);
brackets become ``-lrb-``, ``-rrb-``, ``-lcb-``, ``-rcb-``, ``-lsb-``, ``-rsb-`` and stay (pycocoevalcap drops
only the upper-case forms, which ``-lowerCase`` never writes); typographic quotes, dashes and ellipses are
dropped as their ASCII forms are.
tests/test_eval_captioning.py compares it with the Java tokenizer where Java is installed. It differs on rare
forms: ``rock'n'roll``, ``y'all``, ``'90s``, ``no.`` before a number, ``etc...``, ``<`` and ``>`` next to
words, and symbols such as emoji, which PTB drops and ``tokenize`` keeps.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

MAX_N = 4
CIDER_SIGMA = 6.0
_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's smoothing of the BLEU precisions and length ratio
# PTB's tokens for punctuation, which pycocoevalcap drops after tokenizing ("!!", "?!" stay)
_DROPPED = frozenset(["''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_NAMED = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}  # lower-cased PTB
_TYPOGRAPHIC = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "…": "...", "–": "--", "—": "--"})
_TWO_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "gimme": "gim me",
              "lemme": "lem me"}
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st mt ft ave rd blvd jr sr gen sgt capt col lt gov sen rep co corp "
                           "inc ltd bros vs etc jan feb mar apr jun jul aug sep sept oct nov dec".split())
_CLITIC = re.compile(r"(?<=\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(r"""
    n't | '(?:s|re|ve|ll|d|m)\b                      # clitics, split off their words first
  | [a-z](?:\.[a-z])+\.?(?![a-z])                     # initialisms: t.v., u.s.a., e.g., a.m
  | (?P<word>\w+(?:(?:[-.'/]|(?<=\d)[,:](?=\d))\w+)*)(?P<period>\.(?!\.))?
                                                      # black-and-white, o'clock, tie/scarf, 3.5, 1,000, 5:30
  | \.{2,} | -{2,} | [!?]+ | \S
""", re.VERBOSE)

Tokens = Sequence[str]


def tokenize(caption: str) -> list[str]:
    """The words of `caption` as pycocoevalcap's PTB tokenizer leaves them (see the module docstring)."""
    text = _CLITIC.sub(r" \1", caption.lower().translate(_TYPOGRAPHIC))
    tokens = []
    for match in _TOKEN.finditer(text):
        word, period = match["word"], match["period"]
        if word is None:
            token = match[0]
            tokens.append("..." if token.startswith("..") else "--" if token.startswith("--") else token)
        elif period and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):  # "st.", "j. smith"
            tokens.append(word + period)
        else:
            tokens += _TWO_WORDS.get(word, word).split() + ([period] if period else [])
    return [_NAMED.get(token, token) for token in tokens if token not in _DROPPED]


def ngram_counts(words: Tokens, max_n: int = MAX_N) -> Counter:
    """How often each n-gram (a tuple of words, n = 1…max_n) occurs in `words`."""
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


def bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = MAX_N) -> list[float]:
    """Corpus `[BLEU-1, …, BLEU-max_n]` of one tokenized candidate per image against its references."""
    _check_corpus(candidates, references)
    matches, guesses = np.zeros(max_n), np.zeros(max_n)
    length = reference_length = 0
    for candidate, image_references in zip(candidates, references):
        most = Counter()
        for reference in image_references:
            most |= ngram_counts(reference, max_n)  # each n-gram's largest count in one reference
        for gram, count in ngram_counts(candidate, max_n).items():
            matches[len(gram) - 1] += min(count, most[gram])
        guesses += [max(0, len(candidate) - n + 1) for n in range(1, max_n + 1)]
        length += len(candidate)
        reference_length += min((abs(len(r) - len(candidate)), len(r)) for r in image_references)[1]
    precisions = (matches + _TINY) / (guesses + _SMALL)
    scores = np.exp(np.cumsum(np.log(precisions)) / np.arange(1, max_n + 1))
    ratio = (length + _TINY) / (reference_length + _SMALL)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [float(score * brevity) for score in scores]


def cider_d(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = MAX_N,
            sigma: float = CIDER_SIGMA) -> np.ndarray:
    """CIDEr-D of each image `[N]` (the metric is their mean), its document frequencies from `references`."""
    _check_corpus(candidates, references)
    counts = [[ngram_counts(r, max_n) for r in image_references] for image_references in references]
    document_frequency = Counter(gram for image in counts for gram in set().union(*image))
    log_images = math.log(len(references))

    def tf_idf(words: Tokens, grams: Counter) -> tuple[list[dict], np.ndarray, int]:
        vectors = [{} for _ in range(max_n)]
        for gram, count in grams.items():
            vectors[len(gram) - 1][gram] = count * (log_images - math.log(max(1, document_frequency[gram])))
        norms = np.array([math.sqrt(sum(v * v for v in vector.values())) for vector in vectors])
        return vectors, norms, len(words)  # pycocoevalcap counts bigrams: the same δ wherever the overlap is > 0

    scores = np.zeros(len(candidates))
    for i, (candidate, image_references) in enumerate(zip(candidates, references)):
        vectors, norms, length = tf_idf(candidate, ngram_counts(candidate, max_n))
        total = np.zeros(max_n)
        for reference, reference_counts in zip(image_references, counts[i]):
            reference_vectors, reference_norms, reference_length = tf_idf(reference, reference_counts)
            overlap = np.array([sum(min(value, reference_vectors[n].get(gram, 0.0)) * reference_vectors[n].get(
                gram, 0.0) for gram, value in vectors[n].items()) for n in range(max_n)], float)
            both = (norms > 0) & (reference_norms > 0)
            overlap[both] /= norms[both] * reference_norms[both]
            total += overlap * math.exp(-(length - reference_length) ** 2 / (2 * sigma ** 2))
        scores[i] = 10.0 * total.mean() / len(image_references)
    return scores


def caption_scores(captions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """`bleu_1` … `bleu_4` and `cider` of one caption per image against that image's reference captions."""
    candidates = [tokenize(caption) for caption in captions]
    tokenized = [[tokenize(reference) for reference in image_references] for image_references in references]
    scores = {f"bleu_{n}": value for n, value in enumerate(bleu(candidates, tokenized), 1)}
    return scores | {"cider": float(cider_d(candidates, tokenized).mean())}


def _check_corpus(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidate captions for {len(references)} images' references")
    if not candidates:
        raise ValueError("no captions to score")
    empty = next((i for i, image_references in enumerate(references) if not image_references), None)
    if empty is not None:
        raise ValueError(f"image {empty} has no reference captions")
