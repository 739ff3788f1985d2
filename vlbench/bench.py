"""`vlbench bench`: how fast vlbench trains, decodes and reads its data on this device.

    run_bench(BenchOptions(...)) -> dict     every measurement, in one process (the JSON document)
    render_markdown(result) -> str           the same as a report
    write_bench(result, folder) -> paths     <device>-<backbone>-<precision>.json and .md, atomically

What is measured, in this order (random weights everywhere: only the timing matters):

1. peak: the device's dense matmul rate in fp32 and bf16 (square matmuls of growing size, best run).
2. methods: per method, vlbench's own VL model (methods.build_vl_model on the backbone's LM) trained
   on one batch of the profile's real shapes (paper: 20 text tokens, 36 visual tokens max-pooled 6x6
   from a 7x7x2048 grid, 10 target tokens), with the engine's optimizer (engine.build_optimizer) and
   the engine's step: forward, loss.item(), zero_grad, backward, clip_grad_norm_, optimizer and
   scheduler steps. Warm-up steps are excluded; the median of the timed steps is `step_s`. Peak
   memory is CUDA's max allocated, on CPU the RSS growth over the steps (sampled by a thread).
   FLOPs are counted (torch.utils.flop_counter) over one more step; MFU = FLOPs / step_s / the
   matmul rate measured beside those steps (a loop at the peak's best size before each timed step).
   `vs_full` and `vs_floor` are step-time ratios to full fine-tuning and to `proj-only` (only
   theta V->L trains: the backward runs only through activations, the least a frozen LM can cost).
   The floor's model stays resident and every other method's timed steps alternate with floor
   steps: `vs_floor` divides by the floor steps taken beside it, and `vs_full` is the ratio of two
   such ratios, so a machine whose speed drifts during the run still gives comparable ratios.
3. decode: greedy (VQA's token budget) and beam-5 (captions') generation, and NLVR2's one-step
   choice scoring, in sequences/s at the profile's eval batch size, on the full fine-tuning model;
   greedy and beam also as ratios to transformers' `generate` on the same batch, with a check that
   the tokens are identical. Random weights rarely emit </s>, so every sequence runs to the budget:
   the speed-up from rows leaving the batch early is not in these figures.
4. data: images/s read from a safetensors ShardStore and from the h5 layout (a few hundred random
   fp16 grids in a temporary folder, so warm page cache), and the share of a training step the
   engine spends collating its batch from the ShardStore (engine.train collates synchronously).
5. extract: CLIP grid extraction images/s through the backbone's vision tower (tiny: the tiny CLIP
   ResNet at 128 px; paper: open_clip RN101 at 224 px), decoding and resizing excluded.

A run uses every core this process may run on (torch threads = the CPU affinity) and no more.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vlbench.config import RunConfig, UserError
from vlbench.distributed import cores_available
from vlbench.engine import PRECISIONS, autocast, prepare_device
from vlbench.memory import PeakMemory, release_memory

DEFAULT_BATCH_SIZE = 16
DEVICES = ("cpu", "cuda")
FORMATS = ("markdown", "json")
FLOOR = "proj-only"  # the frozen floor: only theta V->L trains
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Shapes:
    """One training example as the profile's real tasks shape it (the grid comes from the backbone)."""

    text_tokens: int  # input ids, <s> and </s> included
    target_tokens: int  # label ids, <s> and </s> included
    images: int = 1  # training batch: one image per example (VQA, GQA, COCO); NLVR2 scoring uses 2


# paper: VQA/GQA questions and NLVR2 statements are ~10-30 BPE tokens, answers 3-5 and captions ~15:
# 20 and 10, the anchors of issue #11. tiny: "vqa: how many circles are there?" is 10 word-level
# tokens with <s> </s>; answers are 3 tokens, captions ~10.
SHAPES = {"tiny": Shapes(text_tokens=10, target_tokens=6), "paper": Shapes(text_tokens=20, target_tokens=10)}
MATMUL_STOP_S = 0.1  # matmul sizes double from 1024 until one product takes this long (or 8192)
EVAL_REPEATS = 2  # timed repeats of each decoding / extraction measurement, after one warm-up
STORE_IMAGES = 256  # random grids written to each temporary feature store
EXTRACT_BATCH = 32  # `vlbench features extract`'s default batch


PARTS = ("training", "decode", "data", "extract")  # the bench's measurements, in the order they run


@dataclass(frozen=True)
class BenchOptions:
    backbone: str = "tiny"  # profile size: tiny | paper
    lm: str = "bart"  # bart | t5
    methods: tuple[str, ...] | None = None  # "method" or "method:sharing"; None: Table 1's rows + proj-only
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    precision: str = "fp32"
    steps: int = 5  # timed training steps per method
    warmup: int = 2  # untimed steps before them (the first allocates AdamW's state)
    parts: tuple[str, ...] = PARTS  # which measurements to make (the others are null in the JSON)


def check_options(opts: BenchOptions) -> None:
    """UserError (one line naming the flag) for anything the bench cannot run."""
    from vlbench.profiles import PROFILES

    if opts.backbone not in PROFILES:
        raise UserError(f"--backbone: unknown backbone '{opts.backbone}' (choose from {', '.join(PROFILES)})")
    PROFILES[opts.backbone].backbone("image-text", opts.lm)  # an unknown --lm
    if opts.device not in DEVICES:
        raise UserError(f"--device: unknown device '{opts.device}' (choose from {', '.join(DEVICES)})")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda asked for, but torch sees no CUDA device here")
    if opts.precision not in PRECISIONS:
        raise UserError(f"--precision: unknown precision '{opts.precision}' (choose from {', '.join(PRECISIONS)})")
    if opts.precision == "bf16" and opts.device == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision: this CUDA device has no bf16 support")
    for flag, value, low in (("--steps", opts.steps, 1), ("--batch-size", opts.batch_size, 1), ("--warmup", opts.warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{flag}: must be {'positive' if low else 'non-negative'}, got {value}")
    if opts.methods is not None and not opts.methods:
        raise UserError("--methods: give at least one method")
    unknown = [p for p in opts.parts if p not in PARTS]
    if unknown or not opts.parts:
        raise UserError(f"--parts: unknown part '{unknown[0] if unknown else ''}' (choose from {', '.join(PARTS)})")
    if opts.lm == "causal" and "decode" in opts.parts:  # it times vlbench.decoding, the seq2seq decoder
        raise UserError("--parts: decode is measured for the encoder-decoder LMs; with --lm causal give --parts training,data,extract")


def method_configs(opts: BenchOptions) -> list[RunConfig]:
    """The RunConfigs a sweep would run for the benchmarked methods (the profile's hidden dims)."""
    from vlbench.grid import GridRequest, expand
    from vlbench.methods import get_method

    request = GridRequest(profile=opts.backbone, lm=opts.lm, batch_size=opts.batch_size)
    if opts.methods is None:
        configs = expand(dataclasses.replace(request, preset="table1"))
        configs += expand(dataclasses.replace(request, methods=(FLOOR,)))
        return configs
    configs = {}
    for item in opts.methods:
        name, _, sharing = item.partition(":")
        method = get_method(name.strip())
        sharing = sharing.strip() or None
        if sharing is not None and sharing not in method.sharing_modes:
            modes = f"choose from {', '.join(method.sharing_modes)}" if method.sharing_modes else "it has no sharing modes"
            raise UserError(f"--methods: '{item}': {name} has no sharing '{sharing}' ({modes})")
        for cfg in expand(dataclasses.replace(request, methods=(method.name,), sharing=(sharing,) if sharing else None)):
            configs.setdefault(cfg.key(), cfg)
    return list(configs.values())


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = EVAL_REPEATS, warmup: int = 1) -> float:
    """The median wall time of `fn()` over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def describe_device(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"cpu: {name}, {threads} threads"


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter():
    """FlopCounterMode, also counting the CPU flash-attention kernels it has no formula for."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }
    return FlopCounterMode(display=False, custom_mapping=custom)


# ----------------------------------------------------------------------------- 1. matmul peak


class MatmulProbe:
    """Square n x n matmuls of `dtype` on `device`: calling it times one loop of `reps` products
    (enough for MATMUL_STOP_S) and returns its GFLOP/s, the device's matmul rate at that moment."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int):
        self.device, self.n = device, n
        # its own stream: how many sizes the peak search tries depends on the machine's speed, and the
        # global stream must not, since the models built after it take their random weights from it
        g = torch.Generator(device=device).manual_seed(n)
        self.a = torch.randn(n, n, generator=g, device=device).to(dtype)
        self.b = torch.randn(n, n, generator=g, device=device).to(dtype)
        self.out = torch.empty(n, n, device=device, dtype=dtype)
        sync(device)
        started = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)  # the warm-up, timed to size the loop
        sync(device)
        self.once = time.perf_counter() - started
        self.reps = max(1, min(200, int(MATMUL_STOP_S / max(self.once, 1e-6))))

    def __call__(self) -> float:
        sync(self.device)
        started = time.perf_counter()
        for _ in range(self.reps):
            torch.mm(self.a, self.b, out=self.out)
        sync(self.device)
        return 2 * self.n**3 * self.reps / (time.perf_counter() - started) / 1e9


def matmul_gflops(device: torch.device, dtype: torch.dtype) -> tuple[float, MatmulProbe]:
    """The best dense matmul rate (GFLOP/s) over square sizes from 1024, doubling while one product
    takes under MATMUL_STOP_S (at most 8192), the best of 3 timed loops at each size; and the probe
    of the best size (the training steps are timed beside it)."""
    best, best_probe, n = 0.0, None, 1024
    while True:
        probe = MatmulProbe(device, dtype, n)
        rate = max(probe() for _ in range(3))
        if rate > best:
            best, best_probe = rate, probe
        if probe.once >= MATMUL_STOP_S or n >= 8192:
            return best, best_probe
        n *= 2


# ----------------------------------------------------------------------------- 2. training steps


def random_batch(
    n: int, shapes: Shapes, images: int, grid: int, feat_dim: int, text_vocab: int, device, labels: bool = True
) -> dict[str, torch.Tensor]:
    """A batch as TaskData.inputs / collate_train make it: no padding, random ids of the text vocabulary."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, text_vocab, (n, shapes.text_tokens), generator=g)
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "feats": torch.randn(n, images, grid * grid, feat_dim, generator=g),
    }
    if labels:
        batch["labels"] = torch.randint(5, text_vocab, (n, shapes.target_tokens), generator=g)
        batch["weights"] = torch.ones(n)
    return {k: v.to(device) for k, v in batch.items()}


class TrainingStep:
    """The engine's training step for one method's model on `batch` (as engine.train, less
    collating, which data.wait_share times apart); calling it runs one step and returns its time."""

    def __init__(self, model, cfg: RunConfig, batch: dict, opts: BenchOptions, device: torch.device, steps: int):
        from vlbench.engine import build_optimizer
        from vlbench.methods import param_groups

        self.model, self.cfg, self.batch, self.opts, self.device = model, cfg, batch, opts, device
        model.to(device).train()
        model.router.task = "vqa"
        self.optimizers, self.schedulers = build_optimizer(model, cfg.optim, steps, param_groups(cfg, model))
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        # as the resident floor (time_methods): its steps and probe rates beside the other methods'
        self.paired_times: list[float] = []
        self.paired_rates: list[float] = []

    def __call__(self) -> float:
        sync(self.device)
        started = time.perf_counter()
        with autocast(self.device, self.opts.precision):
            loss = self.model.loss(self.batch)
        loss.item()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.optim.grad_clip)
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            optimizer.step()
            scheduler.step()
        sync(self.device)
        return time.perf_counter() - started


def time_training(step: TrainingStep, opts: BenchOptions, probe: MatmulProbe, floor: TrainingStep | None = None) -> dict:
    """Median step time, peak memory and counted FLOPs of `step`'s method. Each timed step follows a
    loop of `probe`, so MFU divides by the matmul rate of the same moments (`peak_beside_gflops`);
    with `floor` (the frozen floor's step, its model resident beside this one), also one floor step,
    so `vs_floor` compares steps taken under the same machine load (these shared machines drift by
    tens of percent over minutes); `floor_step_s` is the median of those floor steps."""
    times, floor_times, rates = [], [], []
    with PeakMemory(step.device) as memory:
        for _ in range(opts.warmup):
            step()
        for _ in range(opts.steps):
            rates.append(probe())
            if floor is not None:
                floor_times.append(floor())
            times.append(step())
    with flop_counter() as counter:
        step()
    row = {"step_s": statistics.median(times), "step_times_s": times, "peak_mem_mb": memory.mb,
           "peak_reserved_mb": memory.reserved_mb, "flops_per_step": float(counter.get_total_flops()),
           "peak_beside_gflops": statistics.median(rates)}  # fmt: skip
    if floor is not None:
        row["floor_step_s"] = statistics.median(floor_times)
        floor.paired_times += floor_times
        floor.paired_rates += rates
    return row


# ----------------------------------------------------------------------------- 3. decoding


def time_decoding(model, env: "BenchEnv", opts: BenchOptions) -> dict:
    """vlbench's decoding (VLModel.generate, encoder included) and, on the same batch, transformers'
    `generate` from the same encoder output: the speed-up, and whether the tokens are identical."""
    from vlbench.tasks import TASKS

    optim, device = env.profile.optim, env.device
    n = optim.eval_batch_size
    one = random_batch(n, env.shapes, 1, env.grid, env.feat_dim, env.text_vocab, device, labels=False)
    two = random_batch(n, env.shapes, 2, env.grid, env.feat_dim, env.text_vocab, device, labels=False)
    choice_ids = [5, 6]  # NLVR2's "true" / "false" first tokens
    model.to(device).eval()
    result = {"eval_batch_size": n, "beams": optim.caption_beams}
    runs = {"greedy": ("vqa", 1, TASKS["vqa"].max_target_tokens + 2),  # as TaskData.predict
            "beam": ("caption", optim.caption_beams, optim.caption_max_len + 2)}  # fmt: skip
    with autocast(device, opts.precision), torch.no_grad():
        for name, (task, beams, new_tokens) in runs.items():
            model.router.task = task

            def reference():
                enc, mask = model.encode_batch(one)
                return model.lm.generate(encoder_outputs=enc, attention_mask=mask, num_beams=beams, do_sample=False,
                                         max_new_tokens=new_tokens, early_stopping=beams > 1)  # fmt: skip

            seconds = median_time(lambda: model.generate(one, num_beams=beams, max_new_tokens=new_tokens), device)
            reference_s = median_time(reference, device)
            result |= {f"{name}_max_new_tokens": new_tokens, f"{name}_seq_per_s": n / seconds,
                       f"{name}_vs_transformers": reference_s / seconds,
                       f"{name}_identical": torch.equal(model.generate(one, beams, new_tokens), reference())}  # fmt: skip
        model.router.task = "nlvr"
        result["choice_seq_per_s"] = n / median_time(lambda: model.choice_logits(two, choice_ids), device)
    return result


# ----------------------------------------------------------------------------- 4. data pipeline


def time_data(env: "BenchEnv", batch_size: int) -> dict:
    """Reads/s of a ShardStore and an H5Store of STORE_IMAGES random grids, and collate_train's time
    for one batch read from the ShardStore (the engine's data step: gather, pad, tokenise targets)."""
    import random

    import h5py

    from vlbench.backbones import BACKBONES
    from vlbench.pretrain import shared_tiny_tokenizer
    from vlbench.data import TaskData, collate_train
    from vlbench.features import open_feature_store, write_shard
    from vlbench.tasks import TASKS, Example

    tokens = env.grid * env.grid
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(STORE_IMAGES, tokens, env.feat_dim, generator=g).to(torch.float16)
    ids = [f"COCO_train2014_{i:012d}" for i in range(STORE_IMAGES)]
    rng = random.Random(0)
    read_batches = [rng.sample(ids, min(batch_size, len(ids))) for _ in range(max(8, 2 * STORE_IMAGES // batch_size))]
    with tempfile.TemporaryDirectory(prefix="vlbench-bench-") as tmp:
        shard_dir, h5_dir = Path(tmp) / "shards", Path(tmp) / "h5"
        write_shard(shard_dir / "shard-0.safetensors", ids, feats, {})
        h5_dir.mkdir()
        with h5py.File(h5_dir / "features.h5", "w") as f:
            for i, image_id in enumerate(ids):
                f.create_dataset(f"{image_id}/features", data=feats[i].numpy())
        rates = {}
        for kind, folder in (("shard", shard_dir), ("h5", h5_dir)):
            store = open_feature_store(folder)
            store[read_batches[0]]  # warm-up (opens files)
            started = time.perf_counter()
            for chunk in read_batches:
                store[chunk]
            rates[kind] = sum(map(len, read_batches)) / (time.perf_counter() - started)

        # collate_train as engine.train calls it, on VQA examples whose grids live in the ShardStore.
        # The tokenizer is the tiny word-level one (the paper's BPE needs its weights folder); inputs
        # and targets are tokenised once per run anyway (TaskData), so it barely enters the figure.
        words = "is there a red circle left of the blue square and a green triangle above the yellow one".split()
        text = " ".join((words * 4)[: max(1, env.shapes.text_tokens - 4)])  # + <s> vqa : ... </s>
        examples = [
            Example(uid=f"vqa-train-{i}", task="vqa", image_ids=(image_id,), text=text, targets=("yes", "no", "two"),
                    target_scores=(1.0, 0.6, 0.3), answers=("yes",) * 10, answer_type="yes/no")
            for i, image_id in enumerate(ids)
        ]  # fmt: skip
        tokenizer = shared_tiny_tokenizer(BACKBONES["tiny"])
        data = TaskData(TASKS["vqa"], tokenizer, open_feature_store(shard_dir), {"train": examples, "val": [], "test": []})
        schedule = [rng.sample(range(len(examples)), min(batch_size, len(examples))) for _ in range(21)]
        sample = random.Random(1)
        collate_train(data, schedule[0], sample, env.device)  # warm-up
        times = []
        for indices in schedule[1:]:
            sync(env.device)
            started = time.perf_counter()
            collate_train(data, indices, sample, env.device)
            sync(env.device)
            times.append(time.perf_counter() - started)
    return {
        "store_images": STORE_IMAGES,
        "feature_shape": [tokens, env.feat_dim],
        "read_batch": batch_size,
        "shard_reads_per_s": rates["shard"],
        "h5_reads_per_s": rates["h5"],
        "collate_s": statistics.median(times),
    }


# ----------------------------------------------------------------------------- 5. CLIP extraction


def time_extraction(env: "BenchEnv", opts: BenchOptions) -> dict:
    import open_clip

    from vlbench.backbones import GridEncoder, build_clip, vision_shape
    from vlbench.pretrain import shared_tiny_tokenizer

    spec = env.spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if "name" in spec.clip:
            logging.disable(logging.WARNING)  # open_clip warns that the weights are random: they are meant to be
            try:
                clip, model = open_clip.create_model(spec.clip["name"], pretrained=None), spec.clip["name"]
            finally:
                logging.disable(logging.NOTSET)
        else:
            clip, model = build_clip(spec, shared_tiny_tokenizer(spec)), "tiny CLIP ResNet"
    vision = GridEncoder(clip.visual).eval().requires_grad_(False).to(env.device)
    size = vision_shape(spec)[2]
    pixels = torch.randn(EXTRACT_BATCH, 3, size, size, device=env.device)

    def forward():
        with torch.inference_mode(), autocast(env.device, opts.precision):
            vision(pixels)

    seconds = median_time(forward, env.device)
    return {"model": model, "image_size": size, "batch_size": EXTRACT_BATCH, "images_per_s": EXTRACT_BATCH / seconds}


# ----------------------------------------------------------------------------- the run


@dataclass
class BenchEnv:
    """What every measurement shares: the device, the backbone and the shapes of its inputs."""

    device: torch.device
    spec: object  # vlbench.backbones.BackboneSpec
    profile: object  # vlbench.profiles.Profile
    shapes: Shapes
    grid: int  # the CLIP grid side (paper 7, tiny 4)
    feat_dim: int
    text_vocab: int  # text ids are drawn below this (the vis token rows come after)


def run_bench(opts: BenchOptions, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Every measurement of the module docstring, as the JSON document `vlbench bench` writes."""
    check_options(opts)
    from vlbench.backbones import BACKBONES, architecture, vision_shape
    from vlbench.methods import build_vl_model
    from vlbench.profiles import get_profile
    from vlbench.report import row_label

    started = time.perf_counter()
    configs = method_configs(opts)
    profile = get_profile(opts.backbone)
    spec = BACKBONES[profile.backbone("image-text", opts.lm)]
    device = torch.device(opts.device)
    threads = cores_available()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
            torch.manual_seed(0)
            prepare_device(device)  # as the engine runs (TF32 on CUDA for fp32, heap reuse on CPU)
            progress("measuring the matmul peak")
            peaks = {name: matmul_gflops(device, dtype) for name, dtype in PRECISION_DTYPES.items()}
            peak, probe = {name: rate for name, (rate, _) in peaks.items()}, peaks[opts.precision][1]
            del peaks
            base_lm, feat_dim = architecture(spec)  # random weights, vis token rows added
            grid = vision_shape(spec)[1]
            env = BenchEnv(device, spec, profile, SHAPES[opts.backbone], grid, feat_dim,
                           base_lm.config.vocab_size - spec.n_vis_tokens)  # fmt: skip
            batch = random_batch(opts.batch_size, env.shapes, 1, grid, feat_dim, env.text_vocab, device)

            def build(cfg: RunConfig):
                return build_vl_model(cfg, copy.deepcopy(base_lm), feat_dim, spec.n_vis_tokens)

            rows, decode, data, extract = [], None, None, None
            if "training" in opts.parts:
                rows = time_methods(configs, build, batch, opts, device, probe, progress)
            add_ratios(rows, opts.precision, peak)

            if "decode" in opts.parts:
                progress("decoding")
                decode_cfg = next((c for c in configs if c.method == "full"), configs[0])
                model = build(decode_cfg)
                decode = {"method": row_label(decode_cfg.method, decode_cfg.sharing), **time_decoding(model, env, opts)}
                del model
                release_memory()

            if "data" in opts.parts:
                progress("data pipeline")
                data = time_data(env, opts.batch_size)
                for name, key in (("full", "full"), ("floor", FLOOR)):
                    row = next((r for r in rows if r["key"] == key), None)
                    share = data["collate_s"] / (data["collate_s"] + row["step_s"]) if row else None
                    data[f"wait_share_{name}"] = share

            if "extract" in opts.parts:
                progress("CLIP extraction")
                extract = time_extraction(env, opts)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "device": describe_device(device, threads),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": threads,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "backbone": spec.name,
        "lm": spec.lm.get("hub", f"tiny {spec.lm_type}"),
        "precision": opts.precision,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "shapes": {"text_tokens": env.shapes.text_tokens, "target_tokens": env.shapes.target_tokens,
                   "grid": [grid, grid, feat_dim], "visual_tokens_per_image": profile.pool_size**2},  # fmt: skip
        "peak_gflops": peak,
        "methods": rows,
        "decode": decode,
        "data": data,
        "extract": extract,
        "parts": list(opts.parts),
        "seconds": time.perf_counter() - started,
    }


def time_methods(
    configs: list[RunConfig], build: Callable, batch: dict, opts: BenchOptions, device, probe: MatmulProbe, progress
) -> list[dict]:
    """One row per config (time_training's figures and the method's parameter counts), in order.
    When the floor is among several configs, its model stays resident and every other method's
    steps alternate with its steps; the floor's row then has the median of all of them."""
    from vlbench.params import count_parameters
    from vlbench.report import row_label

    def allocated_mb() -> float:  # CUDA's max allocated counts every model on the device
        return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0

    floor_cfg = next((c for c in configs if c.method == FLOOR), None)
    floor, resident_mb = None, 0.0  # resident_mb: what the resident floor holds on CUDA, left out of the others' peaks
    if floor_cfg is not None and len(configs) > 1:
        progress(f"training steps: {row_label(FLOOR, None)}, resident to alternate with every method")
        before = allocated_mb()
        floor = TrainingStep(build(floor_cfg), floor_cfg, batch, opts, device, opts.warmup + opts.steps * len(configs) + 1)
        floor_row = time_training(floor, opts, probe)
        resident_mb = allocated_mb() - before

    def row_of(cfg: RunConfig, model, figures: dict) -> dict:
        counts = count_parameters(model)
        return {"method": row_label(cfg.method, cfg.sharing), "key": f"{cfg.method}:{cfg.sharing}" if cfg.sharing else cfg.method,
                "hidden_dim": cfg.hidden_dim, "trainable_params": counts.trainable, "params_percent": counts.percent,
                "batch_size": opts.batch_size, **figures}  # fmt: skip

    rows = []
    for k, cfg in enumerate(configs):
        if floor is not None and cfg is floor_cfg:
            figures = {**floor_row, "step_s": statistics.median(floor.paired_times), "step_times_s": floor.paired_times,
                       "peak_beside_gflops": statistics.median(floor.paired_rates)}  # fmt: skip
            rows.append(row_of(cfg, floor.model, figures))
            continue
        progress(f"training steps {k + 1}/{len(configs)}: {row_label(cfg.method, cfg.sharing)}")
        model = build(cfg)
        step = TrainingStep(model, cfg, batch, opts, device, opts.warmup + opts.steps + 1)
        figures = time_training(step, opts, probe, floor)
        rows.append(row_of(cfg, model, {**figures, "peak_mem_mb": figures["peak_mem_mb"] - resident_mb}))
        del model, step
        release_memory()
    return rows


def add_ratios(rows: list[dict], precision: str, peak: dict) -> None:
    """samples/s, MFU against the matmul rate measured beside the steps (else the peak of
    `precision`), the step-time ratios to full fine-tuning and to the frozen floor, and the peak
    memory's to full fine-tuning's (None where that method was not measured). A method timed beside
    the floor takes `vs_floor` from the floor steps it alternated with, and `vs_full` from the two
    methods' `vs_floor`."""
    full = next((r for r in rows if r["key"] == "full"), None)
    floor = next((r["step_s"] for r in rows if r["key"] == FLOOR), None)
    for r in rows:
        r["samples_per_s"] = r["batch_size"] / r["step_s"]
        r["mfu"] = r["flops_per_step"] / r["step_s"] / (r.get("peak_beside_gflops", peak[precision]) * 1e9)
        r["vs_floor"] = r["step_s"] / r.get("floor_step_s", floor) if floor else None
    for r in rows:
        if full is None:
            r["vs_full"] = None
        else:
            r["vs_full"] = r["vs_floor"] / full["vs_floor"] if floor else r["step_s"] / full["step_s"]
        r["mem_vs_full"] = r["peak_mem_mb"] / full["peak_mem_mb"] if full and full["peak_mem_mb"] > 0 else None


# ----------------------------------------------------------------------------- output


COLUMNS = ("Method", "d", "B", "step s", "samples/s", "peak MB", "mem vs full", "GFLOP/step", "MFU", "vs full", "vs floor")


def table_rows(result: dict) -> list[list[str]]:
    def ratio(x):
        return "" if x is None else f"{x:.2f}x"

    return [
        [r["method"], "" if r["hidden_dim"] is None else str(r["hidden_dim"]), str(r["batch_size"]), f"{r['step_s']:.3f}",
         f"{r['samples_per_s']:.1f}", f"{r['peak_mem_mb']:.0f}", ratio(r["mem_vs_full"]), f"{r['flops_per_step'] / 1e9:.1f}",
         f"{100 * r['mfu']:.1f}%", ratio(r["vs_full"]), ratio(r["vs_floor"])]
        for r in result["methods"]
    ]  # fmt: skip


def summary_lines(result: dict) -> list[str]:
    peak, d, data, x = result["peak_gflops"], result["decode"], result["data"], result["extract"]
    shapes = result["shapes"]

    def pct(share):
        return "n/a" if share is None else f"{100 * share:.2f}%"

    def same(identical):
        return "identical tokens" if identical else "TOKENS DIFFER"

    lines = [
        f"{result['device']}; torch {result['torch']}; {result['backbone']} ({result['lm']}, random weights), "
        f"{result['precision']}; {result['date']}",
        f"batch: {shapes['text_tokens']} text + {shapes['visual_tokens_per_image']} visual tokens "
        f"(max-pooled from a {'x'.join(map(str, shapes['grid']))} grid), {shapes['target_tokens']} target tokens; "
        f"median of {result['steps']} steps after {result['warmup']} warm-up",
        f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s",
    ]
    if d is not None:
        lines.append(
            f"decoding ({d['method']}, eval batch {d['eval_batch_size']}, encoder included): greedy "
            f"({d['greedy_max_new_tokens']} new tokens) {d['greedy_seq_per_s']:.1f} seq/s ({d['greedy_vs_transformers']:.2f}x "
            f"transformers' generate, {same(d['greedy_identical'])}), beam-{d['beams']} ({d['beam_max_new_tokens']} new "
            f"tokens) {d['beam_seq_per_s']:.1f} seq/s ({d['beam_vs_transformers']:.2f}x, {same(d['beam_identical'])}), "
            f"NLVR2 choice {d['choice_seq_per_s']:.1f} seq/s"
        )
    if data is not None:
        lines.append(
            f"data: {'x'.join(map(str, data['feature_shape']))} fp16 grids, safetensors store {data['shard_reads_per_s']:.0f} "
            f"images/s, h5 {data['h5_reads_per_s']:.0f} images/s; collating a batch {1000 * data['collate_s']:.1f} ms = "
            f"{pct(data['wait_share_full'])} of a full fine-tuning step, {pct(data['wait_share_floor'])} of a floor step"
        )
    if x is not None:
        lines.append(f"CLIP extraction ({x['model']}, {x['image_size']} px, batch {x['batch_size']}): {x['images_per_s']:.1f} images/s")
    return lines


def render_markdown(result: dict) -> str:
    lines = [f"# vlbench bench: {result['device_type']}, {result['backbone']}, {result['precision']}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    lines += [""] + [f"- {line}" for line in summary_lines(result)]
    return "\n".join(lines) + "\n"


def rich_table(result: dict):
    from rich.table import Table

    table = Table(title=f"vlbench bench: {result['device_type']}, {result['backbone']}, {result['precision']}")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in table_rows(result):
        table.add_row(*row)
    return table


def file_stem(result: dict) -> str:
    """<device>-<backbone>-<precision>, plus -b<N> for a batch size other than the default."""
    stem = f"{result['device_type']}-{result['backbone']}-{result['precision']}"
    sizes = {r["batch_size"] for r in result["methods"]}
    return stem if sizes == {DEFAULT_BATCH_SIZE} else stem + "".join(f"-b{n}" for n in sorted(sizes))


def write_bench(result: dict, folder: Path) -> tuple[Path, Path]:
    """The JSON document and its markdown report under `folder`, each written atomically."""
    from vlbench.files import atomic_write

    stem = Path(folder) / file_stem(result)
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    json_path = atomic_write(stem.with_suffix(".json"), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    markdown = render_markdown(result)
    md_path = atomic_write(stem.with_suffix(".md"), lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    return json_path, md_path
