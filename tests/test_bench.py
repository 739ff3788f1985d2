"""`vlbench bench` runs on the tiny backbone and writes a well-formed report; bad flags are one-line errors.

Benchmarks are not timed tests: nothing here asserts a speed, only the shape of what is written.
"""

import json
import math

import pytest
from typer.testing import CliRunner

from vlbench import bench
from vlbench.cli import app

runner = CliRunner()

METHOD_FIELDS = {
    "method": str, "batch_size": int, "step_s": float, "samples_per_s": float, "peak_mem_mb": float,
    "flops_per_step": float, "mfu": float, "vs_full": float, "vs_floor": float,
}  # fmt: skip


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One CLI run on the tiny backbone: 1 warm-up + 1 timed step of three methods, in a fresh folder."""
    folder = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        args = ["bench", "--backbone", "tiny", "--methods", "full,proj-only,adapter:single",
                "--steps", "1", "--warmup", "1", "--format", "json"]  # fmt: skip
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return folder, result


def test_bench_writes_a_well_formed_json(bench_run):
    folder, result = bench_run
    path = folder / "reports" / "bench" / "cpu-tiny-fp32.json"
    doc = json.loads(path.read_text())
    assert isinstance(doc["device"], str) and doc["device"].startswith("cpu")
    assert isinstance(doc["torch"], str) and doc["torch"]
    assert set(doc["peak_gflops"]) == {"fp32", "bf16"}
    assert all(isinstance(v, float) and v > 0 for v in doc["peak_gflops"].values())

    rows = {r["method"]: r for r in doc["methods"]}
    assert list(rows) == ["Full fine-tuning", "θV→L only", "Single Adapter"]
    for row in rows.values():
        for key, kind in METHOD_FIELDS.items():
            assert isinstance(row[key], kind), (row["method"], key, row[key])
            if kind is float:
                assert math.isfinite(row[key]) and row[key] > 0, (row["method"], key, row[key])
        assert row["batch_size"] == bench.DEFAULT_BATCH_SIZE
        assert 0 < row["mfu"] < 1.5
        # MFU divides by the matmul rate measured beside the method's own steps
        assert row["mfu"] == pytest.approx(row["flops_per_step"] / row["step_s"] / (row["peak_beside_gflops"] * 1e9))
        assert row["samples_per_s"] == pytest.approx(row["batch_size"] / row["step_s"])
    assert rows["Full fine-tuning"]["vs_full"] == 1.0
    assert rows["θV→L only"]["vs_floor"] == 1.0
    # the other methods' timed steps alternated with floor steps, and take their ratios from those
    floor = rows["θV→L only"]
    for name in ("Full fine-tuning", "Single Adapter"):
        row = rows[name]
        assert row["floor_step_s"] in floor["step_times_s"]
        assert row["vs_floor"] == pytest.approx(row["step_s"] / row["floor_step_s"])
    assert len(floor["step_times_s"]) == 2  # one timed step beside each of the two other methods
    adapter = rows["Single Adapter"]
    assert adapter["vs_full"] == pytest.approx(adapter["vs_floor"] / rows["Full fine-tuning"]["vs_floor"])
    assert rows["Single Adapter"]["hidden_dim"] == 8  # the tiny profile's bottleneck
    # a frozen LM skips the weight gradients: fewer FLOPs than full fine-tuning
    assert rows["θV→L only"]["flops_per_step"] < rows["Full fine-tuning"]["flops_per_step"]

    decode = doc["decode"]
    for key in ("greedy_seq_per_s", "beam_seq_per_s", "choice_seq_per_s"):
        assert isinstance(decode[key], float) and decode[key] > 0
    assert decode["eval_batch_size"] == 128 and decode["beams"] == 5
    # vlbench's decoding gives transformers' tokens (tests/test_decoding.py checks it on many inputs)
    assert decode["greedy_identical"] is True and decode["beam_identical"] is True
    assert decode["greedy_vs_transformers"] > 0 and decode["beam_vs_transformers"] > 0
    data = doc["data"]
    assert data["feature_shape"] == [16, 128]  # the tiny CLIP's 4x4 grid of 128-d features
    for key in ("shard_reads_per_s", "h5_reads_per_s", "collate_s"):
        assert data[key] > 0
    for key in ("wait_share_full", "wait_share_floor"):
        assert 0 < data[key] < 1
    assert doc["extract"]["images_per_s"] > 0 and doc["extract"]["image_size"] == 128

    assert json.loads(result.stdout) == doc  # --format json prints the document written


def test_bench_writes_the_markdown_report(bench_run):
    folder, _ = bench_run
    text = (folder / "reports" / "bench" / "cpu-tiny-fp32.md").read_text()
    assert text.startswith("# vlbench bench: cpu, tiny, fp32")
    assert "| Method | d | B | step s |" in text
    for label in ("Full fine-tuning", "θV→L only", "Single Adapter"):
        assert f"| {label} |" in text
    assert "matmul peak: fp32" in text and "CLIP extraction" in text
    assert not list((folder / "reports" / "bench").glob(".tmp-*"))  # written atomically


def test_file_name_names_a_non_default_batch_size():
    result = {"device_type": "cpu", "backbone": "paper", "precision": "bf16", "methods": [{"batch_size": 64}]}
    assert bench.file_stem(result) == "cpu-paper-bf16-b64"
    result["methods"] = [{"batch_size": bench.DEFAULT_BATCH_SIZE}]
    assert bench.file_stem(result) == "cpu-paper-bf16"


def test_default_methods_are_table1_and_the_floor():
    configs = bench.method_configs(bench.BenchOptions(backbone="paper"))
    keys = [(c.method, c.sharing, c.hidden_dim) for c in configs]
    assert keys[0] == ("full", None, None) and keys[-1] == ("proj-only", None, None)
    assert ("adapter", "single", 96) in keys and ("lora", "single", 128) in keys and ("prompt", "multiple", 40) in keys
    assert len(keys) == 12
    assert all(c.optim.batch_size == bench.DEFAULT_BATCH_SIZE for c in configs)


def test_parts_measure_only_what_is_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--methods", "full,lst", "--steps", "1", "--warmup", "0", "--parts", "training", "--format", "json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["parts"] == ["training"] and doc["decode"] is None and doc["data"] is None and doc["extract"] is None
    full, lst = doc["methods"]
    assert full["mem_vs_full"] == 1.0 and lst["method"] == "Ladder Side-Tuning" and lst["mem_vs_full"] > 0
    markdown = (tmp_path / "reports" / "bench" / "cpu-tiny-fp32.md").read_text()
    assert "Ladder Side-Tuning" in markdown and "decoding" not in markdown


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps: must be positive, got 0"),
        (["--batch-size", "-4"], "--batch-size: must be positive, got -4"),
        (["--methods", "nope"], "--methods: unknown method 'nope' (choose from"),
        (["--methods", "adapter:twice"], "--methods: 'adapter:twice': adapter has no sharing 'twice'"),
        (["--methods", "full:single"], "--methods: 'full:single': full has no sharing 'single'"),
        (["--format", "xml"], "--format: unknown format 'xml' (choose from markdown, json)"),
        (["--precision", "fp8"], "--precision: unknown precision 'fp8' (choose from fp32, bf16)"),
        (["--backbone", "huge"], "--backbone: unknown backbone 'huge' (choose from tiny, paper)"),
        (["--lm", "gpt"], "--lm: unknown language model 'gpt'"),
        (["--device", "tpu"], "--device: unknown device 'tpu' (choose from cpu, cuda)"),
        (["--parts", "training,speed"], "--parts: unknown part 'speed' (choose from training, decode, data, extract)"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: " + message), result.output
    assert not (tmp_path / "reports").exists()  # nothing measured, nothing written


def test_cuda_without_cuda_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = runner.invoke(app, ["bench", "--device", "cuda"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --device: cuda asked for, but torch sees no CUDA device here"


def test_matmul_probe_leaves_the_global_random_stream_alone():
    """The peak search tries as many sizes as the machine's speed allows; the models built after it take
    their random weights from the global stream, which must not depend on that (else the decoding check's
    random model changes from run to run)."""
    import torch

    torch.manual_seed(0)
    before = torch.get_rng_state()
    bench.MatmulProbe(torch.device("cpu"), torch.float32, 64)
    assert torch.equal(torch.get_rng_state(), before)
