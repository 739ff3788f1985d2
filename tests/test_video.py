"""The video-text suite (Table 4): synthetic clips, the frame-token path, VALUE's file formats, the sweep."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import FAST_BACKBONE, FEAT_DIM, random_batch, tiny_vl_model
from typer.testing import CliRunner

from vlbench import backbones
from vlbench.backbones import build_tokenizer
from vlbench.cli import app
from vlbench.config import VIDEO_TEXT_TASKS, DataConfig, UserError
from vlbench.data import TaskData
from vlbench.store import Store
from vlbench.tasks import VIDEO_TASKS, Example, build_suite
from vlbench.tasks.scenes import COLORS, SHAPES
from vlbench.tasks.video import FrameFeatures, NpzFrames, fit_frames

SYNTHETIC = DataConfig(n_train=300, n_val=10, n_test=300)


@pytest.fixture(scope="module")
def suite():
    return build_suite(SYNTHETIC, VIDEO_TEXT_TASKS)


def test_synthetic_suite_is_deterministic(suite):
    again = build_suite(SYNTHETIC, VIDEO_TEXT_TASKS)
    assert again.examples == suite.examples and again.fingerprint() == suite.fingerprint()
    frame = suite.bank.frame_ids(suite.image_ids()[0])[-1]
    assert np.array_equal(again.bank.render(frame), suite.bank.render(frame))
    assert build_suite(DataConfig(seed=1, n_train=300, n_val=10, n_test=300), VIDEO_TEXT_TASKS).fingerprint() != (
        suite.fingerprint()
    )
    lengths = {suite.bank.scene(c).n_frames for c in suite.image_ids()}
    assert lengths == {4, 5, 6}  # clips of different lengths: batches need padding


# ---- the answers follow from the frames and the subtitles, and not from the text alone ------------


def what_happened(clip) -> dict[tuple[str, str], str]:
    """(colour, shape) -> event, read off the rendered scenes of the frames (not the clip's tracks)."""
    frames = [{(o.color, o.shape) for o in clip.frame(k).objects} for k in range(clip.n_frames)]
    events = {}
    for kind in set().union(*frames):
        on = [kind in frame for frame in frames]
        changes = sum(a != b for a, b in zip(on, on[1:]))
        events[kind] = {
            (True, True, 0): "stays",
            (False, True, 1): "comes in",
            (True, False, 1): "goes out",
            (False, False, 2): "comes and goes",
            (True, True, 2): "goes and comes back",
        }[on[0], on[-1], changes]
    return events


def first_change(clip, kind) -> int:
    on = [any((o.color, o.shape) == kind for o in clip.frame(k).objects) for k in range(clip.n_frames)]
    return next(k for k in range(1, clip.n_frames) if on[k] != on[0])


def parse(text: str) -> tuple[list[str], str, list[str]]:
    """The reference's input format back into (subtitle lines, question, candidates)."""
    subs = re.search(r"\[Subs\] (.*?) \[", text).group(1)
    question = re.search(r"\[Q\] (.*?) \[TS\]", text)
    choices = re.findall(r"a\d: (.*?)\.(?= a\d:|$)", text.split("[Choices] ")[1]) if "[Choices]" in text else []
    return re.findall(r"\w+: .*?\.", subs), question.group(1) if question else "", choices


def kind_of(phrase: str) -> tuple[str, str]:
    color, shape = phrase.removeprefix("the ").split()
    return color, shape


def solve(task: str, example, clip) -> tuple[str, ...]:
    """An independent solver: the answer from the frames plus the subtitles."""
    subs, question, choices = parse(example.text)
    events = what_happened(clip)
    if task == "tvqa":
        owners = dict(re.match(r"(\w+): my shape is the (\w+)\.", line).groups() for line in subs)
        name = re.match(r"what color was (\w+)'s shape\?", question).group(1)
        (color,) = [color for color, shape in events if shape == owners[name]]
        return (f"a{choices.index(color)}",)
    if task == "how2qa":
        color = re.match(r"narrator: look out for the (\w+) one\.", subs[0]).group(1)
        shapes = [shape for c, shape in events if c == color]
        return (f"a{choices.index(f'a {shapes[0]}' if shapes else 'none of them')}",)
    if task == "tvc":
        owners = {kind_of(line.split(": ")[1].removesuffix(" is mine.")): line.split(":")[0] for line in subs}
        ((kind, event),) = [(k, e) for k, e in events.items() if e != "stays"]
        return (f"{owners[kind]}'s {kind[0]} {kind[1]} {event}",)
    names = {kind_of(re.match(r"narrator: (.*) is the", line).group(1)): line.split()[-1][:-1] for line in subs}
    first, then = sorted((k for k, e in events.items() if e != "stays"), key=lambda k: first_change(clip, k))
    return (f"the {names[first]} {events[first]} then the {names[then]} {events[then]}",)


@pytest.mark.parametrize("task", VIDEO_TEXT_TASKS)
def test_answers_need_the_video_and_the_subtitles(suite, task):
    for split in ("train", "test"):
        for example in suite.examples[task][split]:
            assert solve(task, example, suite.bank.scene(example.image_ids[0])) == example.targets[:1], example


@pytest.mark.parametrize("task, chance", [("tvqa", 1 / 5), ("how2qa", 1 / 4)])
def test_text_alone_is_at_chance(suite, task, chance):
    train, test = suite.examples[task]["train"], suite.examples[task]["test"]
    labels = [e.targets[0] for e in train]
    assert all(abs(labels.count(f"a{k}") / len(labels) - chance) < 0.07 for k in range(round(1 / chance)))
    prior = VIDEO_TASKS[task].score(test, VIDEO_TASKS[task].text_only_predictions(train, test))["score"]
    assert abs(prior - chance) < 0.08
    # the subtitles and the question never name what is asked (TVQA: colours, How2QA: shapes)
    asked = COLORS if task == "tvqa" else SHAPES
    for e in train + test:
        words = set(re.findall(r"\w+", e.text.split("[Choices]")[0]))
        assert not words & set(asked), e.text


def test_input_text_is_the_reference_format(suite):
    example = suite.examples["tvqa"]["train"][0]
    text = VIDEO_TASKS["tvqa"].input_text(example)
    assert re.fullmatch(
        r"\[Subs\] (\w+: my shape is the \w+\. ?){2,3} \[Q\] what color was \w+'s shape\? \[TS\] \(0-[456]\) "
        r"\[Choices\] a0: red\. a1: green\. a2: blue\. a3: yellow\. a4: purple\. tvqa: ",
        text,
    ), text
    caption = suite.examples["tvc"]["train"][0]
    n_frames = suite.bank.scene(caption.image_ids[0]).n_frames
    assert VIDEO_TASKS["tvc"].input_text(caption).endswith(f"[TS] (0-{n_frames}) tvc: ")
    assert len(caption.targets) == 2 and len(suite.examples["tvc"]["test"][0].targets) == 4  # as TVC


# ---- the model: one token per frame, padding masked ------------------------------------------------


def video_batch(lengths, total, seed):
    """A batch of random clips of `lengths` frames, padded to `total` frames with random junk."""
    batch = random_batch(batch_size=len(lengths))
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(len(lengths), max(lengths), FEAT_DIM, generator=g)
    junk = torch.randn(len(lengths), total, FEAT_DIM, generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(total) < torch.tensor(lengths)[:, None]).long()
    feats = torch.where(mask[..., None].bool(), torch.nn.functional.pad(frames, (0, 0, 0, total - max(lengths))), junk)
    return dict(batch, feats=feats, frame_mask=mask)


def test_padded_frames_do_not_change_the_output():
    model = tiny_vl_model().eval()
    lengths = [5, 3, 2]
    a, b = video_batch(lengths, 5, seed=1), video_batch(lengths, 8, seed=2)  # other junk, more of it
    assert model.loss(a).item() == pytest.approx(model.loss(b).item(), abs=1e-6)
    assert torch.equal(
        model.generate(a, num_beams=2, max_new_tokens=4), model.generate(b, num_beams=2, max_new_tokens=4)
    )
    # each clip alone, unpadded, gives the same decoder output as in the padded batch
    logits = model.choice_logits(b, [5, 6, 7])
    for i, n in enumerate(lengths):
        alone = {k: v[i : i + 1] for k, v in a.items()}
        alone["feats"], alone["frame_mask"] = alone["feats"][:, :n], alone["frame_mask"][:, :n]
        assert torch.allclose(model.choice_logits(alone, [5, 6, 7]), logits[i : i + 1], atol=1e-5)
    # the mask is what hides the junk
    unmasked = dict(b, frame_mask=torch.ones_like(b["frame_mask"]))
    assert model.loss(unmasked).item() != pytest.approx(model.loss(b).item(), abs=1e-4)


def test_frame_tokens_and_image_path():
    model = tiny_vl_model().eval()
    feats = torch.randn(2, 3, FEAT_DIM)
    tokens, img_order, frame_order = model.frame_tokens(feats)
    assert torch.equal(tokens, feats) and img_order.eq(0).all() and frame_order.tolist() == [[0, 1, 2]] * 2
    with pytest.raises(ValueError, match="17 frames per clip but the LM has only 16 visual token rows"):
        model.frame_tokens(torch.randn(1, 17, FEAT_DIM))
    image = random_batch()  # no frame mask: the image path, grids pooled to 3x3 per image
    enc, mask = model.encode_batch(image)
    assert enc.last_hidden_state.shape[1] == image["input_ids"].shape[1] + 9 and mask.eq(1).all()


def test_frame_features_pad_and_pool():
    videos = {"long": torch.arange(12.0).reshape(6, 2), "short": torch.ones(2, 2)}
    features = FrameFeatures(videos.__getitem__, feat_dim=2, max_frames=3, name="test")
    feats, mask = features.clips(["short", "long"])
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    # 6 frames max-pooled over time to 3, as the reference's adaptive_max_pool1d: frames (0,1), (2,3), (4,5)
    assert feats[1].tolist() == [[2.0, 3.0], [6.0, 7.0], [10.0, 11.0]]
    assert feats[0].tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert torch.equal(fit_frames(videos["short"], 64), videos["short"])


# ---- VALUE's files --------------------------------------------------------------------------------

TV_SUBS = {"s03e02_seg02_clip_10": [" Howard : Hi.", "Sheldon : No."], "grey_s03e12_seg02_clip_17": ["Meredith : Hey."]}
FILES = {
    "video/ann/tv_subtitles.jsonl": [
        {"vid_name": v, "sub": [{"text": t, "start": 0.5, "end": 1.5} for t in subs]} for v, subs in TV_SUBS.items()
    ],
    "video/ann/how2_subtitles.jsonl": [
        {"vid_name": "how2_clip", "sub": [{"text": "now cut the onion", "start": 0, "end": 2}]}
    ],
    "video/ann/yc2_subtitles.jsonl": [{"vid_name": "yc2_clip", "sub": []}],
}
TVQA = {
    "a0": "Because Sheldon is being rude.",
    "a1": "Because he doesn't like Sheldon.",
    "a2": "They argue.",
    "a3": "Because Howard wanted a private meal. ",
    "a4": "Money.",
    "answer_idx": 2,
    "q": "Why is Howard upset? ",
    "qid": 122039,
    "show_name": "The Big Bang Theory",
    "ts": "20.16-25.12",
    "vid_name": "s03e02_seg02_clip_10",
}
HOW2QA = {
    "a0": "an onion",
    "a1": "a knife",
    "a2": "a pan",
    "a3": "salt",
    "answer_idx": 0,
    "q": "What is cut?",
    "qid": "how2-7",
    "ts": "0.0-4.5",
    "vid_name": "how2_clip",
}
TVC = {
    "vid_name": "grey_s03e12_seg02_clip_17",
    "duration": 94.03,
    "ts": [35.73, 40.9],
    "clip_id": 86602,
    "descs": [
        {"desc": "Meredith walks into the kitchen.", "desc_id": 1, "type": "v", "from_retrieval": True},
        {"desc": "Meredith enters. ", "desc_id": 2, "type": "v", "from_retrieval": False},
    ],
}
YC2C = {
    "vid_name": "yc2_clip",
    "duration": 20.0,
    "ts": [1.0, 9.5],
    "clip_id": "yc2-3",
    "descs": [{"desc": "add the onion to the pan", "desc_id": 5}],
}
RECORDS = {
    "tvqa/tvqa_{}.jsonl": TVQA,
    "how2qa/how2qa_{}_release.jsonl": HOW2QA,
    "tvc/tvc_{}_release.jsonl": TVC,
    "yc2c/yc2c_{}_release.jsonl": YC2C,
}
TEST_SPLIT = {"tvqa": "test_public", "how2qa": "test_public"}
FRAMES = {
    "tv/clip-vit/s03e02_seg02_clip_10": 70,
    "tv/clip-vit/grey_s03e12_seg02_clip_17": 5,
    "how2/clip-vit/how2_clip": 3,
    "yc2/clip-vit/yc2_clip": 9,
}


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_value(root):
    """A copy of VALUE's release in the reference layout: each task one record per split, 512-d frames."""
    for name, records in FILES.items():
        write_jsonl(root / name, records)
    for pattern, record in RECORDS.items():
        task = pattern.split("/")[0]
        for split in ("train", "val", "test"):
            write_jsonl(
                root / "video/ann" / pattern.format(TEST_SPLIT.get(task, split) if split == "test" else split), [record]
            )
    rng = np.random.default_rng(0)
    for video, n in FRAMES.items():
        path = root / "video/vis_features" / f"{video}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, features=rng.standard_normal((n, 512)).astype(np.float16))
    return root


@pytest.fixture(scope="module")
def value_root(tmp_path_factory):
    return write_value(tmp_path_factory.mktemp("value"))


def real(root):
    return DataConfig(source="real", root=str(root), n_train=None, n_val=None, n_test=None)


def test_value_loaders(value_root):
    suite = build_suite(real(value_root), VIDEO_TEXT_TASKS)
    (tvqa,) = suite.examples["tvqa"]["test"]
    assert VIDEO_TASKS["tvqa"].input_text(tvqa) == (
        "[Subs] Howard : Hi. Sheldon : No. [Q] Why is Howard upset? [TS] (20.16-25.12) [Choices] "
        "a0: Because Sheldon is being rude. a1: Because he doesn't like Sheldon. a2: They argue. "
        "a3: Because Howard wanted a private meal. a4: Money. tvqa: "
    )
    assert (tvqa.uid, tvqa.targets, tvqa.answers) == ("122039", ("a2",), ("a2",))
    assert tvqa.image_ids == ("video/vis_features/tv/clip-vit/s03e02_seg02_clip_10",)
    (how2qa,) = suite.examples["how2qa"]["val"]
    assert how2qa.text.endswith("[Choices] a0: an onion. a1: a knife. a2: a pan. a3: salt.") and how2qa.targets == (
        "a0",
    )
    (tvc,) = suite.examples["tvc"]["train"]
    assert VIDEO_TASKS["tvc"].input_text(tvc) == "[Subs] Meredith : Hey. [TS] ([35.73, 40.9]) tvc: "
    assert tvc.answers == ("Meredith walks into the kitchen.", "Meredith enters.") and tvc.uid == "86602"
    assert len(VIDEO_TASKS["tvc"].train_items([tvc])) == 2  # one training item per caption
    (yc2c,) = suite.examples["yc2c"]["test"]
    assert (yc2c.text, yc2c.answers) == ("[Subs]  [TS] ([1.0, 9.5])", ("add the onion to the pan",))

    frames = NpzFrames(value_root)
    features = FrameFeatures(frames, 512, max_frames=64, name="value")
    feats, mask = features.clips([tvqa.image_ids[0], tvc.image_ids[0]])
    assert feats.shape == (2, 64, 512) and mask.sum(1).tolist() == [64, 5]  # 70 frames pooled to 64
    stored = np.load(value_root / "video/vis_features/tv/clip-vit/grey_s03e12_seg02_clip_17.npz")["features"]
    assert torch.equal(feats[1, :5], torch.from_numpy(stored.astype(np.float32)))


def test_long_inputs_are_cut_as_the_reference_cuts_them():
    tokenizer = build_tokenizer(["word"], n_vis_tokens=0)
    long = Example("q1", "tvqa", ("v",), "word " * 1000, ("a0",), None, ("a0",))
    features = FrameFeatures({"v": torch.ones(3, 2)}.__getitem__, feat_dim=2, max_frames=64, name="test")
    data = TaskData(VIDEO_TASKS["tvqa"], tokenizer, features, {"train": [long], "val": [], "test": []})
    input_ids = data.inputs([long], "cpu")["input_ids"][0]
    assert len(input_ids) == 600 and input_ids[-1] == tokenizer.eos_token_id  # the prompt is cut, </s> stays


def edit_line(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record) + "\n")


TVQA_TRAIN = "video/ann/tvqa/tvqa_train.jsonl"
TVC_VAL = "video/ann/tvc/tvc_val_release.jsonl"
MALFORMED = {
    "missing file": (lambda r: (r / TVQA_TRAIN).unlink(), TVQA_TRAIN, "file not found"),
    "empty file": (lambda r: (r / TVQA_TRAIN).write_text(""), TVQA_TRAIN, "no records"),
    "not JSON": (lambda r: (r / TVQA_TRAIN).write_text("{'qid': 1}\n"), TVQA_TRAIN, "line 1: invalid JSON"),
    "not an object": (
        lambda r: (r / TVQA_TRAIN).write_text("[1, 2]\n"),
        TVQA_TRAIN,
        "should be a JSON object, got a list",
    ),
    "missing field": (lambda r: edit_line(r / TVQA_TRAIN, lambda d: d.pop("q")), TVQA_TRAIN, "missing field 'q'"),
    "wrong type": (
        lambda r: edit_line(r / TVQA_TRAIN, lambda d: d.update(answer_idx="2")),
        TVQA_TRAIN,
        "field 'answer_idx' should be an integer, got a string",
    ),
    "answer out of range": (
        lambda r: edit_line(r / TVQA_TRAIN, lambda d: d.update(answer_idx=5)),
        TVQA_TRAIN,
        "answer_idx 5 is not a candidate (a0..a4)",
    ),
    "test labels withheld": (
        lambda r: edit_line(r / "video/ann/tvqa/tvqa_test_public.jsonl", lambda d: d.pop("answer_idx")),
        "video/ann/tvqa/tvqa_test_public.jsonl",
        "no 'answer_idx'; VALUE withholds the test labels",
    ),
    "duplicate id": (
        lambda r: (r / TVQA_TRAIN).write_text(2 * (json.dumps(TVQA) + "\n")),
        TVQA_TRAIN,
        "qid '122039' appears twice",
    ),
    "bad ts": (
        lambda r: edit_line(r / TVQA_TRAIN, lambda d: d.update(ts=3)),
        TVQA_TRAIN,
        "field 'ts' should be a string or a [start, end] pair of numbers, got an integer",
    ),
    "no subtitles": (
        lambda r: edit_line(r / TVQA_TRAIN, lambda d: d.update(vid_name="other_clip")),
        TVQA_TRAIN,
        "video 'other_clip' has no line in the subtitle file",
    ),
    "bad subtitle file": (
        lambda r: write_jsonl(r / "video/ann/tv_subtitles.jsonl", [{"vid_name": "x", "sub": "hi"}]),
        "video/ann/tv_subtitles.jsonl",
        "field 'sub' should be a list, got a string",
    ),
    "captions withheld": (
        lambda r: edit_line(r / TVC_VAL, lambda d: d.pop("descs")),
        TVC_VAL,
        "no 'descs'; VALUE withholds the test labels",
    ),
    "caption not an object": (
        lambda r: edit_line(r / TVC_VAL, lambda d: d.update(descs=["hi"])),
        TVC_VAL,
        "descs[0] should be an object, got a string",
    ),
    "no captions": (lambda r: edit_line(r / TVC_VAL, lambda d: d.update(descs=[])), TVC_VAL, "'descs' is empty"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_annotations_are_one_clear_error(tmp_path, case):
    corrupt, file, message = MALFORMED[case]
    root = write_value(tmp_path)
    corrupt(root)
    with pytest.raises(UserError) as error:
        build_suite(real(root), VIDEO_TEXT_TASKS)
    assert str(root / file) in str(error.value) and message in str(error.value), str(error.value)


NPZ = "video/vis_features/how2/clip-vit/how2_clip.npz"
BAD_FRAMES = {
    "missing": (lambda p: p.unlink(), "frame features not found"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:40]), "not a readable .npz file"),
    "no features array": (lambda p: np.savez(p, frames=np.zeros((3, 512))), "no 'features' array (it has frames)"),
    "one frame dim": (lambda p: np.savez(p, features=np.zeros(512)), "'features' should be (n_frames, dim) floats"),
    "other width": (
        lambda p: np.savez(p, features=np.zeros((3, 768))),
        "768-d frame features, other videos have 512-d",
    ),
}


@pytest.mark.parametrize("case", BAD_FRAMES)
def test_malformed_frame_features_are_one_clear_error(value_root, tmp_path, case):
    corrupt, message = BAD_FRAMES[case]
    path = tmp_path / NPZ
    path.parent.mkdir(parents=True)
    path.write_bytes((value_root / NPZ).read_bytes())
    corrupt(path)
    frames = NpzFrames(tmp_path, feat_dim=512)
    with pytest.raises(UserError) as error:
        frames("video/vis_features/how2/clip-vit/how2_clip")
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)


# ---- the sweep, through the CLI ----------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch, tmp_path_factory):
    """A fresh project folder whose backbone cache is shared by this module's tests, with quick backbones."""
    monkeypatch.setitem(backbones.BACKBONES, "tiny", FAST_BACKBONE)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path_factory.getbasetemp() / "video-cache"
    cache.mkdir(exist_ok=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cache").symlink_to(cache)
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(
        app, ["sweep", "video-text", "--epochs", "1", "--batch-size", "8", *args], catch_exceptions=False
    )


def test_sweep_video_text_end_to_end(project):
    result = invoke("--methods", "full,adapter", "--n-train", "24", "--n-val", "8", "--n-test", "12")
    assert result.exit_code == 0, result.output
    store = Store(Store.default_url(project / "runs"))
    runs = {r.method: r for r in store.runs()}
    assert set(runs) == {"full", "adapter", "text-only"} and all(r.status == "done" for r in runs.values())
    assert {r.sweep for r in runs.values()} == {"video-text-tiny"} and runs["full"].percent == pytest.approx(100.0)
    assert 0 < runs["adapter"].percent < 100
    scores = store.test_scores()
    main = scores[scores["name"] == "score"]
    assert len(main) == 3 * 4 and set(main["task"]) == set(VIDEO_TEXT_TASKS)
    qa = main[main["task"].isin(["tvqa", "how2qa"])]["value"]
    assert all(0 <= v <= 1 for v in qa) and all(v >= 0 for v in main["value"])
    assert set(scores[scores["task"] == "tvc"]["name"]) >= {"score", "CIDEr", "BLEU-4"}
    assert set(store.val_history(runs["adapter"].id)["task"]) == set(VIDEO_TEXT_TASKS)
    config = json.loads((project / "runs" / "video-text-tiny" / runs["full"].key / "config.json").read_text())
    assert config["suite"] == "video-text" and config["tasks"] == list(VIDEO_TEXT_TASKS)


def test_sweep_video_text_on_value_files(project, value_root):
    """VALUE's formats through the paper profile's loaders, on the tiny backbones."""
    result = invoke("--profile", "paper", "--backbone", "tiny", "--data-root", str(value_root), "--methods", "adapter")
    assert result.exit_code == 0, result.output
    (run,) = Store(Store.default_url(project / "runs")).runs()  # no text-only prior for real data
    assert (run.status, run.sweep, run.method) == ("done", "video-text-paper", "adapter")

    result = invoke("--profile", "paper", "--backbone", "tiny", "--data-root", str(value_root), "--features", "x")
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "--features: video-text reads its frame features from the data root" in message


def test_missing_frame_file_stops_the_sweep_before_training(project, value_root, tmp_path):
    root = write_value(tmp_path / "value")
    (root / NPZ).unlink()
    result = invoke("--profile", "paper", "--backbone", "tiny", "--data-root", str(root), "--methods", "adapter")
    message = " ".join(result.output.split())
    assert (
        result.exit_code == 2
        and f"error: {root / NPZ}: frame features not found (how2qa train example how2-7" in message
    )
    assert not Store(Store.default_url(project / "runs")).runs()
