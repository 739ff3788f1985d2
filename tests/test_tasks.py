import random
import time
from collections import Counter

import numpy as np
import pytest

from vlbench.config import DataConfig, UserError
from vlbench.tasks import SPLITS, TASKS, build_suite
from vlbench.tasks.scenes import described_scenes, grounded_corpus, pretraining_corpus, render, text_corpus

ALL = tuple(TASKS)


@pytest.fixture(scope="module")
def suite():
    return build_suite(DataConfig(), ALL)


def test_default_suite_is_fast_and_bounded(suite):
    start = time.perf_counter()
    build_suite(DataConfig(), ALL)
    assert time.perf_counter() - start < 2.0
    assert len(suite.image_ids()) < 6000  # 5067 at 1200 / 150 / 1000 examples per task
    for task, splits in suite.examples.items():
        for split in SPLITS:
            assert len(splits[split]) == getattr(DataConfig(), f"n_{split}")
            assert len({e.uid for e in splits[split]}) == len(splits[split])
            assert all(len(e.image_ids) == TASKS[task].images_per_example for e in splits[split])


def test_same_seed_same_suite_other_seed_other_suite(suite):
    again = build_suite(DataConfig(), ALL)
    assert again.examples == suite.examples
    assert again.bank.scenes == suite.bank.scenes
    other = build_suite(DataConfig(seed=1), ALL)
    assert other.examples["vqa"]["train"] != suite.examples["vqa"]["train"]


def test_splits_use_disjoint_images(suite):
    images = {split: set() for split in SPLITS}
    for splits in suite.examples.values():
        for split in SPLITS:
            images[split].update(i for e in splits[split] for i in e.image_ids)
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]


def test_answers_are_balanced(suite):
    vqa = suite.examples["vqa"]["train"]
    yes_no = Counter(e.targets[0] for e in vqa if e.answer_type == "yes/no")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.05 * sum(yes_no.values())
    counts = Counter(e.targets[0] for e in vqa if e.answer_type == "number")
    assert set(counts) == {"0", "1", "2", "3", "4"} and max(counts.values()) < 2 * min(counts.values())
    assert {e.answer_type for e in vqa} == {"yes/no", "number", "other"}
    assert any(min(e.target_scores) < 1 for e in vqa)  # annotators sometimes disagree
    gqa = Counter(e.answers[0] for e in suite.examples["gqa"]["train"] if e.answer_type == "verify_relation")
    assert abs(gqa["yes"] - gqa["no"]) <= 0.1 * sum(gqa.values())
    nlvr = Counter(e.answers[0] for e in suite.examples["nlvr"]["train"])
    assert abs(nlvr["true"] - nlvr["false"]) <= 0.1 * sum(nlvr.values())


def _expected_answer(task, text, scenes):
    """Recompute a vqa or gqa answer from the scene specs, independently of the generators."""
    words = text.rstrip("?").split()
    if task == "vqa":
        (scene,) = scenes
        if text.startswith("how many"):
            return str(scene.count(shape=words[2][:-1]))
        if text.startswith("is there"):
            return "yes" if scene.count(shape=words[4], color=words[3]) else "no"
        if text.startswith("what color"):
            return next(o.color for o in scene.objects if o.shape == words[4])
        return next(o.shape for o in scene.objects if o.color == words[4])
    if task == "gqa":
        (scene,) = scenes
        index = {(o.color, o.shape): i for i, o in enumerate(scene.objects)}
        if text.startswith("is the"):
            a, b = index[(words[2], words[3])], index[(words[7], words[8])]
            return "yes" if (a < b) == (words[4] == "left") else "no"
        side = words[3] if words[0:2] == ["what", "shape"] else words[5]
        i = index[tuple(words[-2:])]
        other = scene.objects[i - 1 if side == "left" else i + 1]
        return other.shape if words[1] == "shape" else other.color


def test_every_example_is_answerable_from_its_scene(suite):
    bank = suite.bank
    for task in ("vqa", "gqa"):
        for e in suite.examples[task]["train"]:
            assert _expected_answer(task, e.text, [bank.scene(i) for i in e.image_ids]) == e.targets[0], e
    for e in suite.examples["nlvr"]["train"]:
        left, right = (bank.scene(i) for i in e.image_ids)
        assert _nlvr_truth(e.text, left, right) == (e.answers[0] == "true"), e
    for e in suite.examples["caption"]["train"]:
        scene = bank.scene(e.image_ids[0])
        for reference in e.answers:
            for o in scene.objects:
                assert f"{o.color} {o.shape}" in reference


def _nlvr_truth(text, left, right):
    words = text.split()
    if text.startswith("the left image has"):
        shape = words[5][:-1]
        if words[4] == "more":
            return left.count(shape) > right.count(shape)
        return left.count(shape) < right.count(shape)
    if text.startswith("both images"):
        return left.count(color=words[4]) > 0 and right.count(color=words[4]) > 0
    if text.startswith("neither"):
        return left.count(words[4]) == 0 and right.count(words[4]) == 0
    scene = left if words[1] == "left" else right  # "the left image contains a circle"
    return scene.count(shape=words[5]) > 0


def test_text_corpus_covers_every_word(suite):
    corpus_words = {w for sentence in text_corpus(200, seed=99) for w in sentence.split()}
    suite_words = set()
    for task, splits in suite.examples.items():
        for examples in splits.values():
            for e in examples:
                for text in (TASKS[task].input_text(e),) + e.targets + e.answers:
                    suite_words.update(text.split())
    assert suite_words <= corpus_words


def test_grounded_corpus_answers_from_the_described_scene():
    """Each grounded sentence is a QA example, its scenes in the tokenizer's words, and its answer; the
    scenes are not the fine-tuning splits' (another data seed)."""
    sentences = grounded_corpus(40, seed=0)
    assert len(sentences) == 3 * 40  # vqa, gqa, nlvr; captions are in text_corpus already
    corpus_words = {w for sentence in text_corpus(200, seed=99) for w in sentence.split()}
    assert {w for s in sentences for w in s.split()} <= corpus_words
    data = DataConfig(seed=1000, n_train=40, n_val=0, n_test=0, image_size=8)
    grounded = build_suite(data, ("vqa", "gqa", "nlvr"))
    fine_tuning = build_suite(DataConfig(seed=0, n_train=40, n_val=0, n_test=0, image_size=8), ("vqa",))
    expected = []
    for task in ("vqa", "gqa", "nlvr"):
        for e in grounded.examples[task]["train"]:
            words = described_scenes([grounded.bank.scene(i) for i in e.image_ids])
            expected.append(f"{TASKS[task].prefix}{e.text} {words} {e.targets[0]}")
    assert sentences == expected
    assert set(grounded.bank.scenes.values()) != set(fine_tuning.bank.scenes.values())
    # a pair as NLVR2's statements name its images; one scene left to right
    nlvr = next(s for s in sentences if s.startswith("nlvr: "))
    assert " left image a " in nlvr and " right image a " in nlvr


def test_text_only_baseline_is_near_chance(suite):
    blind = {}
    for task in ("vqa", "gqa", "nlvr"):
        train, test = suite.examples[task]["train"], suite.examples[task]["test"]
        blind[task] = TASKS[task].score(test, TASKS[task].text_only_predictions(train, test))["score"]
        oracle = TASKS[task].score(test, {e.uid: e.targets[0] for e in test})["score"]
        assert oracle == 1.0
    assert blind["vqa"] < 0.55  # yes/no ~0.58 (soft scores), counts ~0.25, attributes ~0.3
    assert blind["gqa"] < 0.45
    assert 0.4 < blind["nlvr"] < 0.6


def test_score_requires_every_prediction(suite):
    test = suite.examples["gqa"]["test"]
    with pytest.raises(ValueError, match=test[-1].uid):
        TASKS["gqa"].score(test, {e.uid: "yes" for e in test[:-1]})


def test_train_items_and_targets(suite):
    captions = suite.examples["caption"]["train"][:3]
    items = TASKS["caption"].train_items(captions)
    assert len(items) == 15 and [t for i in items for t in i.targets] == [r for e in captions for r in e.answers]
    vqa = next(e for e in suite.examples["vqa"]["train"] if len(e.targets) > 1)
    rng = random.Random(0)
    drawn = Counter(TASKS["vqa"].sample_target(vqa, rng) for _ in range(2000))
    assert set(drawn) == set(zip(vqa.targets, vqa.target_scores))
    share = drawn[(vqa.targets[0], vqa.target_scores[0])] / 2000
    assert share == pytest.approx(vqa.target_scores[0] / sum(vqa.target_scores), abs=0.05)
    gqa = suite.examples["gqa"]["train"][0]
    assert TASKS["gqa"].sample_target(gqa, rng) == (gqa.targets[0], 1.0)


def test_each_target_is_tokenised_once_as_the_tokenizer_does(suite):
    from vlbench.backbones import BACKBONES
    from vlbench.data import TaskData
    from vlbench.pretrain import shared_tiny_tokenizer

    tokenizer = shared_tiny_tokenizer(BACKBONES["tiny"])
    data = TaskData(TASKS["caption"], tokenizer, {}, suite.examples["caption"])
    targets = [t for item in data.train_items[:40] for t in item.targets]
    expected = tokenizer(targets, add_special_tokens=True)["input_ids"]
    assert data.target_ids(targets) == expected and len(data._target_ids) == len(set(targets))
    calls = []
    data.tokenizer = lambda *a, **k: calls.append(a) or tokenizer(*a, **k)
    assert data.target_ids(targets[::-1] + targets[:3]) == expected[::-1] + expected[:3] and calls == []


def test_rendering(suite):
    ids = suite.image_ids()[:50]
    images = [suite.bank.render(i) for i in ids]
    assert all(im.shape == (128, 128, 3) and im.dtype == np.uint8 for im in images)
    assert len({im.tobytes() for im in images}) == len(images)
    assert np.array_equal(images[0], render(suite.bank.scene(ids[0]), 128))
    pretrain_images, pretrain_texts = pretraining_corpus(8, 32, seed=5)
    assert len(pretrain_images) == len(pretrain_texts) == 8 and pretrain_images[0].shape == (32, 32, 3)


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError):
        build_suite(DataConfig(), ("vqa", "okvqa"))
