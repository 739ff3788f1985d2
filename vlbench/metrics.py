"""Metrics with their official definitions.

VQA accuracy is a faithful Python 3 port of the official evaluation script
(GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py), quirks included.
Caption metrics call pycocoevalcap's Cider (CIDEr-D) and Bleu on PTB-tokenized text.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

# Each metric's version, for the run's fingerprint (vlbench.fingerprint): bump one when its numbers
# could change, and the runs it scored are trained and scored again instead of reused.
VERSIONS = {"vqa_accuracy": 1, "exact_match": 1, "accuracy": 1, "caption_scores": 1}

# ---- VQA (vqaEval.py) ------------------------------------------------------------------------

# Copied verbatim from vqaEval.py, including its odd entries ("somebody'd" -> "somebodyd").
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ["a", "an", "the"]
# "(?!<=\d)" is a negative *lookahead* for the literal "<=" (the script meant a lookbehind):
# so a period is removed unless a digit follows, even after a digit ("2." -> "2").
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PUNCTUATION = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!"]  # no "'" and no ":", as in the script


def process_punctuation(text: str) -> str:
    out = text
    comma_in_number = COMMA_STRIP.search(text) is not None  # the script searches again for every mark
    for p in PUNCTUATION:
        # the test looks at the *input* text; any "digit,digit" anywhere deletes every mark
        if (p + " " in text or " " + p in text) or comma_in_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the script passes re.UNICODE positionally, where sub() takes `count`: at most 32 periods go
    return PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@functools.lru_cache(maxsize=1 << 16)
def normalise_answer(text: str) -> str:
    """Both normalisation steps in the script's order; cached, as annotators' answers repeat a lot."""
    return process_digit_article(process_punctuation(text))


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, gt_answers: list[str]) -> float:
    """Accuracy of one answer against the (10) annotator answers, as vqaEval.py computes it.

    Normalisation (punctuation, number words, articles, contractions) is applied to the prediction
    and the answers only when the answers are not all identical; otherwise only whitespace is
    handled, so "yes." scores 0 against ten "yes". Accuracy is the mean over the leave-one-out
    subsets of min(1, matches / 3); matching is case-sensitive, as in the script.
    """
    gt_answers = [_strip(a) for a in gt_answers]
    prediction = _strip(prediction)
    if len(set(gt_answers)) > 1:
        gt_answers = [normalise_answer(a) for a in gt_answers]
        prediction = normalise_answer(prediction)
    hits = [a == prediction for a in gt_answers]
    accuracies = [min(1.0, (sum(hits) - hit) / 3) for hit in hits]  # matches among the other answers
    return sum(accuracies) / len(accuracies)


def _by_answer_type(accuracies: list[float], answer_types: list[str]) -> dict[str, list[float]]:
    by_type: dict[str, list[float]] = defaultdict(list)
    for accuracy, answer_type in zip(accuracies, answer_types, strict=True):
        by_type[answer_type].append(accuracy)
    return dict(sorted(by_type.items()))


def vqa_score_summary(accuracies: list[float], answer_types: list[str]) -> dict[str, float]:
    """Overall and per-answer-type mean accuracy, as fractions.

    The official script reports round(100 * mean, 2); reports should show these values that way.
    """
    summary = {"overall": sum(accuracies) / len(accuracies)}
    summary.update({t: sum(v) / len(v) for t, v in _by_answer_type(accuracies, answer_types).items()})
    return summary


def python2_round(x: float, digits: int = 2) -> float:
    """round() as the Python 2 that vqaEval.py was written for does it: the float's exact binary value,
    halves away from zero. Python 3 rounds halves to even: round(3.125, 2) is 3.12 there, 3.13 here."""
    return float(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _official_percent(accuracies: list[float]) -> float:
    total = 0.0
    for accuracy in accuracies:  # left to right, as Python 2's sum() (3.12's sum() compensates)
        total += accuracy
    return python2_round(100 * total / len(accuracies))  # the script's round(100*float(sum(acc))/len(acc), 2)


def vqa_official_accuracy(accuracies: list[float], answer_types: list[str]) -> dict:
    """Overall and per-answer-type accuracy exactly as vqaEval.py's setAccuracy reports them (x100,
    2 decimals), from per-question accuracies in the order the script visits them (annotation file)."""
    by_type = _by_answer_type(accuracies, answer_types)
    return {"overall": _official_percent(accuracies), "perAnswerType": {t: _official_percent(v) for t, v in by_type.items()}}


# ---- exact match and accuracy ---------------------------------------------------------------


def exact_match(predictions: list[str], answers: list[str]) -> float:
    """Fraction of predictions equal to their answer (GQA: the string as predicted, stripped)."""
    return sum(p.strip() == a for p, a in zip(predictions, answers, strict=True)) / len(answers)


def accuracy(predictions: list[str], labels: list[str]) -> float:
    """Fraction of predicted labels equal to the true label (NLVR2)."""
    return sum(p == label for p, label in zip(predictions, labels, strict=True)) / len(labels)


# ---- captions (pycocoevalcap) ---------------------------------------------------------------

# The tokens pycocoevalcap's PTBTokenizer wrapper drops after tokenizing.
PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                    ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_CLITIC = re.compile(r"(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# A word (keeping inner hyphens, apostrophes, periods and slashes, as PTB does), a clitic,
# "...", "--", or any other single non-space character.
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-'./]\w+)*|\.\.\.|--|\S")
_BRACKETS = set("()[]{}")


def simple_tokenize(text: str) -> list[str]:
    """A pure-Python stand-in for PTBTokenizer -preserveLines -lowerCase plus the wrapper's filter.

    Lower-cases, splits off clitics ("don't" -> "do n't") and punctuation, then drops the tokens
    the COCO wrapper drops (brackets and double quotes become -LRB-/``/'' in PTB and are dropped
    too). It matches PTB on plain caption text, not on every corner (abbreviations like "mr.").
    """
    text = _CLITIC.sub(r"\1 \2", text.lower().replace("\n", " "))
    return [t for t in _TOKEN.findall(text) if t not in PTB_PUNCTUATIONS and t not in _BRACKETS and t != '"']


@contextlib.contextmanager
def _silenced_stderr():
    """The PTB tokenizer's Java process reports its speed on the inherited stderr at every call."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tokenize(texts: dict[str, list[str]], tokenizer: str) -> dict[str, list[str]]:
    if tokenizer == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with _silenced_stderr():
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in texts.items()})
    return {k: [" ".join(simple_tokenize(c)) for c in v] for k, v in texts.items()}


def caption_scores(predictions: dict[str, str], references: dict[str, list[str]], tokenizer: str = "auto") -> dict:
    """CIDEr-D and BLEU-4 (unscaled) over the whole split at once.

    pycocoevalcap's Cider takes document frequencies from the references it is given, so the
    score of a split is not the mean of its shards' scores. tokenizer: "ptb" (Java), "simple",
    or "auto" (ptb when java is on PATH).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if tokenizer == "auto":
        tokenizer = "ptb" if shutil.which("java") else "simple"
    if tokenizer not in ("ptb", "simple"):
        raise ValueError(f"unknown caption tokenizer {tokenizer!r}")
    if set(predictions) != set(references):
        raise ValueError("predictions and references must cover the same ids")
    ids = sorted(references)
    # one tokenizer call for both sides: PTB starts a Java process per call
    texts = {("ref", i): list(references[i]) for i in ids} | {("pred", i): [predictions[i]] for i in ids}
    tokens = _tokenize(texts, tokenizer)
    gts = {i: tokens[("ref", i)] for i in ids}
    res = {i: tokens[("pred", i)] for i in ids}
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr": float(cider), "BLEU-4": float(bleu[3]), "tokenizer": tokenizer}
