"""What the four video-text tasks share: clips, subtitles, the model's text input, VALUE's files.

A video is a sequence of frames, one per second, each a precomputed CLIP image embedding (paper:
CLIP ViT-B/32, 512-d, at most 64 frames; a longer video is max-pooled over time down to 64, as the
reference code does); the model gives each frame one visual token. As in the reference code
(VL_adapter `video/*_data.py`), the subtitles, the question and the candidates are text, with the
task prompt at the end:

    QA       "[Subs] {subtitles} [Q] {question} [TS] ({ts}) [Choices] a0: {a0}. a1: {a1}. ... tvqa: "  -> "a2"
    caption  "[Subs] {subtitles} [TS] ({ts}) tvc: "                                             -> a caption

Real data: VALUE's release (github VALUE-Leaderboard/DataRelease) in the reference's layout under
the data root (VL_adapter `datasets/`):

    video/ann/{tv,how2,yc2}_subtitles.jsonl   {"vid_name", "sub": [{"text", "start", "end"}, ...]} per line
    video/ann/<task>/<task>_<split>.jsonl     one record per question (QA) or clip (captions)
    video/vis_features/{tv,how2,yc2}/clip-vit/<vid_name>.npz   array "features": (n_frames, 512)

An example's video id is its feature file without `.npz`, relative to the data root, so TVQA and TVC
share the TV show features. VALUE withholds the test labels: a test file without them is a
UserError (put a labelled file at that path to score locally).

Synthetic data (the tiny profile): clips of 4-6 frames of coloured shapes (vlbench.tasks.scenes
renders each frame). The shapes drift up or down, and each does one thing over the clip: comes in,
goes out, comes and goes, goes and comes back, or stays. (On screen or not is what the tiny CLIP's
frame embedding shows: a linear probe reads each kind's presence from it at 99.7%, while left/right
motion of a shape that stays on screen was not readable, so events are presence patterns.) The
subtitles say what the frames cannot (who owns a shape, what it is called, which colour a narrator
means); the frames say what is on screen when. Each QA task draws its answers uniformly, so the text
alone is at chance. Its candidates stay in one order: with them shuffled, a tiny model trained for 8
epochs stayed at chance (a pointer from the frames to a candidate's text is far harder to learn than
an answer class); in this order it reaches 61% / 46% (TVQA / How2QA, chance 20% / 25%).
"""

from __future__ import annotations

import functools
import json
import random
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlbench.config import UserError
from vlbench.metrics import accuracy
from vlbench.tasks.base import Example, Task, check_unique, field, json_type
from vlbench.tasks.caption import CaptionTask
from vlbench.tasks.scenes import (
    COLORS,
    KINDS,
    MAX_OBJECTS,
    SHAPES,
    Scene,
    SceneObject,
    render,
)

MAX_FRAMES = 64  # the paper's cap on frames per video
CLIP_FRAMES = (4, 6)  # synthetic clips: 4 to 6 frames, one per second
EVENTS = ("comes in", "goes out", "comes and goes", "goes and comes back", "stays")  # what a shape does in a clip
NAMES = ("tom", "anna", "sam", "lily", "max", "zoe")  # TV characters, who own the shapes
INGREDIENTS = ("egg", "milk", "flour", "salt", "butter", "sugar")  # what the shapes are in a recipe


# ---- synthetic clips ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """One shape of a clip: where it drifts and in which frames it is on screen."""

    color: str
    shape: str
    event: str  # one of EVENTS, what `on` shows
    x: float
    y: tuple[float, float]  # centre at the first and at the last frame: shapes drift up or down
    radius: float
    on: tuple[bool, ...]  # per frame: is it on screen

    def at(self, k: int) -> SceneObject | None:
        if not self.on[k]:
            return None
        y = self.y[0] + (self.y[1] - self.y[0]) * k / (len(self.on) - 1)
        return SceneObject(self.color, self.shape, self.x, y, self.radius)

    @property
    def phrase(self) -> str:
        return f"the {self.color} {self.shape}"


@dataclass(frozen=True)
class Clip:
    tracks: tuple[Track, ...]
    n_frames: int

    def frame(self, k: int) -> Scene:
        objects = [o for t in self.tracks if (o := t.at(k)) is not None]
        return Scene(tuple(sorted(objects, key=lambda o: o.x)))

    @property
    def ts(self) -> str:
        return f"0-{self.n_frames}"


def on_screen(event: str, n_frames: int, t1: int, t2: int) -> tuple[bool, ...]:
    """Per frame, whether a shape doing `event` is on screen, for change times 0 < t1 < t2 <= n_frames."""
    visible = {
        "comes in": lambda k: k >= t1,
        "goes out": lambda k: k < t1,
        "comes and goes": lambda k: t1 <= k < t2,
        "goes and comes back": lambda k: not t1 <= k < t2,
        "stays": lambda k: True,
    }[event]
    return tuple(visible(k) for k in range(n_frames))


def random_clip(
    rng: random.Random,
    events: Sequence[str],
    n_frames: int | None = None,
    times: Sequence[int] | None = None,
    kinds: Sequence[tuple[str, str]] | None = None,
) -> Clip:
    """A clip of `n_frames` frames (default: random) and one shape per event, in order: of the given
    (colour, shape) `kinds`, else of distinct random ones.

    Each shape has its own column (so shapes never overlap) and drifts up or down. `times` gives the
    frame at which each shape first changes (comes in, goes out); otherwise it is random. A shape
    that changes twice is back after at least one frame (and before the end if it comes and goes).
    """
    n_frames = n_frames or rng.randint(*CLIP_FRAMES)
    kinds = kinds or rng.sample(KINDS, len(events))
    columns = rng.sample(range(MAX_OBJECTS), len(events))
    tracks = []
    for i, (event, (color, shape), column) in enumerate(zip(events, kinds, columns)):
        t1 = times[i] if times is not None else rng.randint(1, n_frames - 2)
        t2 = rng.randint(t1 + 1, n_frames - 1) if t1 < n_frames - 1 else n_frames
        x = (column + 0.5) / MAX_OBJECTS + rng.uniform(-0.02, 0.02)
        y = rng.uniform(0.2, 0.8)
        y = (y, min(0.85, max(0.15, y + rng.uniform(-0.25, 0.25))))
        tracks.append(Track(color, shape, event, x, y, rng.uniform(0.06, 0.10), on_screen(event, n_frames, t1, t2)))
    return Clip(tuple(tracks), n_frames)


class SyntheticClipBank:
    """clip id -> Clip; frame k of a clip is the image `<clip id>/<k>`, rendered on demand."""

    version = 1  # of the clips and their rendering, for fingerprints

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.clips: dict[str, Clip] = {}

    def add(self, clip_id: str, clip: Clip) -> str:
        if clip_id in self.clips:
            raise ValueError(f"clip id {clip_id} already in the bank")
        self.clips[clip_id] = clip
        return clip_id

    def scene(self, clip_id: str) -> Clip:  # what Suite.fingerprint hashes
        return self.clips[clip_id]

    def frame_ids(self, clip_id: str) -> list[str]:
        return [f"{clip_id}/{k}" for k in range(self.clips[clip_id].n_frames)]

    def render(self, frame_id: str) -> np.ndarray:
        clip_id, k = frame_id.rsplit("/", 1)
        return render(self.clips[clip_id].frame(int(k)), self.image_size)


# ---- the model's text input (the reference's format) --------------------------------------------


def qa_text(subtitles: Sequence[str], question: str, ts: str, choices: Sequence[str]) -> str:
    listed = " ".join(f"a{i}: {choice.strip('. ')}." for i, choice in enumerate(choices))
    return f"[Subs] {' '.join(subtitles)} [Q] {question.strip()} [TS] ({ts}) [Choices] {listed}"


def caption_text(subtitles: Sequence[str], ts: str) -> str:
    return f"[Subs] {' '.join(subtitles)} [TS] ({ts})"


class VideoTask(Task):
    """The prompt goes after the text, as the reference puts it for the video tasks."""

    max_input_tokens = 600  # the reference's cut (subtitles can be long)
    subtitles: str  # real data: the subtitle file under the data root
    frames: str  # real data: the folder of per-video frame features under the data root

    def input_text(self, example: Example) -> str:
        return f"{example.text} {self.prefix}"

    def video_id(self, vid_name: str) -> str:
        return f"{self.frames}/{vid_name}"


class VideoQATask(VideoTask):
    """Multiple choice: the candidates are in the text, the target is the answer's label "a<k>"."""

    decode = "greedy"
    max_target_tokens = 2
    metric_name = "accuracy"
    n_choices: int

    def example(self, uid: str, video_id: str, text: str, answer: int) -> Example:
        label = f"a{answer}"
        return Example(uid, self.name, (video_id,), text, (label,), None, (label,))

    def load(self, root: Path, split: str) -> list[Example]:
        """VALUE's QA records: `vid_name`, `q`, `a0`.., `answer_idx`, `qid`, `ts`."""
        (path,) = self.paths(root, split)
        subtitles = read_subtitles(Path(root) / self.subtitles)
        examples = []
        for where, record in read_jsonl(path):
            vid_name = field(where, record, "vid_name", "a string")
            if "answer_idx" not in record:
                raise UserError(f"{where}: no 'answer_idx'; {WITHHELD}")
            answer = field(where, record, "answer_idx", "an integer")
            if not 0 <= answer < self.n_choices:
                raise UserError(f"{where}: answer_idx {answer} is not a candidate (a0..a{self.n_choices - 1})")
            choices = [field(where, record, f"a{i}", "a string") for i in range(self.n_choices)]
            subs = subtitles_of(subtitles, vid_name, where)
            text = qa_text(subs, field(where, record, "q", "a string"), ts_field(where, record), choices)
            uid = str(field(where, record, "qid", "a string or an integer"))
            examples.append(self.example(uid, self.video_id(vid_name), text, answer))
        check_unique(examples, str(path), "qid")
        return examples

    def metric(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        return {"score": accuracy(predictions, [e.answers[0] for e in examples])}


class VideoCaptionTask(VideoTask, CaptionTask):
    """Captioning (trained one example per reference, CIDEr-D), with subtitles in the input."""

    def example(self, uid: str, video_id: str, text: str, references: Sequence[str]) -> Example:
        return Example(uid, self.name, (video_id,), text, tuple(references), None, tuple(references))

    def load(self, root: Path, split: str) -> list[Example]:
        """VALUE's caption records: `vid_name`, `ts`, `clip_id`, `descs` [{"desc", ...}]: one example per clip."""
        (path,) = self.paths(root, split)
        subtitles = read_subtitles(Path(root) / self.subtitles)
        examples = []
        for where, record in read_jsonl(path):
            vid_name = field(where, record, "vid_name", "a string")
            if "descs" not in record:
                raise UserError(f"{where}: no 'descs'; {WITHHELD}")
            descs = object_list(where, record, "descs")
            if not descs:
                raise UserError(f"{where}: 'descs' is empty")
            references = [field(f"{where}: descs[{i}]", d, "desc", "a string").strip() for i, d in enumerate(descs)]
            text = caption_text(subtitles_of(subtitles, vid_name, where), ts_field(where, record))
            uid = str(field(where, record, "clip_id", "a string or an integer"))
            examples.append(self.example(uid, self.video_id(vid_name), text, references))
        check_unique(examples, str(path), "clip_id")
        return examples


# ---- reading VALUE's files ----------------------------------------------------------------------

WITHHELD = "VALUE withholds the test labels (for its leaderboard); to score here, put a labelled file at this path"


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(where, record) per line of a JSON Lines file; a UserError naming the file (and line) if it is
    missing, empty or not one JSON object per line."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON ({e})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{where}: should be a JSON object, got {json_type(record)}")
                records.append((where, record))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    if not records:
        raise UserError(f"{path}: no records")
    return records


@functools.lru_cache(maxsize=4)  # TVQA and TVC read the same TV subtitles, three splits each
def read_subtitles(path: Path) -> dict[str, list[str]]:
    """vid_name -> its subtitle lines, from a VALUE subtitle file."""
    subtitles = {}
    for where, record in read_jsonl(path):
        vid_name = field(where, record, "vid_name", "a string")
        lines = object_list(where, record, "sub")
        subtitles[vid_name] = [field(f"{where}: sub[{i}]", x, "text", "a string").strip() for i, x in enumerate(lines)]
    return subtitles


def subtitles_of(subtitles: dict[str, list[str]], vid_name: str, where: str) -> list[str]:
    if vid_name not in subtitles:
        raise UserError(f"{where}: video {vid_name!r} has no line in the subtitle file")
    return subtitles[vid_name]


def ts_field(where: str, record: dict) -> str:
    """The question's or caption's moment, written as the reference writes it ("20.16-25.12", "[35.73, 40.9]")."""
    ts = record.get("ts")
    if isinstance(ts, str) or (isinstance(ts, list) and len(ts) == 2 and all(json_type(t) == "a number" for t in ts)):
        return str(ts)
    raise UserError(f"{where}: field 'ts' should be a string or a [start, end] pair of numbers, got {json_type(ts)}")


def object_list(where: str, record: dict, name: str) -> list[dict]:
    """record[name], checked to be a list of JSON objects."""
    items = field(where, record, name, "a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}: {name}[{i}] should be an object, got {json_type(item)}")
    return items


# ---- frame features -----------------------------------------------------------------------------


def fit_frames(frames: torch.Tensor, max_frames: int) -> torch.Tensor:
    """(n, F) -> at most `max_frames` frames: a longer video is max-pooled over time, as the reference does."""
    if len(frames) <= max_frames:
        return frames
    return F.adaptive_max_pool1d(frames.t().unsqueeze(0), max_frames)[0].t()


class FrameFeatures:
    """Video id -> (n_frames, F) features, read by `read`; `clips` pads a batch to its longest clip."""

    def __init__(self, read: Callable[[str], torch.Tensor], feat_dim: int, max_frames: int, name: str):
        self.read = read
        self.feat_dim = feat_dim
        self.max_frames = max_frames
        self.name = name

    def clips(self, video_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) float32 features and the (B, T) mask: 1 on frames, 0 on padding."""
        clips = [fit_frames(self.read(v), self.max_frames) for v in video_ids]
        feats = torch.zeros(len(clips), max(len(c) for c in clips), self.feat_dim)
        mask = torch.zeros(feats.shape[:2], dtype=torch.long)
        for i, clip in enumerate(clips):
            feats[i, : len(clip)] = clip
            mask[i, : len(clip)] = 1
        return feats, mask


class NpzFrames:
    """A video's frame features from `<root>/<video id>.npz`, array "features" (n_frames, F), as VALUE ships them."""

    def __init__(self, root: Path, feat_dim: int | None = None):
        self.root = Path(root)
        self.feat_dim = feat_dim  # the first file read sets it; every other file must match

    def path(self, video_id: str) -> Path:
        return self.root / f"{video_id}.npz"

    def __call__(self, video_id: str) -> torch.Tensor:
        path = self.path(video_id)
        if not path.is_file():
            raise UserError(f"{path}: frame features not found")
        try:
            with np.load(path) as npz:
                if "features" not in npz.files:
                    raise UserError(f"{path}: no 'features' array (it has {', '.join(npz.files) or 'none'})")
                frames = npz["features"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
        if frames.ndim != 2 or len(frames) == 0 or not np.issubdtype(frames.dtype, np.floating):
            raise UserError(f"{path}: 'features' should be (n_frames, dim) floats, got {frames.dtype} {frames.shape}")
        if self.feat_dim is None:
            self.feat_dim = frames.shape[1]
        elif frames.shape[1] != self.feat_dim:
            raise UserError(f"{path}: {frames.shape[1]}-d frame features, other videos have {self.feat_dim}-d")
        return torch.from_numpy(frames.astype(np.float32))


def video_text_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Sentences covering every word the synthetic video suite can produce (the tiny tokenizer's video words).

    Samples n training examples per task and lists each one's input, targets and answers, plus one
    sentence naming every word the generators draw from."""
    from vlbench.config import DataConfig
    from vlbench.tasks import (  # the registry is built on this module: import late
        VIDEO_TASKS,
        build_suite,
    )

    suite = build_suite(DataConfig(seed=seed, n_train=n, n_val=0, n_test=0, image_size=8), tuple(VIDEO_TASKS))
    words = [*NAMES, *INGREDIENTS, *COLORS, *SHAPES, *EVENTS]
    words += [str(k) for k in range(max(CLIP_FRAMES) + 1)] + [f"a{k}" for k in range(5)]
    sentences = [" ".join(words)]
    for name, splits in suite.examples.items():
        for example in splits["train"]:
            sentences.append(VIDEO_TASKS[name].input_text(example))
            sentences.extend(dict.fromkeys(example.targets + example.answers))
    return sentences
