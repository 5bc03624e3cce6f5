"""BALNMP reproduction: import of the public layout, large JPEG slides, extractors, the protocol."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from tests.fixtures.balnmp import make_balnmp


def test_import_balnmp_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_balnmp(tmp_path / "BALNMP", n_per_class=(4, 2, 2), splits=True)
    manifest = tmp_path / "out" / "manifest.csv"
    assert main(["mil", "import-balnmp", str(root), "--out", str(manifest), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["columns"]["Patient ID"] == "patient" and rep["columns"]["ALN status"] == "label"
    assert rep["columns"]["Age(years)"] == "age" and rep["columns"]["Tumour Size(cm)"] == "tumour_size"
    assert rep["columns"]["HER2 Expression"] == "her2_expression" and rep["columns"]["HER2"] == "her2"
    assert rep["columns"]["Molecular subtype"] == "molecular_subtype"
    assert "Number of lymph node metastases" in rep["left_out"]  # restates the label
    assert rep["label_counts"] == {"N0": 4, "N+(1-2)": 2, "N+(>2)": 2}
    assert rep["label_spellings"]["N+(1~2)"] == "N+(1-2)" and rep["label_spellings"]["N+(＞2)"] == "N+(>2)"
    assert rep["n_slides"] == 8 and rep["n_annotated"] == 8
    assert sum(rep["splits"].values()) == 8 and rep["splits"]["test"] >= 1
    assert any("--slide-mpp" in n for n in rep["notes"])

    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    assert set(rows[0]) >= {"slide", "patient", "label", "roi", "split", "age", "er"}
    assert not Path(rows[0]["slide"]).is_absolute()  # portable manifest

    from engine.data.geojson import read_region_rings
    from engine.mil.cohort import load_cohort

    cohort = load_cohort(manifest, "three_class")
    assert cohort.class_counts() == {"N0": 4, "N+(1-2)": 2, "N+(>2)": 2}
    assert "age" in cohort.numeric_columns and "er" in cohort.categorical_columns
    region = read_region_rings(cohort.entries[0].roi_path)
    assert len(region) == 1 and region[0].shape == (25, 2)

    # a new user needs no extractor of their own: the shipped statistics extractor is the default
    feats = tmp_path / "features"
    assert main(["mil", "features", str(manifest), "--out", str(feats), "--slide-mpp", "1.0", "--labels", "three_class",
                 "--device", "cpu"]) == 0
    assert "colour-texture-stats.onnx" in capsys.readouterr().err and len(list(feats.glob("*.h5"))) == 8

    # the plain text report names every mapping, and bad input is one line
    assert main(["mil", "import-balnmp", str(root), "--out", str(manifest)]) == 0
    assert "column 'ALN status' -> label" in capsys.readouterr().out
    assert main(["mil", "import-balnmp", str(tmp_path / "missing"), "--out", str(manifest)]) == 2
    assert capsys.readouterr().err.startswith("error: BALNMP folder not found")


def test_label_spellings_in_any_manifest() -> None:
    from engine.mil.balnmp import canonical_label
    from engine.mil.cohort import label_scheme

    assert [canonical_label(s) for s in ("N0", "N+(1-2)", "N+(1~2)", "N+(>2)", "N+(＞2)", " n+ (1-2) ", "N1")] == [
        "N0", "N+(1-2)", "N+(1-2)", "N+(>2)", "N+(>2)", "N+(1-2)", None,
    ]
    three = label_scheme("three_class")
    assert [three.index_of(s) for s in ("N+(1~2)", "N+(＞2)", "N0")] == [1, 2, 0]
    task = label_scheme("N0=N0,N+(>2)=N+(>2)")
    assert task.index_of("N+(＞2)") == 1 and task.index_of("N+(1~2)") is None


def test_large_jpeg_opens_through_pyramid_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from engine.slides import image_cache, open_slide

    rng = np.random.default_rng(0)
    img = (rng.integers(0, 255, (30, 45, 3)).astype(np.uint8).repeat(20, 0).repeat(20, 1))  # 900 x 600, blocky
    src = tmp_path / "slide.jpg"
    Image.fromarray(img).save(src, quality=95)
    # shrink both limits so that this small JPEG is "large" and beyond Pillow's guard
    monkeypatch.setattr(image_cache, "LARGE_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(image_cache, "MIN_LEVEL_SIDE", 200)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(src)
    with open_slide(src, mpp=0.5) as r:
        assert r.info.dimensions == (900, 600) and r.info.level_count >= 3 and r.info.mpp == (0.5, 0.5)
        cache = Path(r.info.properties["metascope.pyramid_cache"])
        region = r.read_region((100, 200), 0, (64, 64))
    assert cache.parent == tmp_path / ".metascope-pyramids" and cache.suffix == ".tif"
    assert Image.MAX_IMAGE_PIXELS == 1_000  # the guard is back for everything else
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(src) as im:
        ref = np.asarray(im.convert("RGB"))[200:264, 100:164]
    Image.MAX_IMAGE_PIXELS = 1_000
    assert np.abs(region[..., :3].astype(int) - ref.astype(int)).mean() < 6  # JPEG tiles, same pixels
    stamp = cache.stat().st_mtime_ns
    with open_slide(src, mpp=0.5) as r:  # reused, not rebuilt
        assert r.info.dimensions == (900, 600)
    assert cache.stat().st_mtime_ns == stamp


def test_builtin_extractors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.mil.features import load_extractor
    from engine.modelpkg import read_metadata
    from engine.paths import resources_dir

    assert main(["mil", "extractor", "--builtin", "stats", "--out", str(tmp_path / "s.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feature_dim"] == 16
    assert main(["mil", "extractor", "--builtin", "pcam-starter", "--out", str(tmp_path / "p.onnx"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    # the shipped starter model's penultimate layer, at the starter model's input size
    starter = read_metadata(resources_dir() / "models" / "pcam-starter.onnx")
    assert rep["input_size"] == starter.input_size and rep["feature_dim"] >= 16
    ext = load_extractor(tmp_path / "p.onnx", device="cpu")
    assert ext.metadata.task == "feature_extractor"
    side = starter.input_size
    assert ext.run(np.zeros((2, 3, side, side), np.float32)).shape == (2, rep["feature_dim"])
    shipped = load_extractor(resources_dir() / "models" / "colour-texture-stats.onnx", device="cpu")
    assert shipped.feature_dim == 16
    assert main(["mil", "extractor", "--backbone", "vgg16_bn", "--out", str(tmp_path / "v.onnx")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["mil", "extractor", "--builtin", "nope", "--out", str(tmp_path / "x.onnx")]) == 2


@pytest.mark.slow
def test_backbone_from_local_weights(tmp_path: Path) -> None:
    import torch

    from engine.mil.extractors import export_backbone
    from engine.mil.features import load_extractor
    from engine.models.vgg16_bn import VGG16BNFeatures

    sd = VGG16BNFeatures().state_dict()
    sd["classifier.6.weight"] = torch.zeros(1000, 4096)  # torchvision's ImageNet head is skipped
    torch.save(sd, tmp_path / "vgg16_bn.pth")
    path = export_backbone("vgg16_bn", tmp_path / "vgg16_bn.pth", tmp_path / "vgg.onnx", input_size=32)
    ext = load_extractor(path, device="cpu")
    assert ext.feature_dim == 512 and ext.metadata.mean == (0.485, 0.456, 0.406) and ext.metadata.input_mpp == 0.5
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit"):
        export_backbone("resnet18", tmp_path / "bad.pth", tmp_path / "r.onnx")


def test_protocol_statistics() -> None:
    from engine.mil.protocol import delong_paired, metrics_at, youden_cutoff

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    s1 = np.array([0.1, 0.2, 0.3, 0.38, 0.4, 0.7, 0.8, 0.9, 0.35, 0.65])
    assert youden_cutoff(y, s1) == pytest.approx(0.4)
    d = delong_paired(y, s1, s1)
    assert d["difference"] == 0 and d["p_value"] == 1.0
    from engine.train.metrics import roc_auc

    s2 = np.array([0.5, 0.1, 0.6, 0.2, 0.3, 0.9, 0.4, 0.8, 0.7, 0.45])
    d = delong_paired(y, s1, s2)
    assert d["auc_1"] == pytest.approx(roc_auc(y.astype(bool), s1)) and d["auc_2"] == pytest.approx(roc_auc(y.astype(bool), s2))
    assert 0 < d["p_value"] < 1 and d["se"] > 0
    m = metrics_at(y, s2, 0.5, n_boot=100)
    assert m["accuracy"] == pytest.approx(0.4) and m["sensitivity"] == pytest.approx(0.4) and m["specificity"] == pytest.approx(0.4)
    assert m["auc_ci95"][0] <= m["auc"] <= m["auc_ci95"][1] and m["accuracy_ci95"][0] <= 0.4 <= m["accuracy_ci95"][1]


@pytest.mark.slow
def test_balnmp_import_features_train_evaluate_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_balnmp(tmp_path / "BALNMP")
    manifest, feats, ext = tmp_path / "manifest.csv", tmp_path / "features", tmp_path / "stats.onnx"
    assert main(["mil", "import-balnmp", str(root), "--out", str(manifest)]) == 0
    assert main(["mil", "extractor", "--builtin", "stats", "--input-size", "32", "--mpp", "1.0", "--out", str(ext)]) == 0
    assert main(["mil", "features", str(manifest), "--extractor", str(ext), "--out", str(feats), "--slide-mpp", "1.0",
                 "--labels", "three_class", "--device", "cpu"]) == 0
    capsys.readouterr()
    from engine.mil.bags import bag_path, read_bag

    bag = read_bag(bag_path(feats, "1"))
    assert 10 < bag.n < 144  # tiles inside the annotated tumour polygon only, not the whole 12 x 12 grid

    run = tmp_path / "run"
    assert main(["train", "mil", "--manifest", str(manifest), "--features", str(feats), "--out", str(run),
                 "--recipe", "balnmp", "--epochs", "2", "--clinical", "age,er", "--device", "cpu"]) == 0
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["recipe"] == "balnmp" and cfg["attention"] == "tanh" and cfg["bag_size"] == 10
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["steps_per_epoch"] > started["train_slides"]  # several random bags per slide
    assert main(["mil", "evaluate", str(run), "--manifest", str(manifest), "--features", str(feats),
                 "--out", str(tmp_path / "eval"), "--subgroup", "age<50"]) == 0
    capsys.readouterr()
    # the exported package scores slides as the run did: the mean over the same fixed bags
    model = tmp_path / "balnmp.onnx"
    assert main(["mil", "export", str(run), "--out", str(model)]) == 0
    from engine.mil.predict import load_aggregator

    agg = load_aggregator(model)
    assert agg.bag_size == 10
    fold = json.loads((run / "fold_1.json").read_text())
    p_run = dict(zip(fold["test_ids"], fold["test_probs"], strict=True))
    from engine.mil.cohort import load_cohort

    entry = load_cohort(manifest).by_id()[fold["test_ids"][0]]
    num, codes, _ = agg.encode({k: v for k, v in entry.clinical.items() if k in agg.clinical.columns})
    p_pkg, att = agg.run(read_bag(bag_path(feats, entry.slide_id)).features, num, codes)
    assert np.allclose(p_pkg, p_run[entry.slide_id], atol=1e-4) and att.sum() == pytest.approx(1.0, abs=1e-4)
    capsys.readouterr()

    out = tmp_path / "protocol"
    assert main(["mil", "protocol", str(manifest), "--features", str(feats), "--out", str(out), "--clinical", "age,er",
                 "--epochs", "1", "--bootstrap", "100", "--device", "cpu", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["tasks"]) == {"N0 vs N+", "N0 vs N+(1-2)", "N0 vs N+(>2)"}
    for rows in rep["tasks"].values():
        t = rows["image+clinical"]["test"]
        assert t["n"] >= 2 and 0 <= t["accuracy"] <= 1 and len(t["auc_ci95"]) == 2
        assert rows["image"]["subgroup"]["n"] <= t["n"]
        assert "p_value" in rows["delong"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Youden" in md and "DeLong" in md and "age < 50" in md


def test_tanh_attention_and_recipe_config(tmp_path: Path) -> None:
    import torch

    from engine.errors import ConfigError
    from engine.mil.model import GatedAttentionMIL, MILModelConfig
    from engine.mil.protocol import balnmp_config
    from engine.mil.train import MILTrainConfig

    cfg = MILModelConfig(feature_dim=8, num_classes=2, attention="tanh")
    model = GatedAttentionMIL(cfg).eval()
    assert model.attention_u is None
    with torch.no_grad():
        logits, att = model(torch.randn(13, 8))
    assert logits.shape == (1, 2) and att.shape == (13,) and float(att.sum()) == pytest.approx(1.0, abs=1e-5)
    old = cfg.to_dict()
    del old["attention"]  # models saved before the option are gated
    assert MILModelConfig.from_dict(old).attention == "gated"
    with pytest.raises(ConfigError):
        MILModelConfig(feature_dim=8, num_classes=2, attention="softmax")
    rec = balnmp_config("m.csv", "f")
    assert (rec.attention, rec.bag_size, rec.val_fraction, rec.test_fraction, rec.recipe) == ("tanh", 10, 0.2, 0.2, "balnmp")
    assert MILTrainConfig(manifest="m.csv", features_dir="f").attention == "gated"  # the default stays gated
    with pytest.raises(ConfigError):
        MILTrainConfig(manifest="m.csv", features_dir="f", bag_size=-1)


def test_import_balnmp_csv_table(tmp_path: Path) -> None:
    from engine.mil.balnmp import import_balnmp, read_table

    root = make_balnmp(tmp_path / "B", n_per_class=(2, 1, 2))
    header, rows = read_table(root / "patient-clinical-data.xlsx")
    (root / "patient-clinical-data.xlsx").unlink()
    rows[0][-1] = "N+(9)"  # an unknown status is reported, not guessed
    csv_path = root / "clinical.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    rep = import_balnmp(root, tmp_path / "m.csv")  # found by its headers
    assert rep.table.endswith("clinical.csv") and rep.n_slides == 4
    assert rep.label_counts == {"N0": 1, "N+(1-2)": 1, "N+(>2)": 2}
    assert any("N+(9)" in p for p in rep.problems)
    assert rep.label_spellings.get("N+(＞2)") == "N+(>2)"
