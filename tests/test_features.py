"""CLIP feature extraction from image files, resumable shard stores, lazy reading, the reference h5 layout."""

import dataclasses
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vlbench.features as features_mod
from conftest import FAST_BACKBONE
from vlbench import backbones
from vlbench.cli import app
from vlbench.config import UserError
from vlbench.features import extract_features, image_files, load_encoder, open_feature_store, write_shard

import open_clip  # noqa: E402  (after vlbench: its import fix must come first)
from open_clip.transform import image_transform

# sample photographs as they would sit in a dataset folder, named by VL-T5's image ids
SKIMAGE_PHOTOS = {
    "rocket.jpg": "COCO_val2014_000000000042.jpg",
    "coffee.png": "2354786.png",  # GQA
    "camera.png": "COCO_val2014_000000000007.png",  # grayscale
    "logo.png": "nlvr2/dev-850-0-img0.png",  # RGBA, in a subfolder
    "chelsea.png": "nlvr2/dev-850-0-img1.png",
}


def write_photos(folder: Path) -> list[str]:
    """Real image files (scikit-image's sample photographs when installed, else PIL-drawn) plus a JPEG PIL writes."""
    folder.mkdir(parents=True)
    try:
        import skimage.data

        source = Path(skimage.data.__file__).parent
        for name, target in SKIMAGE_PHOTOS.items():
            (folder / target).parent.mkdir(exist_ok=True)
            shutil.copy(source / name, folder / target)
    except ImportError:
        (folder / "nlvr2").mkdir()
        ramp = np.linspace(0, 255, 300 * 200, dtype=np.uint8).reshape(200, 300)
        rgb = np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], -1)
        Image.fromarray(rgb).save(folder / SKIMAGE_PHOTOS["coffee.png"])
        Image.fromarray(ramp).save(folder / SKIMAGE_PHOTOS["camera.png"])
        Image.fromarray(np.dstack([rgb, ramp])).save(folder / SKIMAGE_PHOTOS["logo.png"])
        Image.fromarray(rgb[:, ::-1]).save(folder / SKIMAGE_PHOTOS["chelsea.png"])
        Image.fromarray(rgb[::-1]).save(folder / SKIMAGE_PHOTOS["rocket.jpg"], quality=90)
    noise = np.random.default_rng(0).integers(0, 256, (150, 220, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "COCO_train2014_000000000009.jpeg", quality=85)
    return sorted(Path(t).stem for t in [*SKIMAGE_PHOTOS.values(), "COCO_train2014_000000000009.jpeg"])


def reference_pixels(folder: Path, image_ids: list[str], size: int) -> torch.Tensor:
    """CLIP inputs as open_clip's own transform makes them: bicubic resize to size x size (squash), mean/std."""
    transform = image_transform(size, is_train=False, resize_mode="squash")
    paths = {p.stem: p for p in folder.rglob("*") if p.is_file()}
    return torch.stack([transform(Image.open(paths[i])) for i in image_ids])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "images"
    return folder, write_photos(folder)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny(cache_dir):
    """`--model tiny` with the quick tiny backbones."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.BACKBONES, "tiny", FAST_BACKBONE)
        return load_encoder("tiny", None, False, cache_dir)


@pytest.fixture(scope="module")
def tiny_store(photos, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "tiny"
    extract_features(image_files(photos[0]), out, tiny, batch_size=4)
    return out


def test_tiny_extraction_equals_the_model_on_open_clip_inputs(photos, tiny, tiny_store):
    folder, ids = photos
    store = open_feature_store(tiny_store)
    assert sorted(store.ids) == ids and len(store) == 6
    assert (store.num_tokens, store.feat_dim) == (16, 128)
    assert store.encoder == tiny.identity and store.encoder["model"] == "tiny"
    got = store[ids]
    assert got.shape == (6, 16, 128) and got.dtype == torch.float32
    with torch.no_grad():
        direct = tiny.vision(reference_pixels(folder, ids, tiny.image_size))
    torch.testing.assert_close(got, direct, atol=2e-3, rtol=2e-3)  # float16 storage
    assert not torch.equal(got[0], got[1])


def test_rn101_checkpoint_through_the_cli(photos, tmp_path, monkeypatch):
    """open_clip RN101 with weights from a checkpoint file: (49, 2048) per image, equal to running its layers."""
    folder, _ = photos
    two = tmp_path / "two"
    two.mkdir()
    for name in ("COCO_val2014_000000000042.jpg", "2354786.png"):
        shutil.copy(folder / name, two / name)
    torch.manual_seed(1)
    clip = open_clip.create_model("RN101", pretrained=None).eval()
    torch.save(clip.state_dict(), tmp_path / "rn101.pt")
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(
        app, ["features", "extract", "--images", "two", "--out", "feats", "--weights", "rn101.pt", "--batch-size", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "2 images extracted" in result.output
    store = open_feature_store(tmp_path / "feats")
    assert store.encoder["model"] == "RN101" and store.encoder["image_size"] == 224
    got = store[["2354786", "COCO_val2014_000000000042"]]
    assert got.shape == (2, 49, 2048)

    v = clip.visual
    with torch.no_grad():
        x = v.stem(reference_pixels(two, ["2354786", "COCO_val2014_000000000042"], 224))
        grid = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # (2, 2048, 7, 7), attention pooling skipped
    direct = grid.flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, direct, atol=1e-3 * direct.abs().max().item(), rtol=2e-3)


def test_resume_after_an_interrupted_run_computes_only_the_missing_images(photos, tiny, tiny_store, tmp_path, monkeypatch):
    folder, ids = photos
    monkeypatch.setattr(features_mod, "SHARD_ROWS", 2)
    out = tmp_path / "resumed"
    calls = []

    class KilledOnThirdBatch(torch.nn.Module):
        def forward(self, pixels):
            calls.append(len(pixels))
            if len(calls) == 3:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the run
            return tiny.vision(pixels)

    with pytest.raises(KeyboardInterrupt):
        extract_features(image_files(folder), out, dataclasses.replace(tiny, vision=KilledOnThirdBatch()), batch_size=2)
    (out / ".tmp-99999-shard-1-99999.safetensors").write_bytes(b"half a shard")  # a hard kill's leftover
    partial = open_feature_store(out)
    assert len(partial) == 4 and len(partial.shards) == 2  # both finished batches were written

    loaded = []
    real_load = features_mod.load_image
    monkeypatch.setattr(features_mod, "load_image", lambda path, size: loaded.append(path.stem) or real_load(path, size))
    summary = extract_features(image_files(folder), out, tiny, batch_size=2)
    assert (summary.images, summary.already, summary.extracted) == (6, 4, 2)
    assert sorted(loaded) == sorted(set(ids) - set(partial.ids))

    resumed, one_shot = open_feature_store(out), open_feature_store(tiny_store)
    assert sorted(resumed.ids) == sorted(one_shot.ids)
    torch.testing.assert_close(resumed[ids], one_shot[ids], atol=1e-3, rtol=1e-3)

    again = extract_features(image_files(folder), out, tiny, batch_size=2)
    assert (again.already, again.extracted) == (6, 0)

    other = dataclasses.replace(tiny, identity={**tiny.identity, "weights_sha256": "0" * 16})
    with pytest.raises(UserError, match=r"holds features of tiny .* \(another model or other weights\)"):
        extract_features(image_files(folder), out, other)


def test_opening_reads_no_features_and_rows_are_read_on_demand(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    written = {}
    for s in range(3):
        ids = [f"img{s}-{r}" for r in range(4)]
        feats = torch.randn(4, 49, 8, generator=g)
        write_shard(tmp_path / f"shard-{s}.safetensors", ids, feats, {})
        written.update(zip(ids, feats.half().float()))

    rows_read = []
    real_safe_open = features_mod.safe_open

    class CountingSlice:
        def __init__(self, inner):
            self.inner = inner

        def get_shape(self):
            return self.inner.get_shape()

        def __getitem__(self, index):
            rows_read.append(index)
            return self.inner[index]

    class CountingFile:
        def __init__(self, path, framework):
            self.inner = real_safe_open(path, framework=framework)

        def metadata(self):
            return self.inner.metadata()

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            return CountingSlice(self.inner.get_slice(name))

        def get_tensor(self, name):
            raise AssertionError("a whole shard was loaded")

    monkeypatch.setattr(features_mod, "safe_open", CountingFile)
    store = open_feature_store(tmp_path)
    assert len(store) == 12 and (store.num_tokens, store.feat_dim) == (49, 8)
    assert rows_read == []
    got = store[["img2-3", "img0-1", "img2-3"]]
    assert len(rows_read) == 3
    assert torch.equal(got, torch.stack([written["img2-3"], written["img0-1"], written["img2-3"]]))
    assert store.missing(["img1-0", "gone", "gone", "also-gone"]) == ["gone", "also-gone"]


def test_reference_h5_layout_one_file_and_one_file_per_image(tmp_path):
    rng = np.random.default_rng(0)
    feats = {i: rng.standard_normal((49, 2048)).astype(np.float32) for i in ("COCO_val2014_000000000042", "2354786", "9")}
    with h5py.File(tmp_path / "val2014_grid.h5", "w") as f:  # many images in one file, with VL-T5's extra keys
        for image_id, x in feats.items():
            f[f"{image_id}/features"] = x
            f[f"{image_id}/img_h"] = 480
            f[f"{image_id}/img_w"] = 640
    per_image = tmp_path / "per_image"
    per_image.mkdir()
    for image_id, x in feats.items():
        with h5py.File(per_image / f"{image_id}.h5", "w") as f:
            f[f"{image_id}/features"] = x.astype(np.float16)

    one = open_feature_store(tmp_path / "val2014_grid.h5")
    assert sorted(one.ids) == sorted(feats) and (one.num_tokens, one.feat_dim) == (49, 2048)
    assert torch.equal(one[["9", "2354786"]], torch.from_numpy(np.stack([feats["9"], feats["2354786"]])))
    many = open_feature_store(per_image)
    assert len(many) == 3 and many[["COCO_val2014_000000000042"]].dtype == torch.float32
    coco = "COCO_val2014_000000000042"
    torch.testing.assert_close(many[[coco]][0], torch.from_numpy(feats[coco]), atol=2e-3, rtol=1e-3)  # float16 in the file
    with pytest.raises(UserError, match=r"per_image has no features for image 'COCO_val2014_1'"):
        many[["9", "COCO_val2014_1"]]


def test_malformed_stores(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_feature_store(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty is empty"):
        open_feature_store(tmp_path / "empty")

    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-1.safetensors", ["a", "b"], torch.ones(2, 4, 3), {})
    data = (shards / "shard-1.safetensors").read_bytes()
    (shards / "shard-2.safetensors").write_bytes(data[: len(data) - 7])
    with pytest.raises(UserError, match="shard-2.safetensors is truncated or corrupt"):
        open_feature_store(shards)
    write_shard(shards / "shard-2.safetensors", ["c"], torch.ones(1, 5, 3), {})
    with pytest.raises(UserError, match=r"shard-2.safetensors holds features of shape \(5, 3\)"):
        open_feature_store(shards)
    write_shard(shards / "shard-2.safetensors", ["b"], torch.ones(1, 4, 3), {})
    with pytest.raises(UserError, match="image 'b' is in both"):
        open_feature_store(shards)

    with h5py.File(tmp_path / "boxes_only.h5", "w") as f:
        f["123/boxes"] = np.zeros((36, 4))
    with pytest.raises(UserError, match=r"boxes_only.h5 holds no '\{img_id\}/features'"):
        open_feature_store(tmp_path / "boxes_only.h5")
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f["1/features"] = np.zeros((49, 2048), np.float32)
        f["2/features"] = np.zeros((36, 2048), np.float32)
    store = open_feature_store(tmp_path / "mixed.h5")
    with pytest.raises(UserError, match=r"mixed.h5: '2/features' has shape \(36, 2048\), expected \(49, 2048\)"):
        store[["1", "2"]]
    (tmp_path / "cut.h5").write_bytes((tmp_path / "mixed.h5").read_bytes()[:3000])
    with pytest.raises(UserError, match="cut.h5 cannot be read"):
        open_feature_store(tmp_path / "cut.h5")


def test_malformed_extractions(photos, tiny, tmp_path):
    folder, _ = photos
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .jpg, .jpeg or .png files"):
        image_files(tmp_path / "empty")

    dupes = tmp_path / "dupes"
    shutil.copytree(folder, dupes)
    shutil.copy(folder / "2354786.png", dupes / "nlvr2" / "2354786.jpg")
    with pytest.raises(UserError, match="have the same image id '2354786'"):
        image_files(dupes)

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    jpeg = (folder / "COCO_val2014_000000000042.jpg").read_bytes()
    (broken / "COCO_val2014_000000000042.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated download
    with pytest.raises(UserError, match="cannot read image .*COCO_val2014_000000000042.jpg"):
        extract_features(image_files(broken), tmp_path / "out", tiny, batch_size=2)
    assert len(open_feature_store(tmp_path / "out")) == 2  # the batch before it is kept
    (broken / "COCO_val2014_000000000042.jpg").write_text("not an image")
    with pytest.raises(UserError, match="cannot read image .*COCO_val2014_000000000042.jpg"):
        extract_features(image_files(broken), tmp_path / "out", tiny, batch_size=2)


def test_encoder_choice_errors(tmp_path):
    with pytest.raises(UserError, match="--weights: give the weights of RN101"):
        load_encoder("RN101", None, False, tmp_path)
    with pytest.raises(UserError, match="--weights: give the weights"):
        load_encoder("RN101", "openai", True, tmp_path)
    with pytest.raises(UserError, match=r"'laion9b' is neither a file nor a pretrained tag of RN101 \(.*openai"):
        load_encoder("RN101", "laion9b", False, tmp_path)
    with pytest.raises(UserError, match="neither tiny nor an open_clip CLIP ResNet"):
        load_encoder("ViT-B-32", None, True, tmp_path)
    with pytest.raises(UserError, match="tiny is vlbench's own"):
        load_encoder("tiny", "openai", False, tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load .*junk.pt into open_clip RN50"):
        load_encoder("RN50", str(tmp_path / "junk.pt"), False, tmp_path)


def test_cli_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["features", "extract", "--images", "nothing", "--out", "feats", "--random-weights"])
    assert result.exit_code == 2
    assert "error: --images: nothing is not a folder" in result.output
