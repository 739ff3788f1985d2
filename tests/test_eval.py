"""`vlbench eval vqa|caption`: official file formats in, official numbers out, one clear line for a bad file.

VQA expectations are worked out by hand from the official definition (vqaEval.py); caption
expectations come from calling pycocoevalcap's Cider and Bleu directly on the same tokens.
"""

import json
import shutil

import pytest
from typer.testing import CliRunner

from vlbench.cli import app
from vlbench.config import UserError
from vlbench.evaluate import evaluate_captions, evaluate_vqa
from vlbench.metrics import simple_tokenize

HAS_JAVA = shutil.which("java") is not None
runner = CliRunner()

# (question_id, answer_type, the 10 annotator answers, prediction, accuracy by hand)
# accuracy = mean over the 10 leave-one-out subsets of min(1, matches / 3): with m matches among
# the 10, m subsets see m - 1 and 10 - m see m
VQA_CASES = [
    (101, "yes/no", ["yes"] * 10, "yes", 1.0),
    (102, "yes/no", ["yes"] * 10, "yes.", 0.0),  # identical answers: no normalisation at all
    (103, "yes/no", ["yes"] * 9 + ["no"], "Yes!", 1.0),  # "!" -> space, lower-cased: 9 matches
    (104, "number", ["two", "two", "2"] + ["3"] * 7, "2", 0.9),  # number words -> digits: 3 matches
    (105, "number", ["2"] * 10, "two", 0.0),  # identical answers: "two" is not "2"
    (106, "other", ["the dog", "the dog", "dog"] + ["cat"] * 7, "a dog", 0.9),  # articles dropped: 3
    (107, "other", ["hot dog", "hot-dog"] + ["sandwich"] * 8, "hot dog", 0.6),  # "-" -> space: 2 matches
    (108, "other", ["dont know"] + ["sandwich"] * 9, "don't know", 0.3),  # "dont" -> "don't": 1 match
]
# by answer type: yes/no (1 + 0 + 1) / 3, number (0.9 + 0) / 2, other (0.9 + 0.6 + 0.3) / 3;
# overall 4.7 / 8 = 0.5875; x100 and rounded to 2 decimals
VQA_EXPECTED = {"overall": 58.75, "perAnswerType": {"number": 45.0, "other": 60.0, "yes/no": 66.67}}


def vqa_annotations(cases) -> dict:
    """The official v2_mscoco_*_annotations.json layout."""
    return {
        "info": {"description": "fixture"},
        "license": {},
        "data_subtype": "val2014",
        "annotations": [
            {
                "question_type": "what",
                "multiple_choice_answer": answers[0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)
                ],
                "image_id": 1000 + qid,
                "answer_type": answer_type,
                "question_id": qid,
            }
            for qid, answer_type, answers, _, _ in cases
        ],
    }


def write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.fixture
def vqa_files(tmp_path):
    annotations = write(tmp_path / "v2_mscoco_val2014_annotations.json", vqa_annotations(VQA_CASES))
    predictions = write(tmp_path / "results.json", [{"question_id": q, "answer": p} for q, _, _, p, _ in VQA_CASES])
    return tmp_path, predictions, annotations


def test_vqa_matches_hand_computed_official_numbers(vqa_files):
    _, predictions, annotations = vqa_files
    assert evaluate_vqa(predictions, annotations) == {**VQA_EXPECTED, "questions": len(VQA_CASES)}


def test_vqa_cli_prints_as_the_official_script(vqa_files):
    _, predictions, annotations = vqa_files
    result = runner.invoke(app, ["eval", "vqa", "--predictions", predictions, "--annotations", annotations])
    assert result.exit_code == 0, result.output
    assert "Overall Accuracy is: 58.75\n" in result.stdout
    assert "yes/no : 66.67\n" in result.stdout and "number : 45.00\n" in result.stdout
    result = runner.invoke(app, ["eval", "vqa", "--predictions", predictions, "--annotations", annotations, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {**VQA_EXPECTED, "questions": len(VQA_CASES)}


def test_vqa_rounds_halves_away_from_zero_as_python2(tmp_path):
    # 1 of 32 right: 100 / 32 = 3.125 exactly; the script's Python 2 round() gives 3.13 (Python 3's: 3.12)
    cases = [(i, "yes/no", ["yes"] * 10, "yes" if i == 0 else "no", None) for i in range(32)]
    annotations = write(tmp_path / "a.json", vqa_annotations(cases))
    predictions = write(tmp_path / "p.json", [{"question_id": q, "answer": p} for q, _, _, p, _ in cases])
    assert evaluate_vqa(predictions, annotations)["overall"] == 3.13


def test_vqa_questions_file_selects_a_subset(vqa_files):
    tmp_path, _, annotations = vqa_files
    subset = {101, 103, 104}  # (1 + 1 + 0.9) / 3
    predictions = write(
        tmp_path / "sub.json", [{"question_id": q, "answer": p} for q, _, _, p, _ in VQA_CASES if q in subset]
    )
    official = {"questions": [{"image_id": 1000 + q, "question": "?", "question_id": q} for q in sorted(subset)]}
    vlt5 = [{"question_id": q, "img_id": "x", "sent": "?", "label": {}} for q in sorted(subset)]  # karpathy_test.json
    for questions in (write(tmp_path / "q.json", official), write(tmp_path / "karpathy_test.json", vlt5)):
        scores = evaluate_vqa(predictions, annotations, questions)
        assert scores == {"overall": 96.67, "perAnswerType": {"number": 90.0, "yes/no": 100.0}, "questions": 3}
    # without --questions the same predictions leave annotated questions unanswered
    with pytest.raises(UserError, match="no prediction for 5 of the 8 ids"):
        evaluate_vqa(predictions, annotations)


def test_caption_scores_equal_pycocoevalcap_on_the_same_tokens(tmp_path):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {
        391895: ["A man riding a horse on the beach.", "A person rides a brown horse.", "Horse and rider near the sea."],
        522418: ["A woman cutting a large white cake.", "Someone cuts a cake with a knife.", "A cake being sliced."],
        184613: ["Two dogs play in the snow!", "Dogs running through snow.", "A black dog and a white dog outside."],
    }
    train_refs = ["A man riding a horse.", "A dog on the beach."]  # another split: must not change the scores
    predictions = {391895: "a man riding a horse on a beach", 522418: "a woman cutting a cake", 184613: "two dogs play in snow"}
    coco = {
        "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in refs],
        "annotations": [{"image_id": i, "id": 10 * i + k, "caption": c} for i in refs for k, c in enumerate(refs[i])],
    }
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "imgid": n, "split": "test", "cocoid": i,
             "sentids": [], "sentences": [{"tokens": [], "raw": c, "imgid": n, "sentid": 0} for c in refs[i]]}
            for n, i in enumerate(refs)
        ]
        + [{"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "imgid": 3, "split": "train",
            "cocoid": 9, "sentids": [], "sentences": [{"raw": c} for c in train_refs]}],
        "dataset": "coco",
    }
    results = write(tmp_path / "captions_results.json", [{"image_id": i, "caption": c} for i, c in predictions.items()])
    files = [write(tmp_path / "captions_val2014.json", coco), write(tmp_path / "dataset_coco.json", karpathy)]

    def reference_scores(gts, res):
        return {"CIDEr": Cider().compute_score(gts, res)[0], "BLEU-4": Bleu(4).compute_score(gts, res, verbose=0)[0][3]}

    gts = {i: [" ".join(simple_tokenize(c)) for c in refs[i]] for i in refs}
    res = {i: [" ".join(simple_tokenize(predictions[i]))] for i in refs}
    expected = {"simple": reference_scores(gts, res)}
    if HAS_JAVA:
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": c} for c in refs[i]] for i in refs})
        res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in refs})
        expected["ptb"] = reference_scores(gts, res)
    assert expected["simple"]["CIDEr"] > 0.3 and expected["simple"]["BLEU-4"] > 0.2  # not a vacuous comparison
    for name, want in expected.items():
        for references in files:
            got = evaluate_captions(results, references, tokenizer=name)
            assert got == {**want, "tokenizer": name, "images": 3}, (name, references)

    # through the CLI: JSON unscaled, the human output x100 and naming the tokenizer
    args = ["eval", "caption", "--predictions", results, "--references", files[1]]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores) == {"CIDEr", "BLEU-4", "tokenizer", "images"}
    assert scores["tokenizer"] == ("ptb" if HAS_JAVA else "simple")
    assert scores["CIDEr"] == pytest.approx(expected[scores["tokenizer"]]["CIDEr"])
    result = runner.invoke(app, [*args, "--tokenizer", "simple"])
    assert result.exit_code == 0
    assert f"CIDEr: {100 * expected['simple']['CIDEr']:.2f}\n" in result.stdout
    assert f"BLEU-4: {100 * expected['simple']['BLEU-4']:.2f}\n" in result.stdout
    assert "pure-Python tokenizer" in result.stdout


def assert_one_line_error(args, *fragments):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


GOOD_PREDICTIONS = [{"question_id": q, "answer": p} for q, _, _, p, _ in VQA_CASES]
BAD_VQA_PREDICTIONS = {
    "empty": ("", "empty file"),
    "json": ("[{]", "invalid JSON"),
    "top": ({"question_id": 101, "answer": "yes"}, "should be a list"),
    "no-records": ([], "no predictions"),
    "no-answer": (GOOD_PREDICTIONS[:-1] + [{"question_id": 108}], "[7]: missing field 'answer'"),
    "id-type": (GOOD_PREDICTIONS[:-1] + [{"question_id": "108", "answer": "no"}],
                "[7]: field 'question_id' should be an integer, got a string"),
    "answer-type": (GOOD_PREDICTIONS[:-1] + [{"question_id": 108, "answer": 3}],
                    "[7]: field 'answer' should be a string, got an integer"),
    "duplicate": (GOOD_PREDICTIONS[:-1] + [{"question_id": 101, "answer": "no"}],
                  "[7]: question_id 101 appears twice (also in [0])"),
    "unknown": (GOOD_PREDICTIONS + [{"question_id": 999, "answer": "no"}], "1 prediction(s) for ids not in",
                "(e.g. question_id 999)"),
    "missing": (GOOD_PREDICTIONS[1:], "no prediction for 1 of the 8 ids in", "(e.g. question_id 101)"),
}


@pytest.mark.parametrize("case", BAD_VQA_PREDICTIONS)
def test_vqa_bad_predictions_are_one_line_errors(vqa_files, case):
    content, *fragments = BAD_VQA_PREDICTIONS[case]
    tmp_path, _, annotations = vqa_files
    predictions = write(tmp_path / "bad_results.json", content)
    assert_one_line_error(
        ["eval", "vqa", "--predictions", predictions, "--annotations", annotations], "bad_results.json", *fragments
    )


def test_vqa_bad_annotation_and_question_files_are_one_line_errors(vqa_files):
    tmp_path, predictions, annotations = vqa_files
    args = ["eval", "vqa", "--predictions", predictions, "--annotations"]
    assert_one_line_error([*args, str(tmp_path / "missing.json")], "missing.json", "file not found")
    good = vqa_annotations(VQA_CASES)
    bad = {
        "list": ([], "should be an object with an 'annotations' list"),
        "no_answers": ({"annotations": [dict(good["annotations"][0], answers=[])]},
                       "annotations[0]: expected 10 annotator answers, got 0"),
        "nine_answers": ({"annotations": [dict(good["annotations"][0], answers=good["annotations"][0]["answers"][:9])]},
                         "annotations[0]: expected 10 annotator answers, got 9"),
        "no_type": ({"annotations": [{k: v for k, v in good["annotations"][0].items() if k != "answer_type"}]},
                    "annotations[0]: missing field 'answer_type'"),
        "answer_type": ({"annotations": [dict(good["annotations"][0],
                                              answers=[{"answer": 1}] + good["annotations"][0]["answers"][1:])]},
                        "annotations[0]: answers[0]: field 'answer' should be a string"),
        "no_image": ({"annotations": [{k: v for k, v in good["annotations"][0].items() if k != "image_id"}]},
                     "annotations[0]: missing field 'image_id'"),
        "same_records": ({"annotations": [dict(good["annotations"][0], answers=[{"answer": "yes"}] * 10)]},
                         "answers[1] repeats an earlier answer record"),
        "repeated_id": ({"annotations": good["annotations"] + good["annotations"][:1]}, "question_id 101 appears twice"),
    }
    for name, (content, fragment) in bad.items():
        assert_one_line_error([*args, write(tmp_path / f"{name}.json", content)], f"{name}.json", fragment)
    with_questions = [*args, annotations, "--questions"]
    assert_one_line_error([*with_questions, write(tmp_path / "q.json", {"questions": [{"question_id": 5}]})],
                          "q.json", "1 question_id(s) not in", "5")
    assert_one_line_error([*with_questions, write(tmp_path / "q2.json", {"q": []})], "q2.json", "'questions' list")


def test_caption_bad_inputs_are_one_line_errors(tmp_path):
    karpathy = {"images": [{"cocoid": 1, "filename": "a.jpg", "split": "test", "sentences": [{"raw": "a dog"}]},
                           {"cocoid": 2, "filename": "b.jpg", "split": "val", "sentences": [{"raw": "a cat"}]}]}
    references = write(tmp_path / "dataset_coco.json", karpathy)
    coco = write(tmp_path / "captions.json", {"annotations": [{"image_id": 1, "caption": "a dog"}]})
    good = write(tmp_path / "ok.json", [{"image_id": 1, "caption": "a dog"}])
    args = ["eval", "caption", "--tokenizer", "simple", "--predictions"]
    cases = [
        ([{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}], references,
         "1 prediction(s) for ids not in the 'test' split", "image_id 2"),
        ([{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}], references, "image_id 1 appears twice"),
        ([{"image_id": 1}], references, "[0]: missing field 'caption'"),
        ({"1": "a dog"}, coco, "should be a list"),
    ]
    for content, refs, *fragments in cases:
        assert_one_line_error([*args, write(tmp_path / "results.json", content), "--references", refs],
                              "results.json", *fragments)
    bad_refs = {
        "neither": ({"imgs": []}, "neither COCO captions format"),
        "no_raw": ({"images": [dict(karpathy["images"][0], sentences=[{"tokens": ["a"]}])]}, "sentences[0]: missing field 'raw'"),
        "cocoid": ({"images": [dict(karpathy["images"][0], cocoid="1")]}, "images[0]: field 'cocoid' should be an integer"),
        "no_image_id": ({"annotations": [{"caption": "a dog"}]}, "annotations[0]: missing field 'image_id'"),
    }
    for name, (content, fragment) in bad_refs.items():
        assert_one_line_error([*args, good, "--references", write(tmp_path / f"{name}.json", content)], f"{name}.json", fragment)
    assert_one_line_error([*args, good, "--references", references, "--split", "restval"],
                          "no images in split 'restval' (splits present: test, val)")
    assert_one_line_error([*args, good, "--references", coco, "--split", "test"], "--split", "COCO captions format")
    # a Karpathy image with no prediction
    assert_one_line_error([*args, good, "--references", references, "--split", "val"], "not in the 'val' split")
    assert_one_line_error(["eval", "caption", "--tokenizer", "nltk", "--predictions", good, "--references", coco],
                          "--tokenizer")


def test_caption_without_java_uses_and_names_the_pure_python_tokenizer(tmp_path, monkeypatch):
    references = write(tmp_path / "captions.json", {"annotations": [{"image_id": 1, "caption": "A dog, running."},
                                                                     {"image_id": 2, "caption": "a cat"}]})
    results = write(tmp_path / "results.json", [{"image_id": 1, "caption": "a dog running"},
                                                {"image_id": 2, "caption": "a cat"}])
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no java on PATH
    assert evaluate_captions(results, references)["tokenizer"] == "simple"
    result = runner.invoke(app, ["eval", "caption", "--predictions", results, "--references", references])
    assert result.exit_code == 0 and "pure-Python tokenizer" in result.stdout
    assert_one_line_error(["eval", "caption", "--tokenizer", "ptb", "--predictions", results, "--references", references],
                          "--tokenizer: ptb needs java")
