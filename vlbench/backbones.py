"""Backbones, the components: the frozen CLIP vision tower, the language model (BART, T5 or a
decoder-only LM) and their shared tokenizer; their specs, builders and loaders. The tiny profile's
pretraining recipe that makes them is vlbench/pretrain.py (called here only to fill a missing cache).

Two profiles, each with a BART and a T5 spec (and a decoder-only one):
- `paper`, `paper-t5` (and `paper-video`): CLIP RN101 (video: ViT-B/32 frame embeddings) + BART-base
  / T5-base, as in VL-Adapter. The language model and its tokenizer are read with `from_pretrained`
  from a local folder the user names (`lm_weights`, else $VLBENCH_BART_WEIGHTS / $VLBENCH_T5_WEIGHTS);
  CLIP is not loaded, its features are precomputed (`vlbench features extract`). Parameter
  accounting needs neither: it builds the architectures from their configs.
- `tiny`, `tiny-t5`, `tiny-causal`: a tiny CLIP ModifiedResNet and a tiny BART / T5 / LLaMA-style
  decoder-only LM, pretrained here on the synthetic scene suite (CLIP contrastively on image-caption
  pairs, the LM by its family's objective: denoising, or next-token prediction; vlbench/pretrain.py).
  They ship inside the package (vlbench/tiny_backbones/, made by `vlbench backbones pretrain`); a
  spec whose recipe differs from the shipped copy's is pretrained once and cached on disk. All use the
  same word-level tokenizer, so T5 and causal targets also read `<s> ... </s>`.

The vision tower returns the ResNet grid before attention pooling (paper: 7x7x2048), which the
VL model projects into the language model as visual tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import vlbench.compat  # noqa: F401  (must precede open_clip / transformers)
import open_clip
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers.utils import logging as hf_logging
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from vlbench.config import UserError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# BART's ids for <s>, <pad>, </s>, <unk> (0..3), so BartConfig's default token ids hold for our vocab
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

# facebook/bart-base architecture (139,420,416 parameters)
BART_BASE = dict(
    vocab_size=50265,
    d_model=768,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
    max_position_embeddings=1024,
    dropout=0.1,
)
# google-t5/t5-base architecture (222,903,552 parameters; tied embeddings, relu FFN, no biases)
T5_BASE = dict(
    vocab_size=32128,
    d_model=768,
    d_ff=3072,
    d_kv=64,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    dropout_rate=0.1,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
# the config and model class of each language model family
LM_CLASSES = {
    "bart": (BartConfig, BartForConditionalGeneration),
    "t5": (T5Config, T5ForConditionalGeneration),
    "causal": (LlamaConfig, LlamaForCausalLM),  # the tiny decoder-only LM: LLaMA-style
}


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # a key of BACKBONES
    clip: dict  # open_clip model config (tiny, text vocab/pad/eos filled from the tokenizer) or {"name": ...}
    lm_type: str  # "bart" | "t5" | "causal" (LM_CLASSES)
    lm: dict  # config kwargs of lm_type; "hub" names the pretrained weights the architecture stands for
    n_vis_tokens: int  # <vis_extra_id_k> tokens added to the vocab
    pretrain: dict = field(default_factory=dict)  # tiny only: corpus sizes, steps, batch sizes, lr, seed

    def key(self) -> str:
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


TINY_CLIP = {
    "embed_dim": 64,
    # width 4 -> layer4 has 4*32 = 128 channels, the grid features' share of the model about the
    # paper's (width 8 gave 256 and inflated every method's updated-params share); 128 px / 32 -> a 4x4 grid
    "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 4, "patch_size": None},
    "text_cfg": {"context_length": 32, "width": 64, "heads": 4, "layers": 2},
}
TINY_PRETRAIN = dict(
    seed=0,
    text_examples=2000,  # per task, for text_corpus (~12 sentences each)
    clip_images=8000,  # ~1.4 passes: more distinct scenes generalise better than more epochs
    clip_eval_images=256,  # held out from the contrastive training, for retrieval accuracy
    clip_steps=700,  # width 4 at 350 steps lost ~130 CIDEr for Single Adapter (README, tiny profile)
    clip_batch=128,  # large batches hold same-colour negatives, so shape must be learned
    clip_lr=3e-3,
    # the LM's corpus: text_corpus plus grounded_corpus (QA over scenes in words) repeated 3 times,
    # about half of what it reads; 1500 steps (~1.5 passes) where text_corpus alone took 600
    grounded_repeats=3,
    # and English sentences (vlbench/english_sentences.txt) repeated 3 times, a quarter of it: ~2900
    # words, so that the embedding holds a share of the LM near BART-base's (43% vs 28%)
    english_repeats=3,
    lm_steps=1500,
    lm_batch=64,
    lm_lr=2e-3,
    mask_ratio=0.3,  # fraction of tokens hidden by text infilling
)

BACKBONES: dict[str, BackboneSpec] = {
    "tiny": BackboneSpec(
        name="tiny",
        clip=TINY_CLIP,
        lm_type="bart",
        lm=dict(
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=256,
            decoder_ffn_dim=256,
            max_position_embeddings=128,
            dropout=0.1,
        ),
        n_vis_tokens=16,
        pretrain=TINY_PRETRAIN,
    ),
    "tiny-t5": BackboneSpec(
        name="tiny-t5",
        clip=TINY_CLIP,
        lm_type="t5",
        lm=dict(
            d_model=64,
            d_ff=256,
            d_kv=16,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=64,
            dropout_rate=0.1,
            # the shared tokenizer's ids (SPECIAL_TOKENS); the decoder starts from <pad> as T5's does
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        ),
        n_vis_tokens=16,
        pretrain=TINY_PRETRAIN,
    ),
    # a LLaMA-style decoder-only LM as wide and deep as the tiny BART (4 layers of 64, a SwiGLU MLP
    # with about the parameters of BART's 256-wide FFN), pretrained by next-token prediction
    "tiny-causal": BackboneSpec(
        name="tiny-causal",
        clip=TINY_CLIP,
        lm_type="causal",
        lm=dict(
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            attention_dropout=0.1,
            # the shared tokenizer's ids (SPECIAL_TOKENS)
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
        ),
        n_vis_tokens=16,
        pretrain=TINY_PRETRAIN,
    ),
    "paper": BackboneSpec(
        name="paper",
        clip={"name": "RN101"},
        lm_type="bart",
        lm={"hub": "facebook/bart-base", **BART_BASE},
        n_vis_tokens=200,
    ),
    "paper-video": BackboneSpec(
        name="paper-video",
        clip={"name": "ViT-B-32", "features": "image_embedding"},  # one 512-d embedding per frame
        lm_type="bart",
        lm={"hub": "facebook/bart-base", **BART_BASE},
        n_vis_tokens=200,
    ),
    # any decoder-only LM of the LLaMA lineage the user saved with save_pretrained: its architecture
    # is the folder's config.json ($VLBENCH_CAUSAL_WEIGHTS, or --lm-weights), not fixed here
    "paper-causal": BackboneSpec(
        name="paper-causal",
        clip={"name": "RN101"},
        lm_type="causal",
        lm={"hub": "a LLaMA-lineage LM (--lm-weights)"},
        n_vis_tokens=200,
    ),
    "paper-t5": BackboneSpec(
        name="paper-t5",
        clip={"name": "RN101"},
        lm_type="t5",
        lm={"hub": "google-t5/t5-base", **T5_BASE},
        n_vis_tokens=200,
    ),
}


class GridEncoder(nn.Module):
    """CLIP ModifiedResNet up to layer4, skipping attention pooling: (B,3,S,S) -> (B, (S/32)^2, 32*width)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.stem(images.to(v.conv1.weight.dtype))
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
        return x.flatten(2).transpose(1, 2)


@dataclass
class Backbones:
    spec: BackboneSpec
    tokenizer: PreTrainedTokenizerFast
    lm: PreTrainedModel  # BartForConditionalGeneration | T5ForConditionalGeneration
    vision: nn.Module | None  # frozen GridEncoder in eval mode; None where features are precomputed (paper)
    feat_dim: int
    grid_size: int
    image_size: int
    meta: dict = field(default_factory=dict)  # pretraining record (losses, retrieval accuracy, seconds)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        return preprocess_images(images, self.image_size)


def preprocess_images(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 HxWx3 images -> (B,3,size,size) CLIP-normalised floats (bicubic resize, no aspect keep)."""
    resized = [
        img if img.shape[:2] == (size, size) else np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
        for img in images
    ]
    return normalise_images(torch.from_numpy(np.stack(resized)))


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """(B,H,W,3) uint8 -> (B,3,H,W) float with CLIP mean/std."""
    x = images.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- builders


def build_tokenizer(sentences: list[str], n_vis_tokens: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `sentences`, BART-style <s> ... </s>, plus the visual tokens."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Metaspace marks where spaces were ("▁word"), so decoding restores "what?" vs "what ?" exactly
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="always"), pre_tokenizers.Punctuation("isolated")]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([f"<vis_extra_id_{k}>" for k in range(n_vis_tokens)], special_tokens=True)
    return tokenizer


def build_clip(spec: BackboneSpec, tokenizer: PreTrainedTokenizerFast | None = None) -> open_clip.CLIP:
    """The CLIP model of `spec`, randomly initialised. A tiny text tower takes our tokenizer's vocab."""
    if "name" in spec.clip:
        # open_clip moves the model to `device` (cpu by default), which fails inside torch.device("meta")
        return open_clip.create_model(spec.clip["name"], pretrained=None, device=torch.get_default_device())
    text_cfg = dict(
        spec.clip["text_cfg"],
        vocab_size=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        pool_type="eos",  # open_clip's default 'argmax' assumes EOT has the highest id; ours is </s> = 2
    )
    return open_clip.CLIP(embed_dim=spec.clip["embed_dim"], vision_cfg=spec.clip["vision_cfg"], text_cfg=text_cfg)


def build_lm_from_config(spec: BackboneSpec, vocab_size: int | None = None) -> PreTrainedModel:
    """The LM of `spec` (random init) with `n_vis_tokens` embedding rows appended. Needs nothing on disk.

    `vocab_size` is the text vocabulary before the visual tokens (tiny: the trained tokenizer's)."""
    lm = lm_from_spec(spec, vocab_size)
    add_vis_rows(lm, spec.n_vis_tokens)
    return lm


def architecture(spec: BackboneSpec) -> tuple[PreTrainedModel, int]:
    """The LM (random init, vis rows added) and the vision feature size of `spec`, from configs alone.

    For parameter accounting before anything is trained; build it under `torch.device("meta")`."""
    from vlbench.pretrain import text_vocab_size  # a tiny LM's vocabulary is its recipe's tokenizer's

    vocab_size = text_vocab_size(spec) if spec.pretrain else None
    return build_lm_from_config(spec, vocab_size), vision_shape(spec)[0]


def vision_shape(spec: BackboneSpec) -> tuple[int, int, int]:
    """(feature size, grid side, input image size) of the CLIP features of `spec`, from configs alone."""
    if "name" in spec.clip:
        config = open_clip.get_model_config(spec.clip["name"])
        vision_cfg = config["vision_cfg"]
        if spec.clip.get("features") == "image_embedding":  # video frames: CLIP's pooled, projected embedding
            return config["embed_dim"], 1, vision_cfg["image_size"]
    else:
        vision_cfg = spec.clip["vision_cfg"]
    # ModifiedResNet: layer4 has 8 * width bottleneck channels, expanded 4x, on a grid of the image / 32
    return vision_cfg["width"] * 32, vision_cfg["image_size"] // 32, vision_cfg["image_size"]


def lm_from_spec(spec: BackboneSpec, vocab_size: int | None) -> PreTrainedModel:
    if spec.lm_type == "causal" and not spec.pretrain:  # the user's model: its folder's config.json
        return AutoModelForCausalLM.from_config(causal_config(spec))
    kwargs = {k: v for k, v in spec.lm.items() if k != "hub"}
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    config_class, model_class = LM_CLASSES[spec.lm_type]
    return model_class(config_class(**kwargs))


def causal_config(spec: BackboneSpec):
    """The config of the paper profile's decoder-only LM, from the folder $VLBENCH_CAUSAL_WEIGHTS names."""
    from vlbench.lms import FAMILIES
    from vlbench.lms.causal import CausalFamily

    env = LM_WEIGHTS_ENV[spec.lm_type]
    source = os.environ.get(env)
    if not source:
        raise UserError(
            "--lm causal on the paper profile needs the LM's save_pretrained folder: --lm-weights DIR "
            f"(or {env}); its config.json is enough for `vlbench params` and --dry-run"
        )
    path = Path(source) / "config.json"
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable transformers config ({str(e).strip().splitlines()[0]})") from None
    known = sorted(t for t, family in FAMILIES.items() if family is CausalFamily)
    if config.model_type not in known:
        raise UserError(f"{path}: a {config.model_type} model; the causal family takes {', '.join(known)}")
    return config


def add_vis_rows(lm: PreTrainedModel, n_vis_tokens: int) -> None:
    # new rows ~ N(0, init_std), as the reference's transformers did; mean-resizing would make the
    # (frozen) visual token identities all nearly the same vector
    lm.resize_token_embeddings(lm.config.vocab_size + n_vis_tokens, mean_resizing=False)


# ----------------------------------------------------------------------------- loading


def load_backbones(
    name: str | BackboneSpec, cache_dir: Path, progress=None, lm_weights: str | Path | None = None
) -> Backbones:
    """The backbones named `name` (or a BackboneSpec). Tiny: the package's copy when today's recipe
    made it, else pretrained and cached on first use. Paper: the pretrained LM and tokenizer from
    `lm_weights`, else from the folder (or hub name) in the LM family's environment variable
    (LM_WEIGHTS_ENV)."""
    spec = name if isinstance(name, BackboneSpec) else BACKBONES.get(name)
    if spec is None:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    hf_logging.disable_progress_bar()  # transformers' tqdm bars would break vlbench's rich progress display
    if not spec.pretrain:
        return _load_pretrained_lm(spec, lm_weights or os.environ.get(LM_WEIGHTS_ENV[spec.lm_type]))
    from vlbench.pretrain import pretrain_tiny, recipe_key  # the recipe that makes a missing cache

    key = recipe_key(spec)
    folder = Path(cache_dir) / "backbones" / f"{spec.name}-{key}"
    if not folder.exists():
        folder = shipped_backbones(spec.name, key) or folder
    if not folder.exists():
        pretrain_tiny(spec, folder, progress)
    return _load_cached(spec, folder)


# the tiny backbones that ship in the package, one folder per spec name (`vlbench backbones pretrain`)
SHIPPED_DIR = Path(__file__).parent / "tiny_backbones"


def shipped_backbones(name: str, key: str) -> Path | None:
    """The shipped folder of tiny backbone `name` if recipe `key` made it. A copy made by another
    recipe is passed over with a message (the caller pretrains afresh)."""
    folder = SHIPPED_DIR / name
    if not (folder / "meta.json").exists():
        return None
    made_by = json.loads((folder / "meta.json").read_text()).get("recipe_key")
    if made_by == key:
        return folder
    log.warning(
        "the shipped %s backbones were made by recipe %s, not today's %s: pretraining afresh "
        "(`vlbench backbones pretrain` regenerates the shipped copy)", name, made_by, key,
    )  # fmt: skip
    return None


def _load_cached(spec: BackboneSpec, folder: Path) -> Backbones:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    clip = build_clip(spec, tokenizer)
    clip.load_state_dict(load_file(folder / "clip.safetensors"))
    lm = LM_CLASSES[spec.lm_type][1].from_pretrained(folder / "lm")
    vision = GridEncoder(clip.visual).eval().requires_grad_(False)
    image_size = clip.visual.image_size
    return Backbones(
        spec=spec,
        tokenizer=tokenizer,
        lm=lm,
        vision=vision,
        feat_dim=clip.visual.layer4[-1].conv3.out_channels,
        grid_size=image_size // 32,
        image_size=image_size,
        meta=json.loads((folder / "meta.json").read_text()),
    )


# where the paper profiles' language model is, per LM family: a save_pretrained folder of the model
# and its tokenizer (or a hub name, which from_pretrained reads through the Hugging Face cache)
LM_WEIGHTS_ENV = {"bart": "VLBENCH_BART_WEIGHTS", "t5": "VLBENCH_T5_WEIGHTS", "causal": "VLBENCH_CAUSAL_WEIGHTS"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "facebook/bart-base", "t5-base"


def _load_pretrained_lm(spec: BackboneSpec, source: str | Path | None) -> Backbones:
    """The pretrained LM and tokenizer of a paper spec from `source`, with the visual tokens added."""
    env, hub = LM_WEIGHTS_ENV[spec.lm_type], spec.lm["hub"]
    if source is None:
        raise UserError(
            f"backbone {spec.name!r} needs the pretrained {hub} and its tokenizer: set {env} to a folder saved with "
            f"save_pretrained (model and tokenizer), or to the hub name {hub} to use the Hugging Face cache; "
            "`vlbench params` and `--dry-run` work without it"
        )
    if Path(source).exists():
        _check_lm_folder(Path(source), spec)
        problem = "cannot load the model and tokenizer in this folder"
    elif HUB_NAME.fullmatch(str(source)):
        problem = "no such folder, and cannot load it as a hub name"
    else:
        raise UserError(f"{source}: no such folder (from {env} or the lm_weights argument)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model_class = AutoModelForCausalLM if spec.lm_type == "causal" else LM_CLASSES[spec.lm_type][1]
        lm, info = model_class.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # anything a broken folder or an uncached hub name raises, as one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{source}: {problem} ({type(e).__name__}: {reason})") from e
    # a checkpoint of another model loads with warnings and random weights: refuse instead
    parameters = dict(lm.named_parameters())  # tied weights once, under their first name
    missing = [k for k in info["missing_keys"] if k in parameters]
    if missing:
        raise UserError(f"{source}: the checkpoint lacks {len(missing)} weights of the model (e.g. {missing[0]}); is it {hub}?")
    if "<vis_extra_id_0>" in tokenizer.get_vocab():
        raise UserError(f"{source}: the tokenizer already has <vis_extra_id_k> tokens; give the plain {hub} folder")
    if len(tokenizer) > lm.config.vocab_size:
        raise UserError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens, more than the model's {lm.config.vocab_size} "
            "embedding rows: tokenizer and weights come from different models"
        )
    if spec.lm_type == "causal":
        fit_causal_tokenizer(tokenizer, lm.config, source)
    differs = [f"{k}={getattr(lm.config, k, None)}" for k, v in spec.lm.items() if k != "hub" and getattr(lm.config, k, None) != v]
    if differs:
        log.warning("%s is not %s (%s): parameter counts will differ from the paper's", source, hub, ", ".join(differs))
    # The vis rows follow the model's vocabulary, where the VL model reads them (counted from the end).
    # T5-base's table has 28 rows more than its tokenizer, so there the tokenizer's ids of the vis
    # tokens are not their rows; nothing looks them up through the tokenizer.
    tokenizer.add_tokens([f"<vis_extra_id_{k}>" for k in range(spec.n_vis_tokens)], special_tokens=True)
    add_vis_rows(lm, spec.n_vis_tokens)
    feat_dim, grid_size, image_size = vision_shape(spec)
    return Backbones(
        spec=spec,
        tokenizer=tokenizer,
        lm=lm.eval(),
        vision=None,
        feat_dim=feat_dim,
        grid_size=grid_size,
        image_size=image_size,
        meta={"lm_weights": str(source)},
    )


def fit_causal_tokenizer(tokenizer, config, source) -> None:
    """Make a decoder-only LM's tokenizer write what vlbench's sequences need, which GPT-2's and LLaMA's
    do not: every text as `<bos> text <eos>` (a target must end with EOS for generation to stop, and
    the family reads a choice after the BOS the model's config names) and a pad token (EOS where there
    is none: padded inputs are masked out and padded labels are -100)."""
    if not tokenizer.is_fast:
        raise UserError(f"{source}: needs a fast tokenizer (tokenizer.json) for a decoder-only LM")
    if tokenizer.eos_token is None:
        raise UserError(f"{source}: the tokenizer has no EOS token, which ends every target")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bos = tokenizer.convert_ids_to_tokens(config.bos_token_id) if config.bos_token_id is not None else None
    special = [(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys([bos, tokenizer.eos_token]) if t]
    template = f"{bos} $A {tokenizer.eos_token}" if bos else f"$A {tokenizer.eos_token}"
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=template, pair=f"{template} $B {tokenizer.eos_token}", special_tokens=special
    )


def _check_lm_folder(folder: Path, spec: BackboneSpec) -> None:
    """The usual ways a weight folder is wrong, each named, before transformers tries to read it."""
    hub = spec.lm["hub"]
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected a save_pretrained folder of {hub} and its tokenizer)")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json (expected a save_pretrained folder of {hub} and its tokenizer)")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise UserError(f"{folder / 'config.json'}: not a JSON object (a transformers model config)") from None
    if spec.lm_type == "causal":
        causal_config(spec)  # a model type of the causal family
    elif model_type != spec.lm_type:
        raise UserError(f"{folder}: holds a {model_type} model; backbone {spec.name!r} needs {spec.lm_type} ({hub})")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{folder}: no model weights (model.safetensors or pytorch_model.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"{folder}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt, or spiece.model): "
            "save the tokenizer into the same folder"
        )
