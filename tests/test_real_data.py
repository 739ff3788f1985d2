"""The paper profile's real data: loaders on fixture copies of each dataset in its real format
(VL-T5 preprocessed JSON, the official VQA annotations, Karpathy's dataset_coco.json), written
here, never downloaded; official VQA accuracy through them; one clear error per malformed input;
and a tiny training run through `vlbench sweep image-text --profile paper --backbone tiny`."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlbench.cli import app
from vlbench.config import DataConfig, RunConfig, UserError
from vlbench.features import write_shard
from vlbench.grid import GridRequest, expand
from vlbench.metrics import vqa_accuracy, vqa_official_accuracy
from vlbench.store import Store
from vlbench.tasks import SPLITS, TASKS, build_suite

ALL = tuple(TASKS)
REAL = DataConfig(source="real", n_train=None, n_val=None, n_test=None)


def answers(*counts) -> list[dict]:
    """The official annotation's 10 answers from (answer, how many annotators) pairs."""
    texts = [a for a, n in counts for _ in range(n)]
    assert len(texts) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(texts)]


def annotation(question_id, image_id, answer_type, counts) -> dict:
    return {
        "question_type": "what",
        "multiple_choice_answer": counts[0][0],
        "answers": answers(*counts),
        "image_id": image_id,
        "answer_type": answer_type,
        "question_id": question_id,
    }


def vqa_record(question_id, img_id, sent, label, answer_type="other") -> dict:
    return {
        "answer_type": answer_type,
        "img_id": img_id,
        "label": label,
        "question_id": question_id,
        "question_type": "what",
        "sent": sent,
    }


def coco_image(cocoid, subset, split, raws) -> dict:
    filename = f"COCO_{subset}_{cocoid:012d}.jpg"
    sentences = [{"tokens": r.lower().split(), "raw": r, "imgid": cocoid, "sentid": k} for k, r in enumerate(raws)]
    return {"filepath": subset, "sentids": list(range(len(raws))), "filename": filename, "imgid": cocoid,
            "split": split, "sentences": sentences, "cocoid": cocoid}


CAPTIONS = ["A man riding a wave on a surfboard. ", "a surfer rides a large wave", "Person surfing in the ocean.",
            "a man on a surf board in the water", "The surfer is riding the wave."]

FILES = {
    "vqa/karpathy_train.json": [
        vqa_record(458752000, "COCO_train2014_000000458752", "What is this photo taken looking through?", {"net": 1}),
        vqa_record(458752002, "COCO_train2014_000000458752", "Is the player male?", {"yes": 1}, "yes/no"),
        # Karpathy train also holds val2014 (restval) images; soft labels, best first after loading
        vqa_record(262162001, "COCO_val2014_000000262162", "What is he doing?",
                   {"skating": 0.6, "skateboarding": 1, "skateboard": 0.3}),
        # no answer in the answer vocabulary: VL-T5 trains on "" with weight 0
        vqa_record(262146001, "COCO_train2014_000000262146", "How many rackets?", {}, "number"),
    ],
    "vqa/karpathy_val.json": [
        vqa_record(393225000, "COCO_val2014_000000393225", "What is in the bowl?", {"soup": 1}),
        vqa_record(393225001, "COCO_val2014_000000393225", "Is this hot?", {"yes": 1}, "yes/no"),
    ],
    "vqa/karpathy_test.json": [
        vqa_record(262148000, "COCO_val2014_000000262148", "Is it sunny?", {"no": 1, "yes": 0.9}, "yes/no"),
        vqa_record(262148001, "COCO_val2014_000000262148", "How many people?", {"2": 1}, "number"),
        vqa_record(262148002, "COCO_val2014_000000262148", "What sport is this?", {"tennis": 1}),
    ],
    "vqa/v2_mscoco_val2014_annotations.json": {
        "info": {"description": "fixture"},
        "license": {"name": "fixture"},
        "data_subtype": "val2014",
        "data_type": "mscoco",
        "annotations": [
            annotation(393225000, 393225, "other", [("soup", 8), ("stew", 2)]),
            annotation(393225001, 393225, "yes/no", [("yes", 10)]),
            annotation(262148000, 262148, "yes/no", [("yes", 3), ("no", 7)]),
            annotation(262148001, 262148, "number", [("2", 4), ("two", 6)]),
            annotation(262148002, 262148, "other", [("tennis", 10)]),
            annotation(999999000, 999999, "other", [("unused", 10)]),
        ],
    },
    "GQA/train.json": [
        {"img_id": "2354786", "label": {"yes": 1.0}, "question_id": "02930152", "sent": "Is the sky dark?"},
        {"img_id": "2375429", "label": {"pipe": 1.0}, "question_id": "07333408", "sent": "What is on the white wall?"},
    ],
    "GQA/valid.json": [
        {"img_id": "2368326", "label": {"large": 1.0}, "question_id": "13151559", "sent": "Is the clock large?"},
    ],
    "GQA/testdev.json": [
        {"img_id": "n161313", "label": {"no": 1.0}, "question_id": "20968379", "sent": "Are the shorts dark?"},
        {"img_id": "n235859", "label": {"table": 1.0}, "question_id": "201307251", "sent": "What is the plate on?"},
    ],
    "nlvr/train.json": [
        {"identifier": "train-10171-0-0", "img0": "train-10171-0-img0", "img1": "train-10171-0-img1", "label": 0,
         "sent": "An image shows one leather pencil case.", "uid": "nlvr2_train_0"},
        {"identifier": "train-10171-0-1", "img0": "train-10171-0-img0", "img1": "train-10171-0-img1", "label": 1,
         "sent": "One image shows a pencil case with writing implements.", "uid": "nlvr2_train_1"},
    ],
    "nlvr/valid.json": [
        {"identifier": "dev-850-0-0", "img0": "dev-850-0-img0", "img1": "dev-850-0-img1", "label": 1,
         "sent": "There are two dogs.", "uid": "nlvr2_dev_0"},
    ],
    "nlvr/test.json": [
        {"identifier": "test1-0-1-0", "img0": "test1-0-1-img0", "img1": "test1-0-1-img1", "label": 0,
         "sent": "The left image contains exactly two birds.", "uid": "nlvr2_test_0"},
        {"identifier": "test1-0-1-1", "img0": "test1-0-1-img0", "img1": "test1-0-1-img1", "label": 1,
         "sent": "There are birds in both images.", "uid": "nlvr2_test_1"},
    ],
    "COCO/dataset_coco.json": {
        "dataset": "coco",
        "images": [
            coco_image(391895, "val2014", "test", CAPTIONS),
            coco_image(522418, "val2014", "restval", CAPTIONS[:4]),
            coco_image(184613, "train2014", "train", CAPTIONS),
            coco_image(318219, "train2014", "train", CAPTIONS[1:]),
            coco_image(554625, "val2014", "val", CAPTIONS),
            coco_image(397133, "val2014", "test", CAPTIONS[::-1]),
        ],
    },
}


def write_files(root, files) -> None:
    """Each file as JSON (a str is written as is: broken JSON on purpose)."""
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content if isinstance(content, str) else json.dumps(content))


def write_features(folder, image_ids, feat_dim=128, tokens=16) -> None:
    """A feature store as `vlbench features extract` writes it (one safetensors shard), random features."""
    folder.mkdir(parents=True, exist_ok=True)
    features = torch.randn(len(image_ids), tokens, feat_dim, generator=torch.Generator().manual_seed(0))
    write_shard(folder / "shard-00000.safetensors", list(image_ids), features, {})


def real_data(root, **caps) -> DataConfig:
    return dataclasses.replace(REAL, root=str(root), **caps)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root in the real layout, with random tiny-CLIP-shaped features (16 x 128) of every image at the
    default location."""
    root = tmp_path_factory.mktemp("data")
    write_files(root, FILES)
    write_features(root / "features" / "tiny", build_suite(real_data(root), ALL).image_ids())
    return root


@pytest.fixture(scope="module")
def suite(root):
    return build_suite(real_data(root), ALL)


# ---- loaders, field by field --------------------------------------------------------------------


def test_vqa_loader(suite):
    vqa = suite.examples["vqa"]
    assert [e.uid for e in vqa["train"]] == ["458752000", "458752002", "262162001", "262146001"]
    first, _, soft, empty = vqa["train"]
    assert first.task == "vqa" and first.image_ids == ("COCO_train2014_000000458752",)
    assert first.text == "What is this photo taken looking through?"
    assert (first.targets, first.target_scores) == (("net",), (1.0,))
    assert first.answers == () and first.answer_type == "other"  # training questions are never scored
    assert soft.targets == ("skateboarding", "skating", "skateboard") and soft.target_scores == (1.0, 0.6, 0.3)
    assert (empty.targets, empty.target_scores) == ((), ())
    assert TASKS["vqa"].sample_target(empty, None) == ("", 0.0)
    assert TASKS["vqa"].input_text(first) == "vqa: What is this photo taken looking through?"

    val = vqa["val"][0]
    assert val.uid == "393225000" and val.image_ids == ("COCO_val2014_000000393225",)
    assert val.answers == ("soup",) * 8 + ("stew",) * 2  # the official annotators', not the label
    assert val.targets == ("soup",) and val.answer_type == "other"
    assert [(e.uid, e.answer_type) for e in vqa["test"]] == [
        ("262148000", "yes/no"), ("262148001", "number"), ("262148002", "other")
    ]
    assert vqa["test"][1].answers == ("2",) * 4 + ("two",) * 6


def test_official_vqa_accuracy_through_the_real_path(suite):
    """vqaEval.py's numbers, worked out by hand from its definition for the fixture's annotations."""
    test = suite.examples["vqa"]["test"]
    predictions = {
        # 3 of 10 said yes: leave-one-out mean of min(1, matches/3) = (3 * 2/3 + 7 * 1) / 10
        "262148000": "yes",
        # answers differ, so all are normalised: "Two" -> "two" -> "2", which all 10 then say
        "262148001": "Two",
        # all 10 agree, so nothing is normalised and the trailing period makes it wrong
        "262148002": "tennis.",
    }
    scores = TASKS["vqa"].score(test, predictions)
    assert scores["yes/no"] == pytest.approx(0.9)
    assert scores["number"] == 1.0 and scores["other"] == 0.0
    assert scores["score"] == pytest.approx(1.9 / 3)
    # as the official script prints them
    accuracies = [vqa_accuracy(predictions[e.uid], list(e.answers)) for e in test]
    official = vqa_official_accuracy(accuracies, [e.answer_type for e in test])
    assert official == {"overall": 63.33, "perAnswerType": {"yes/no": 90.0, "number": 100.0, "other": 0.0}}


def test_gqa_loader(suite):
    gqa = suite.examples["gqa"]
    assert [e.uid for e in gqa["train"]] == ["02930152", "07333408", "13151559"]  # train + valid
    e = gqa["train"][2]
    assert (e.task, e.image_ids, e.text) == ("gqa", ("2368326",), "Is the clock large?")
    assert (e.targets, e.target_scores, e.answers, e.answer_type) == (("large",), (1.0,), ("large",), "")
    assert [e.uid for e in gqa["val"]] == [e.uid for e in gqa["test"]] == ["20968379", "201307251"]  # testdev
    assert gqa["test"][0].image_ids == ("n161313",)
    scores = TASKS["gqa"].score(gqa["test"], {"20968379": "no", "201307251": " table "})
    assert scores == {"score": 1.0}  # exact match of the stripped prediction; no per-family extras


def test_nlvr_loader(suite):
    nlvr = suite.examples["nlvr"]
    false, true = nlvr["train"]
    assert (false.uid, false.image_ids) == ("train-10171-0-0", ("train-10171-0-img0", "train-10171-0-img1"))
    assert false.text == "An image shows one leather pencil case."
    assert (false.targets, false.answers, false.target_scores) == (("false",), ("false",), None)
    assert true.targets == ("true",)
    assert [e.uid for e in nlvr["val"]] == ["dev-850-0-0"]
    assert [e.answers[0] for e in nlvr["test"]] == ["false", "true"]  # test-P
    assert TASKS["nlvr"].score(nlvr["test"], {"test1-0-1-0": "false", "test1-0-1-1": "false"}) == {"score": 0.5}


def test_caption_loader(suite):
    caption = suite.examples["caption"]
    # train + restval, in file order; ids are the file stems
    assert [e.uid for e in caption["train"]] == [
        "COCO_val2014_000000522418", "COCO_train2014_000000184613", "COCO_train2014_000000318219"
    ]
    assert [e.uid for e in caption["val"]] == ["COCO_val2014_000000554625"]
    assert [e.uid for e in caption["test"]] == ["COCO_val2014_000000391895", "COCO_val2014_000000397133"]
    e = caption["test"][0]
    assert e.image_ids == ("COCO_val2014_000000391895",) and e.text == ""
    assert e.answers == e.targets == tuple(c.strip() for c in CAPTIONS)
    assert e.answers[0] == "A man riding a wave on a surfboard."
    items = TASKS["caption"].train_items(caption["train"])  # one training item per caption
    assert len(items) == 4 + 5 + 4
    assert [i.targets for i in items[:4]] == [(c.strip(),) for c in CAPTIONS[:4]]


def test_caps_keep_the_first_examples(root, suite):
    capped = build_suite(real_data(root, n_train=2, n_val=1, n_test=1), ALL)
    for task in ALL:
        for split, n in zip(SPLITS, (2, 1, 1)):
            assert capped.examples[task][split] == suite.examples[task][split][:n]


# ---- malformed inputs: one clear line naming the file --------------------------------------------


def edit(name, change):
    """A copy of FILES with `change` applied to the parsed content of file `name`."""

    def apply(files):
        files[name] = change(json.loads(json.dumps(files[name])))
        return files

    return apply


def drop(key, index=1):
    def change(records):
        del records[index][key]
        return records

    return change


def set_field(key, value, index=1):
    def change(records):
        records[index][key] = value
        return records

    return change


def raw_text(name, text):
    """Write `text` as the file's bytes (not JSON)."""

    def apply(files):
        files[name] = text
        return files

    return apply


def without(name):
    return lambda files: {k: v for k, v in files.items() if k != name}


ANNOTATIONS = "vqa/v2_mscoco_val2014_annotations.json"


def nine_annotators(annotations):
    return {**annotations, "annotations": [{**a, "answers": a["answers"][:9]} for a in annotations["annotations"]]}


# case -> (change to the files, the file the error must name, what it must say)
MALFORMED = {
    "missing file": (without("nlvr/test.json"), "nlvr/test.json", "file not found"),
    "missing annotations": (without(ANNOTATIONS), ANNOTATIONS, "file not found"),
    "invalid json": (raw_text("GQA/valid.json", '[{"img_id": "1",'), "GQA/valid.json", "invalid JSON"),
    "empty file": (raw_text("vqa/karpathy_val.json", "  \n"), "vqa/karpathy_val.json", "empty file"),
    "no records": (edit("nlvr/valid.json", lambda r: []), "nlvr/valid.json", "no records"),
    "not a list": (
        edit("GQA/testdev.json", lambda r: {"data": r}),
        "GQA/testdev.json",
        "expected a JSON list of records, got an object",
    ),
    "record not an object": (
        edit("nlvr/train.json", lambda r: r + [["x"]]),
        "nlvr/train.json",
        "record 2 should be an object, got a list",
    ),
    "missing label": (
        edit("vqa/karpathy_train.json", drop("label")),
        "vqa/karpathy_train.json",
        "record 1: missing field 'label'",
    ),
    "missing img1": (edit("nlvr/test.json", drop("img1", 0)), "nlvr/test.json", "record 0: missing field 'img1'"),
    "missing raw": (
        edit("COCO/dataset_coco.json", lambda d: {**d, "images": [{**d["images"][0], "sentences": [{"tokens": []}]}]}),
        "COCO/dataset_coco.json",
        "images[0]: sentences[0]: missing field 'raw'",
    ),
    "wrong type": (
        edit("vqa/karpathy_test.json", set_field("question_id", "262148001")),
        "vqa/karpathy_test.json",
        "record 1: field 'question_id' should be an integer, got a string",
    ),
    "label not a dict": (
        edit("GQA/train.json", set_field("label", ["yes"], 0)),
        "GQA/train.json",
        "record 0: field 'label' should be an object, got a list",
    ),
    "bad soft score": (
        edit("vqa/karpathy_train.json", set_field("label", {"net": "high"}, 0)),
        "vqa/karpathy_train.json",
        "record 0: bad label: the score of 'net' should be a number in [0, 1]",
    ),
    "bad nlvr label": (edit("nlvr/valid.json", set_field("label", 2, 0)), "nlvr/valid.json", "record 0: bad label 2"),
    "boolean nlvr label": (
        edit("nlvr/valid.json", set_field("label", True, 0)),
        "nlvr/valid.json",
        "field 'label' should be an integer, got a boolean",
    ),
    "unscorable gqa question": (
        edit("GQA/testdev.json", set_field("label", {}, 0)),
        "GQA/testdev.json",
        "no answer to score against",
    ),
    "duplicate question": (
        edit("vqa/karpathy_val.json", set_field("question_id", 393225000)),
        "vqa/karpathy_val.json",
        "question_id '393225000' appears twice",
    ),
    "question without annotation": (
        edit("vqa/karpathy_test.json", set_field("question_id", 262148009)),
        ANNOTATIONS,
        "no annotation for question_id 262148009",
    ),
    "annotation of another image": (
        edit("vqa/karpathy_test.json", set_field("img_id", "COCO_val2014_000000393225")),
        ANNOTATIONS,
        "question_id 262148001 is annotated for image 262148",
    ),
    "not a COCO image id": (
        edit("vqa/karpathy_val.json", set_field("img_id", "393225")),
        "vqa/karpathy_val.json",
        "img_id '393225' is not a COCO image id",
    ),
    "nine annotators": (
        edit(ANNOTATIONS, nine_annotators),
        ANNOTATIONS,
        "annotations[0]: expected 10 annotator answers, got 9",
    ),
    "unknown karpathy split": (
        edit("COCO/dataset_coco.json", lambda d: {**d, "images": [{**d["images"][0], "split": "dev"}]}),
        "COCO/dataset_coco.json",
        "images[0]: unknown split 'dev'",
    ),
    "no test images": (
        edit("COCO/dataset_coco.json", lambda d: {**d, "images": [i for i in d["images"] if i["split"] != "test"]}),
        "COCO/dataset_coco.json",
        "no images with split test",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_input_is_one_clear_error(tmp_path, case):
    change, file, message = MALFORMED[case]
    write_files(tmp_path, change(dict(FILES)))
    with pytest.raises(UserError) as error:
        build_suite(real_data(tmp_path), ALL)
    text = str(error.value)
    assert "\n" not in text and str(tmp_path) in text and file in text and message in text, text


def test_unknown_split_and_missing_root(root, tmp_path):
    with pytest.raises(UserError, match="vqa: unknown split 'dev' \\(choose from train, val, test\\)"):
        TASKS["vqa"].load(root, "dev")
    with pytest.raises(UserError, match="--data-root: real data needs the data root"):
        build_suite(REAL, ALL)
    with pytest.raises(UserError, match="unknown data source 'web'"):
        build_suite(dataclasses.replace(REAL, source="web"), ALL)
    with pytest.raises(UserError, match=f"--data-root: {tmp_path / 'nowhere'} is not a folder"):
        build_suite(real_data(tmp_path / "nowhere"), ALL)


# ---- configs --------------------------------------------------------------------------------------


def test_paper_data_on_tiny_backbones_config(root, monkeypatch):
    monkeypatch.setenv("VLBENCH_DATA_ROOT", str(root))
    (cfg,) = expand(GridRequest(profile="paper", backbone="tiny", methods=("adapter",)))
    assert (cfg.profile, cfg.backbone, cfg.pool_size, cfg.hidden_dim) == ("paper", "tiny", 4, 8)
    assert (cfg.optim.epochs, cfg.optim.lr) == (20, 1e-3)  # the paper's training
    assert cfg.data.source == "real" and cfg.data.n_train is None
    assert (cfg.data.root, cfg.data.features) == (str(root), str(root / "features" / "tiny"))
    (paper,) = expand(GridRequest(profile="paper", methods=("adapter",), data_root=str(root), features="f"))
    assert paper.backbone == "paper" and paper.hidden_dim == 96 and paper.data.features.endswith("/f")
    monkeypatch.delenv("VLBENCH_DATA_ROOT")
    (default,) = expand(GridRequest(profile="paper", methods=("adapter",)))
    assert default.data.root is None and default.data.features is None  # enough for --dry-run
    with pytest.raises(UserError, match="--backbone: unknown backbone size 'huge'"):
        expand(GridRequest(profile="paper", backbone="huge"))
    with pytest.raises(UserError, match="--data-root/--features/--images/--clip-weights: real data needs --profile paper; tiny is synthetic"):
        expand(GridRequest(data_root=str(root)))


def test_existing_keys_are_unchanged():
    """The real-data fields are left out of the key while unset: keys stored before them stay valid."""
    assert RunConfig().key() == "651ede3109f2b22a"  # the tiny defaults since the 1000-example test split
    assert RunConfig(method="adapter", sharing="single", hidden_dim=8).key() == "646255c968bc10f4"
    assert RunConfig(data=DataConfig(root="/data", features="/data/f")).key() != RunConfig().key()


# ---- through the CLI ------------------------------------------------------------------------------


def sweep(root, *args):
    command = ["sweep", "image-text", "--profile", "paper", "--backbone", "tiny", "--data-root", str(root),
               "--methods", "adapter", "--epochs", "1", "--batch-size", "4", *args]
    return CliRunner().invoke(app, command, catch_exceptions=False)


def write_images(folder, image_ids) -> None:
    """Random photographs named by image id, PNG and JPEG of assorted sizes, one subfolder per dataset."""
    rng = np.random.default_rng(0)
    for k, image_id in enumerate(image_ids):
        subfolder = folder / ("COCO" if image_id.startswith("COCO") else "nlvr" if "-img" in image_id else "GQA")
        subfolder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(subfolder / f"{image_id}.{'jpg' if k % 2 else 'png'}")


def test_tiny_real_format_training_run(workdir, tmp_path):
    """Image files -> `vlbench features extract --model tiny` into the default store -> a paper-profile run."""
    root = tmp_path / "data"
    write_files(root, FILES)
    write_images(root / "images", build_suite(real_data(root), ALL).image_ids())
    extract = ["features", "extract", "--images", str(root / "images"), "--out", str(root / "features" / "tiny"),
               "--model", "tiny"]
    result = CliRunner().invoke(app, extract, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = sweep(root)
    assert result.exit_code == 0, result.output
    store = Store(Store.default_url(workdir / "runs"))
    (run,) = store.runs()  # no text-only prior for real data
    assert (run.status, run.method, run.sharing, run.hidden_dim) == ("done", "adapter", "single", 8)
    scores = store.test_scores()
    main = scores[scores["name"] == "score"].set_index("task")["value"]
    assert set(main.index) == set(ALL)
    assert all(0 <= v <= 1 for v in main)
    assert {"yes/no", "number", "other"} <= set(scores[scores["task"] == "vqa"]["name"])  # official per-type
    assert set(store.val_history(run.id)["task"]) == set(ALL)
    config = json.loads((workdir / "runs" / "image-text-paper" / run.key / "config.json").read_text())
    assert config["backbone"] == "tiny" and config["data"]["root"] == str(root)


def test_image_without_features_stops_the_sweep(workdir, root, tmp_path):
    suite = build_suite(real_data(root), ALL)
    write_features(tmp_path / "partial", [i for i in suite.image_ids() if i != "COCO_val2014_000000262148"])
    result = sweep(root, "--features", str(tmp_path / "partial"))
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert f"error: --features: feature store {tmp_path / 'partial'} has no features for 1 of the" in message
    assert "'COCO_val2014_000000262148' (vqa test example 262148000)" in message
    assert not Store(Store.default_url(workdir / "runs")).runs()  # nothing was claimed or trained


def test_truncated_or_mismatched_features_stop_the_sweep(workdir, root, tmp_path):
    store = tmp_path / "truncated"
    shutil.copytree(root / "features" / "tiny", store)
    shard = store / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    result = sweep(root, "--features", str(store))
    assert result.exit_code == 2 and "truncated or corrupt" in " ".join(result.output.split())

    write_features(tmp_path / "rn101", build_suite(real_data(root), ALL).image_ids(), feat_dim=2048)
    result = sweep(root, "--features", str(tmp_path / "rn101"))
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "error: --features:" in message and "2048-d" in message, message


def test_clip_trains_on_the_real_image_files_table3(workdir, tmp_path):
    """Table 3 on the paper profile's data: the model trains its CLIP on the image files (--images),
    read by the same ids as the feature store; the visual component trains and is counted."""
    root = tmp_path / "data"
    write_files(root, FILES)
    image_ids = build_suite(real_data(root), ALL).image_ids()
    write_images(root / "images", image_ids)
    write_features(root / "features" / "tiny", image_ids)
    common = ["--option", "train_vision=true", "--methods", "full"]
    missing = sweep(root, *common)
    assert missing.exit_code == 2 and "--option train_vision: training CLIP on real data reads the images themselves" in " ".join(
        missing.output.split()
    )
    result = sweep(root, *common, "--images", str(root / "images"))
    assert result.exit_code == 0, result.output
    store = Store(Store.default_url(workdir / "runs"))
    (run,) = store.runs()
    assert run.status == "done" and run.config["data"]["images"] == str(root / "images")
    assert run.config["method_options"] == {"train_vision": True}
    (doc,) = store.run_documents(keys=[run.key])
    assert doc["params"]["components"]["vision"]["trainable"] > 0
    assert "images" in run.fingerprint


def test_missing_image_file_stops_the_sweep(workdir, tmp_path):
    root = tmp_path / "data"
    write_files(root, FILES)
    image_ids = build_suite(real_data(root), ALL).image_ids()
    write_images(root / "images", [i for i in image_ids if i != "COCO_val2014_000000262148"])
    write_features(root / "features" / "tiny", image_ids)
    result = sweep(root, "--option", "train_vision=true", "--methods", "full", "--images", str(root / "images"))
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "--images: " in message and "'COCO_val2014_000000262148'" in message
    assert not Store(Store.default_url(workdir / "runs")).runs()


def test_paper_clip_training_needs_its_weights(root):
    with pytest.raises(UserError, match="RN101 trains from its pretrained weights: give --clip-weights"):
        expand(GridRequest(profile="paper", methods=("full",), data_root=str(root), images=str(root),
                           options=(("train_vision", True),)))  # fmt: skip
    (cfg,) = expand(GridRequest(profile="paper", methods=("full",), data_root=str(root), images=str(root),
                                clip_weights="openai", options=(("train_vision", True),)))  # fmt: skip
    assert (cfg.data.images, cfg.data.clip_weights) == (str(root), "openai")
    with pytest.raises(UserError, match="--data-root/--features/--images/--clip-weights: real data needs --profile paper"):
        expand(GridRequest(images=str(root)))
