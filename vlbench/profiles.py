"""Profiles: the defaults a sweep starts from. `tiny` runs offline on a laptop CPU; `paper` is the
paper's setting (CLIP RN101 + BART-base or T5-base, real data, the paper's hyperparameters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlbench.config import DataConfig, OptimConfig, UserError


@dataclass(frozen=True)
class Profile:
    name: str
    backbones: dict  # suite -> language model ("bart" | "t5" | "causal", flag --lm) -> key into vlbench.backbones.BACKBONES
    pool_size: int
    data: DataConfig
    optim: OptimConfig
    d_model: int  # the LM width
    lr: dict  # (method, sharing) or (method, None) -> learning rate; "default" for the rest
    hidden_dims: dict  # method -> default hidden dim (bottleneck, LoRA rank, prompt length); "default" for the rest
    # method -> its options' defaults at this profile's width (the methods' own defaults are the paper's sizes)
    method_options: dict = field(default_factory=dict)
    video_lr_scale: float = 1.0  # video-text runs train at lr * this
    cuda_precision: str = "fp32"  # the forward passes' precision on a GPU when --precision is not given

    def backbone(self, suite: str, lm: str) -> str:
        if suite not in self.backbones:
            raise UserError(f"suite: the {self.name} profile has no {suite} backbones yet")
        if lm not in self.backbones[suite]:
            choices = ", ".join(self.backbones[suite])
            raise UserError(f"--lm: unknown language model '{lm}' for {suite} (choose from {choices})")
        return self.backbones[suite][lm]

    def learning_rate(self, method: str, sharing: str | None, suite: str = "image-text") -> float:
        lr = self.lr.get((method, sharing), self.lr.get((method, None), self.lr["default"]))
        return lr * self.video_lr_scale if suite == "video-text" else lr

    def default_hidden_dim(self, method: str) -> int:
        return self.hidden_dims.get(method, self.hidden_dims["default"])


PROFILES = {
    "tiny": Profile(
        name="tiny",
        # video-text: the same tiny backbones, CLIP's image embedding per frame (vlbench.tasks.video_resources)
        backbones={"image-text": {"bart": "tiny", "t5": "tiny-t5", "causal": "tiny-causal"}, "video-text": {"bart": "tiny"}},
        pool_size=4,
        data=DataConfig(source="synthetic"),
        optim=OptimConfig(epochs=8, batch_size=32),
        d_model=64,
        # tuned on the validation split over seeds 0-2 on the recipe-3 backbones (README, tiny profile:
        # every rate tried and its scores): adapters 1e-2 at every sharing (multiple and half were 2e-3),
        # compacters 3e-2 (were 3e-3), Multiple Prompts 1e-1 and Single Prompt 3e-2 (the reverse
        # before). Hyperformer and LoRA keep the default 3e-3 (Hyperformer's 1e-2 lost on both recipes)
        lr={
            ("full", None): 5e-4,
            ("adapter", None): 1e-2,
            ("compacter", None): 3e-2,
            ("prompt", "single"): 3e-2,
            ("prompt", "multiple"): 1e-1,
            "default": 3e-3,
        },
        hidden_dims={"lst": 16, "default": 8},  # d_model / 8, as the paper's 96 for BART-base; LST d_model / 4
        # The paper's sizes, scaled so that each module keeps the share of the model it has in the paper
        # (at the paper's sizes Hyperformer and the prompts held 57% and 63% of the tiny model, against
        # 5.79% and 4.53%). A width (an embedding's) scales with the LM width, 64 / 768. A module the
        # model holds once rather than once per layer (the prompts' 800-wide MLP, each stack's 128-wide
        # projector) is ~ size x width against a body of ~ layers x width^2, so its size scales with
        # width x depth, 64/768 x 4/12: 800 -> 22, 128 -> 4. Hyperformer's generators, one per sublayer
        # kind for all layers, hold (conditioning + 1) adapters' worth each, so the conditioning scales
        # with depth, 9 x 4/12 - 1 = 2; it is 4, because the projector's LayerNorm leaves a 2-vector
        # only its sign, a 4-vector two degrees of freedom (README, tiny profile).
        method_options={
            "hyperformer": {"task_embedding_dim": 43, "hyper_projector_dim": 4, "hyper_condition_dim": 4},
            "prompt": {"prompt_mid_dim": 22},
        },
    ),
    # docs/paper-facts.md §4: 20 epochs, lr 1e-4 full, 3e-4 multiple/half adapters, 1e-3 otherwise
    "paper": Profile(
        name="paper",
        # video-text: precomputed CLIP ViT-B/32 frame embeddings (512-d) instead of RN101 grids
        backbones={"image-text": {"bart": "paper", "t5": "paper-t5", "causal": "paper-causal"},
                   "video-text": {"bart": "paper-video"}},
        pool_size=6,
        data=DataConfig(source="real", n_train=None, n_val=None, n_test=None, image_size=224),  # every example
        optim=OptimConfig(
            epochs=20, batch_size=500, task_batch_sizes=(("caption", 416), ("gqa", 833), ("nlvr", 166), ("vqa", 500))
        ),
        d_model=768,
        lr={("full", None): 1e-4, ("adapter", "multiple"): 3e-4, ("adapter", "half"): 3e-4, "default": 1e-3},
        # bottleneck 768/8 = 96; LoRA rank 128; 40 prompt tokens (docs/paper-facts.md §2); LST's side
        # network 768/4 = 192 (the LST reference's reduction factor for CLIP-BART and CLIP-T5)
        hidden_dims={"lora": 128, "prompt": 40, "lst": 192, "default": 96},
        video_lr_scale=1 / 3,  # Table 4: "we divide the learning rate by 3 for all approaches"
        cuda_precision="bf16",  # autocast on GPUs: ~2x the fp32 (TF32) step at these widths, fp32 master weights
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"--profile: unknown profile '{name}' (choose from {', '.join(PROFILES)})")
    return PROFILES[name]
