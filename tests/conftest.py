import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("OMP_NUM_THREADS", "2")

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import vlbench  # noqa: E402,F401  (installs the torchvision import fix before transformers loads)
from vlbench.backbones import BACKBONES, build_lm_from_config  # noqa: E402
from vlbench.config import RunConfig  # noqa: E402
from vlbench.model import VLModel  # noqa: E402
from vlbench.params import skeleton_model  # noqa: E402

pytest_plugins = ["services"]  # real PostgreSQL and Slurm, started by scripts/local-*.sh (tests/services.py)

TASKS = ("vqa", "gqa", "nlvr", "caption")

# the tiny backbone recipe at a few steps: same code paths, seconds instead of a minute
FAST_BACKBONE = dataclasses.replace(
    BACKBONES["tiny"],
    pretrain=dict(
        seed=0,
        text_examples=50,
        clip_images=64,
        clip_eval_images=32,
        clip_steps=3,
        clip_batch=16,
        clip_lr=3e-3,
        grounded_repeats=1,
        lm_steps=3,
        lm_batch=16,
        lm_lr=2e-3,
        mask_ratio=0.3,
    ),
)
FEAT_DIM = 32
GRID = 4


def tiny_vl_model(seed: int = 0, vocab: int = 40) -> VLModel:
    """A small randomly initialised VL model (tiny BART dims) for fast unit tests."""
    torch.manual_seed(seed)
    lm = build_lm_from_config(BACKBONES["tiny"], vocab_size=vocab)
    return VLModel(lm, FEAT_DIM, BACKBONES["tiny"].n_vis_tokens, pool_size=3)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def training_step(model) -> tuple[dict[str, torch.Tensor], set[str]]:
    """One AdamW step on `random_batch()` (task vqa), checking that gradients reach exactly the
    trainable parameters: (every parameter before the step, the names of those the step changed)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.router.task = "vqa"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.loss(random_batch()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    opt.step()
    return before, {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def random_batch(batch_size: int = 3, n_images: int = 1, text_len: int = 5, target_len: int = 4, vocab: int = 40):
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab, (batch_size, text_len), generator=g)
    labels = torch.randint(5, vocab, (batch_size, target_len), generator=g)
    labels[0, -1] = -100  # padding is ignored
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "feats": torch.randn(batch_size, n_images, GRID * GRID, FEAT_DIM, generator=g),
        "labels": labels,
        "weights": torch.ones(batch_size),
    }


def paper_model(method: str, sharing: str | None = None, hidden_dim: int | None = None, **options) -> VLModel:
    """CLIP-BART-base of the paper profile with `method` applied, on meta tensors (shapes only)."""
    cfg = RunConfig(
        profile="paper", backbone="paper", pool_size=6, tasks=TASKS, method=method, sharing=sharing,
        hidden_dim=hidden_dim, method_options=tuple(sorted(options.items())),
    )
    return skeleton_model(cfg)


def distinct_losses_per_task(model: VLModel) -> int:
    """How many different losses the tasks' routes give on one batch (1 when every task shares modules)."""
    model.eval()
    batch = random_batch()
    losses = set()
    for task in TASKS:
        model.router.task = task
        losses.add(round(model.loss(batch).item(), 5))
    return len(losses)


def assert_gradients_reach_only(model: VLModel, modules: str, task: str) -> None:
    """After a backward pass on `task`, only that task's modules under method_modules[modules] have gradients."""
    model.router.task = task
    model.loss(random_batch()).backward()
    for n, p in model.method_modules[modules].named_parameters():
        assert (p.grad is not None) == (f".{task}." in n), n


@pytest.fixture
def vl_model():
    return tiny_vl_model()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def workdir(tmp_path, monkeypatch, shared_cache):
    """A fresh project folder whose runs/cache is shared across tests, with quick backbones and no
    VLBENCH_DATA_ROOT from the developer's environment."""
    from vlbench import backbones

    monkeypatch.setitem(backbones.BACKBONES, "tiny", FAST_BACKBONE)
    monkeypatch.delenv("VLBENCH_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cache").symlink_to(shared_cache)
    return tmp_path
