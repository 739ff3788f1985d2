import shutil

import pytest

from vlbench.metrics import (
    accuracy,
    caption_scores,
    exact_match,
    process_punctuation,
    python2_round,
    simple_tokenize,
    vqa_accuracy,
    vqa_official_accuracy,
    vqa_score_summary,
)

HAS_JAVA = shutil.which("java") is not None


def test_vqa_leave_one_out_math():
    # 2 of 10 match: the 2 subsets leaving out a match have 1 (1/3), the other 8 have 2 (2/3)
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    # 3 of 10: 3 subsets have 2 matches, 7 have 3
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("green", ["red"] + ["blue"] * 9) == 0.0


def test_vqa_normalisation_when_answers_differ():
    gt = ["2"] * 9 + ["3"]
    assert vqa_accuracy("two", gt) == 1.0  # number words become digits
    assert vqa_accuracy(" 2\n", gt) == 1.0
    gt = ["yes"] * 9 + ["no"]
    assert vqa_accuracy("yes.", gt) == 1.0  # period not before a digit is stripped
    assert vqa_accuracy("Yes!", gt) == 1.0  # lower-cased, "!" replaced by a space
    gt = ["dog"] * 9 + ["cat"]
    assert vqa_accuracy("the dog", gt) == 1.0  # articles dropped
    assert vqa_accuracy("a dog", gt) == 1.0
    gt = ["don't know"] * 9 + ["no"]
    assert vqa_accuracy("dont know", gt) == 1.0  # contractions restored
    gt = ["1.5"] * 9 + ["2"]
    assert vqa_accuracy("1.5", gt) == 1.0  # a period before a digit stays


def test_vqa_no_normalisation_when_answers_identical():
    # the script's quirk: with 10 identical answers only whitespace is handled
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("  yes\t", ["yes"] * 10) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("the dog", ["dog"] * 10) == 0.0


def test_vqa_punctuation_quirks():
    assert process_punctuation("hot-dog") == "hot dog"  # no space around "-": replaced by a space
    assert process_punctuation("hot - dog") == "hot  dog"  # spaced: deleted
    assert process_punctuation("1,000 - 2") == "1000  2"  # any digit,digit deletes every mark
    assert process_punctuation("2.") == "2"  # lookahead, not lookbehind: "2." loses its period


def test_vqa_summary_and_simple_accuracies():
    summary = vqa_score_summary([1.0, 0.0, 0.6, 1.0], ["yes/no", "yes/no", "number", "other"])
    assert summary == pytest.approx({"overall": 0.65, "yes/no": 0.5, "number": 0.6, "other": 1.0})
    assert exact_match(["yes", " no", "red"], ["yes", "no", "blue"]) == pytest.approx(2 / 3)
    assert accuracy(["true", "false"], ["true", "true"]) == 0.5


def test_vqa_official_accuracy_rounds_as_the_script():
    # round(100 * float(sum(acc)) / len(acc), 2) under Python 2: exact halves go away from zero
    assert python2_round(3.125) == 3.13 and round(3.125, 2) == 3.12
    assert python2_round(2.675) == 2.67  # the float 2.675 lies just below the half
    scores = vqa_official_accuracy([1.0, 0.0, 0.9], ["yes/no", "yes/no", "number"])
    assert scores == {"overall": 63.33, "perAnswerType": {"number": 90.0, "yes/no": 50.0}}


REFERENCES = {
    "a": ["a red circle and a blue square", "there is a blue square and a red circle", "two shapes"],
    "b": ["a green triangle", "there is a green triangle", "one shape on a dark background"],
    "c": ["a white square and a white circle", "an image of a white circle and a white square", "two shapes"],
}
PREDICTIONS = {"a": "a red circle and a blue square", "b": "a green circle", "c": "two white shapes"}


def test_caption_scores_equal_pycocoevalcap_on_same_tokens():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    scores = caption_scores(PREDICTIONS, REFERENCES, tokenizer="simple")
    gts = {k: [" ".join(simple_tokenize(r)) for r in v] for k, v in REFERENCES.items()}
    res = {k: [" ".join(simple_tokenize(p))] for k, p in PREDICTIONS.items()}
    assert scores["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert scores["BLEU-4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert scores["tokenizer"] == "simple"
    assert caption_scores(PREDICTIONS, REFERENCES, tokenizer="auto")["tokenizer"] == ("ptb" if HAS_JAVA else "simple")


@pytest.mark.skipif(not HAS_JAVA, reason="PTBTokenizer needs java")
def test_ptb_caption_scores_equal_pycocoevalcaps_own_pipeline():
    """pycocoevalcap's COCOEvalCap tokenizes references and predictions in two PTB calls; vlbench in
    one (one Java start): the scores must not change."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{"caption": r} for r in v] for k, v in REFERENCES.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": p}] for k, p in PREDICTIONS.items()})
    scores = caption_scores(PREDICTIONS, REFERENCES, tokenizer="ptb")
    assert scores["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert scores["tokenizer"] == "ptb"


def test_caption_scores_reject_mismatched_ids():
    with pytest.raises(ValueError):
        caption_scores({"a": "x"}, REFERENCES, tokenizer="simple")


def test_simple_tokenizer_basics():
    assert simple_tokenize("A man, riding a horse.") == ["a", "man", "riding", "a", "horse"]
    assert simple_tokenize("He doesn't (really) know!") == ["he", "does", "n't", "really", "know"]


@pytest.mark.skipif(not HAS_JAVA, reason="PTBTokenizer needs java")
def test_simple_tokenizer_matches_ptb():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    sentences = [
        "A man riding a horse on the beach.",
        "Two dogs, one black and one white, play in the snow!",
        "A child's toy sits on a table; it's red.",
        "The cat doesn't like the dog -- at all...",
        'A sign that says "stop" near a well-lit road?',
        "a red circle and a blue square",
    ]
    ptb = PTBTokenizer().tokenize({str(i): [{"caption": s}] for i, s in enumerate(sentences)})
    for i, sentence in enumerate(sentences):
        assert " ".join(simple_tokenize(sentence)) == ptb[str(i)][0]
