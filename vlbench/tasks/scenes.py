"""Deterministic synthetic scenes of coloured shapes: the images and words of the tiny suite.

A scene is plain data (a tuple of objects with colour, shape, position and size). Questions,
statements and captions are derived from the scene spec, never from pixels; pixels come from
`render`. Objects sit in distinct vertical columns (a quarter of the image wide), so they never
overlap and "left of" is always unambiguous. All randomness comes from explicit RNG objects.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# the scenes' and their renderer's version, for fingerprints and the tiny backbones' cache key
VERSION = 1

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
KINDS = tuple((color, shape) for color in COLORS for shape in SHAPES)
BACKGROUND = (25, 25, 35)
MAX_OBJECTS = 4
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Column layout: centres 1/4 apart, jitter +-0.02 and radius <= 0.10 keep neighbours >= 0.01 apart.
_COLUMN_JITTER = 0.02
_RADIUS_RANGE = (0.06, 0.10)


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    x: float  # centre, as a fraction of the image width
    y: float
    radius: float  # half the object's extent, as a fraction of the image size


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # sorted left to right

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum(
            (shape is None or o.shape == shape) and (color is None or o.color == color) for o in self.objects
        )


def random_kinds(rng: random.Random, n: int, exclude: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    """n random (colour, shape) pairs, none of them in `exclude`."""
    allowed = [k for k in KINDS if k not in exclude]
    return [rng.choice(allowed) for _ in range(n)]


def place(rng: random.Random, kinds: list[tuple[str, str]]) -> Scene:
    """Lay out the given (colour, shape) pairs at random distinct columns, in random order."""
    kinds = list(kinds)
    rng.shuffle(kinds)
    columns = sorted(rng.sample(range(MAX_OBJECTS), len(kinds)))
    objects = []
    for (color, shape), column in zip(kinds, columns):
        x = (column + 0.5) / MAX_OBJECTS + rng.uniform(-_COLUMN_JITTER, _COLUMN_JITTER)
        objects.append(SceneObject(color, shape, x, rng.uniform(0.2, 0.8), rng.uniform(*_RADIUS_RANGE)))
    return Scene(tuple(objects))


def random_scene(rng: random.Random, min_objects: int = 1, max_objects: int = MAX_OBJECTS) -> Scene:
    return place(rng, random_kinds(rng, rng.randint(min_objects, max_objects)))


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 image."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        cx, cy, r, fill = o.x * size, o.y * size, o.radius * size, COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            half = 0.85 * r  # a square as wide as the circle looks bigger; keep areas comparable
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    return np.asarray(image, dtype=np.uint8)


class SyntheticImageBank:
    """image_id -> scene spec; images are rendered on demand."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.scenes: dict[str, Scene] = {}

    def add(self, image_id: str, scene: Scene) -> str:
        if image_id in self.scenes:
            raise ValueError(f"image id {image_id} already in the bank")
        self.scenes[image_id] = scene
        return image_id

    def scene(self, image_id: str) -> Scene:
        return self.scenes[image_id]

    def render(self, image_id: str) -> np.ndarray:
        return render(self.scenes[image_id], self.image_size)

    def ids(self) -> list[str]:
        return sorted(self.scenes)


# ---- captions ---------------------------------------------------------------------------------


def object_phrase(o: SceneObject) -> str:
    return f"a {o.color} {o.shape}"  # every colour starts with a consonant, so always "a"


def _listing(objects) -> str:
    return " and ".join(object_phrase(o) for o in objects)


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Five reference captions: the same content in different phrasings and object orders."""
    left_to_right = _listing(scene.objects)

    def shuffled() -> str:
        objects = list(scene.objects)
        rng.shuffle(objects)
        return _listing(objects)

    n = len(scene.objects)
    return [
        left_to_right,
        f"there {'is' if n == 1 else 'are'} {shuffled()}",
        f"an image of {shuffled()}",
        f"from left to right {left_to_right}",
        f"{NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'} {shuffled()} on a dark background",
    ]


def pretraining_corpus(n_images: int, image_size: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Images with one caption each, for contrastive pretraining of a tiny CLIP."""
    rng = random.Random(f"pretraining-{seed}")
    images, texts = [], []
    for _ in range(n_images):
        scene = random_scene(rng)
        images.append(render(scene, image_size))
        texts.append(rng.choice(captions(scene, rng)))
    return images, texts


def _training_suite(n: int, seed: int):
    """A suite of every image-text task with n training examples each and no other split (its
    images are never rendered, so their size is nominal)."""
    from vlbench.config import DataConfig
    from vlbench.tasks import TASKS, build_suite  # tasks are built on this module: import late

    return build_suite(DataConfig(seed=seed, n_train=n, n_val=0, n_test=0, image_size=8), tuple(TASKS))


def text_corpus(n: int, seed: int) -> list[str]:
    """Sentences covering every word the suite can produce (tokenizer training, BART denoising).

    Samples n examples per task and split from a suite built with `seed`, and lists each example's
    prefixed input, targets and answers, plus one sentence naming every colour, shape and number.
    """
    from vlbench.tasks import TASKS  # tasks are built on this module: import late

    suite = _training_suite(n, seed)
    vocabulary = list(COLORS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(NUMBER_WORDS)
    vocabulary += [str(i) for i in range(MAX_OBJECTS + 1)] + ["yes", "no", "true", "false"]
    sentences = [" ".join(vocabulary)]
    for name, splits in suite.examples.items():
        for example in splits["train"]:
            sentences.append(TASKS[name].prefix + example.text)
            sentences.extend(dict.fromkeys(example.targets + example.answers))
    return sentences


def described_scenes(scenes: list[Scene]) -> str:
    """The example's images in words: one scene left to right, or a pair as NLVR2's statements name them."""
    if len(scenes) == 1:
        return _listing(scenes[0].objects)
    left, right = scenes
    return f"left image {_listing(left.objects)} right image {_listing(right.objects)}"


def grounded_corpus(n: int, seed: int) -> list[str]:
    """Question answering over scenes given in words: each QA example's input, then its images
    described left to right, then its answer (e.g. "vqa: is there a red circle? a red circle and a blue
    square yes"). The tiny LM's stand-in for what a large LM knows about language before it sees an
    image; the scenes come from a suite of another seed than the fine-tuning splits' (seed + 1000).
    """
    from vlbench.tasks import TASKS  # tasks are built on this module: import late

    suite = _training_suite(n, seed + 1000)
    sentences = []
    for name, splits in suite.examples.items():
        if TASKS[name].decode == "beam":  # captions are descriptions already (text_corpus has them)
            continue
        for example in splits["train"]:
            scenes = [suite.bank.scene(i) for i in example.image_ids]
            sentences.append(f"{TASKS[name].prefix}{example.text} {described_scenes(scenes)} {example.targets[0]}")
    return sentences
