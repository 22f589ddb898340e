"""`latent-rag eval` end to end on a small Market-1501-style dataset of real people (vtest.avi).

Identities come from linking HOG detections over consecutive frames (IoU tracking); the models are
small random-weight networks (generator, E4E) plus the real DeepSORT MobileNetV2 re-ID weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from latent_rag_ros.eval.report import load_report

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
SMALL = [
    "models.generator=random", "models.latent_encoder=random", "models.random_resolution=32",
    "models.random_channels=16", "models.reid_input_height=128", "models.reid_input_width=64",
    "protector.device=cpu", "protector.m=2", "protector.steps=1", "protector.batch_size=8",
]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _tracks() -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """HOG detections of vtest frames 0..33 linked into tracks (real, consistent identities)."""
    from latent_rag_ros.datasets import crop, read_video_frames
    from latent_rag_ros.models.detectors import load_detector

    det = load_detector("hog", upscale=1.0, min_score=0.3)
    tracks: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
    for idx, frame in read_video_frames(VTEST, max_frames=36, frame_step=3):
        boxes, _ = det.detect(frame)
        for b in boxes:
            best = max(tracks, key=lambda t: _iou(t[-1][1], b), default=None)
            item = (idx, b, cv2.resize(crop(frame, b), (32, 64), interpolation=cv2.INTER_AREA))
            if best is not None and _iou(best[-1][1], b) > 0.3 and best[-1][0] < idx:
                best.append(item)
            else:
                tracks.append([item])
    return tracks


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """query/ bounding_box_test/ bounding_box_train/ with Market-1501 names (cameras alternate)."""
    root = tmp_path_factory.mktemp("data") / "market"
    for d in ("query", "bounding_box_test", "bounding_box_train"):
        (root / d).mkdir(parents=True)
    pid = 0
    for track in _tracks():
        if len(track) >= 3:
            pid += 1
            for k, (idx, _, img) in enumerate(track):
                cam = 1 if k == 0 else 1 + (k % 2)   # query from cam 1; gallery from cams 1 and 2
                folder = "query" if k == 0 else "bounding_box_test"
                cv2.imwrite(str(root / folder / f"{pid:04d}_c{cam}s1_{idx:06d}_{k:02d}.jpg"), img)
        else:
            for k, (idx, _, img) in enumerate(track):  # short tracks: attacker's public data + distractors
                cv2.imwrite(str(root / "bounding_box_train" / f"{100 + len(track) * 10 + k:04d}_c3s1_{idx:06d}_00.jpg"),
                            img)
                cv2.imwrite(str(root / "bounding_box_test" / f"0000_c3s1_{idx:06d}_{k:02d}.jpg"), img)
    cv2.imwrite(str(root / "bounding_box_test" / "-1_c1s1_000000_00.jpg"), np.zeros((64, 32, 3), np.uint8))
    assert pid >= 3, "vtest.avi should give at least three tracked people"
    return root


def _cli(argv: list[str]) -> int:
    try:
        from latent_rag_ros.cli import main
    except ImportError:  # the lead's CLI wires eval.cli.register; fall back to our own parser
        main = None
    if main is not None:
        return main(argv)
    import argparse

    from latent_rag_ros.cli.eval import register

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, None)
    args = parser.parse_args(argv)
    return int(args.func(args))


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> float:
        raise AssertionError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_eval_cli_full_report(market: Path, tmp_path: Path) -> None:
    from latent_rag_ros.config import load_config
    from latent_rag_ros.datasets import list_split, load_entries
    from latent_rag_ros.eval.metrics import cosine_distmat, evaluate_rank
    from latent_rag_ros.eval.runner import embed_crops
    from latent_rag_ros.fileio import sha256_file
    from latent_rag_ros.models.factory import build_reid
    from latent_rag_ros.models.reid import deepsort_weights_path

    weights_copy = tmp_path / "mnv2_copy.pt"
    shutil.copy(deepsort_weights_path(), weights_copy)
    out = tmp_path / "report"
    argv = ["eval", "--data", str(market), "--out", str(out), "--recovery-steps", "6", "--recovery-size", "32x16",
            "--recovery-channels", "8", "--recovery-batch", "8", "--attack-max", "6", "--quiet",
            "--reid", f"deepsort_mobilenetv2:{weights_copy}", "--sweep", "m=1,2", "--sweep", "T=0,1",
            "--mosaic-block", "16", "--blur", "31,10", "--comparison-iters", "2"]
    for s in SMALL:
        argv += ["--set", s]
    assert _cli(argv) == 0

    raw = _strict_json(out / "report.json")
    rep = load_report(out / "report.json")
    n_q = len(list(market.glob("query/*.jpg")))
    assert rep["source"]["n_query"] == n_q and rep["source"]["labelled"] is True

    # every field, finite where it must be
    for key in ("ssim_mean", "psnr_mean"):
        assert math.isfinite(rep["privacy"][key])
        assert math.isfinite(rep["recovery"][key])
    for key in ("embedding_cosine_mean", "rank1", "mAP"):
        assert 0.0 <= rep["utility"][key] <= 1.0 + 1e-6
    for name in ("none", "blur", "mosaic"):
        b = rep["baselines"][name]
        for sect, keys in (("privacy", ("ssim_mean", "psnr_mean")), ("utility", ("embedding_cosine_mean", "rank1",
                                                                                  "mAP")),
                           ("recovery", ("ssim_mean", "psnr_mean"))):
            for k in keys:
                assert b[sect][k] is not None, (name, sect, k)

    # internal consistency
    none, blur, mosaic = (rep["baselines"][n] for n in ("none", "blur", "mosaic"))
    assert none["privacy"]["ssim_mean"] == pytest.approx(1.0) and none["privacy"]["psnr_mean"] == math.inf
    assert raw["baselines"]["none"]["privacy"]["psnr_mean"] == "inf"
    assert none["recovery"]["ssim_mean"] == 1.0 and none["recovery"]["psnr_mean"] == math.inf
    assert none["utility"]["embedding_cosine_mean"] == pytest.approx(1.0, abs=1e-5)
    assert blur["privacy"]["ssim_mean"] < 1.0 and mosaic["privacy"]["ssim_mean"] < 1.0
    assert rep["privacy"]["ssim_mean"] < 1.0 and math.isfinite(blur["privacy"]["psnr_mean"])
    for r in (rep["recovery"], blur["recovery"], mosaic["recovery"]):
        assert r["steps"] == 6 and r["n_train"] > 0 and r["n_eval"] == n_q

    # the "w/o protection" row equals the protocol applied directly to the raw images
    cfg = load_config(None, dict(s.split("=", 1) for s in SMALL))
    reid = build_reid(cfg)
    q = list(load_entries(list_split(market, "query")))
    g = list(load_entries(list_split(market, "gallery")))
    dist = cosine_distmat(embed_crops(reid, [s.image for s in q]), embed_crops(reid, [s.image for s in g]))
    cmc, m_ap = evaluate_rank(dist, [s.pid for s in q], [s.pid for s in g], [s.camid for s in q], [s.camid for s in g])
    assert none["utility"]["rank1"] == pytest.approx(float(cmc[0]))
    assert none["utility"]["mAP"] == pytest.approx(m_ap)

    # transferability: two backbones with identical weights judge identically
    bbs = rep["utility"]["backbones"]
    assert len(bbs) == 2
    first, second = (none["utility"]["backbones"][k] for k in bbs)
    assert first["mAP"] == pytest.approx(second["mAP"]) and first["rank1"] == pytest.approx(second["rank1"])
    assert rep["models"][f"reid:{list(bbs)[1]}"]["sha256"] == sha256_file(weights_copy)

    # sweeps (Fig. 7 shape), config and model provenance, timings
    assert [r["value"] for r in rep["sweeps"]["m"]] == [1, 2] and [r["value"] for r in rep["sweeps"]["T"]] == [0, 1]
    for rows in rep["sweeps"].values():
        assert all(0 < r["ssim_mean"] < 1 and 0 <= r["mAP"] <= 1 for r in rows)
    assert rep["baseline_params"] == {"none": {}, "blur": {"kernel": 31, "sigma": 10.0}, "mosaic": {"block": 16}}
    assert rep["config"]["protector"]["m"] == 2 and rep["config"]["models"]["generator"] == "random"
    assert rep["config_file"]["sha256"] is None or len(rep["config_file"]["sha256"]) == 64
    assert set(rep["random_weights"]) == {"generator", "latent_encoder"}
    per_crop = rep["timings_ms"]["per_crop"]
    assert per_crop["total"] > 0 and {"embed", "retrieve", "generate"} <= set(per_crop)
    for name in ("grid.png", "sweep_m.png", "sweep_T.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "Table I" in md and "Table II" in md and "Table III" in md and "∞" in md


def test_eval_protected_bag(tmp_path: Path) -> None:
    """Protected crops recorded from the graph are matched back to their camera frames."""
    from latent_rag_ros.config import load_config
    from latent_rag_ros.datasets import crop, read_video_frames
    from latent_rag_ros.eval import bags
    from latent_rag_ros.eval.baselines import mosaic
    from latent_rag_ros.eval.runner import embed_crops, run_eval
    from latent_rag_ros.models.factory import build_models

    frames = [f for _, f in read_video_frames(VTEST, max_frames=4)]
    bags.make_bag(bags.BagPlan(frames, tmp_path / "cam", start_ns=10**18, rate_hz=10))
    stamps = [s for _, s, _ in bags.read_images(tmp_path / "cam")]
    cfg = load_config(None, dict(s.split("=", 1) for s in SMALL))
    models = build_models(cfg, "cpu", with_encoder=False)
    boxes = [(250, 215, 36, 96), (495, 150, 40, 90), (635, 235, 52, 92)]
    with bags.BagRecorder(tmp_path / "prot", "mcap") as rec:
        conn = rec.add_topic(bags.PROTECTED_TOPIC, bags.PROTECTED_TYPE)
        for f, stamp in zip(frames, stamps):
            for j, (x, y, w, h) in enumerate(boxes):
                prot = mosaic(crop(f, (x, y, x + w, y + h)))   # stand-in protection: mosaic
                emb = embed_crops(models.reid, [prot])[0]
                rec.write_message(conn, stamp + 5, bags.protected_message(
                    prot, emb, stamp, box=(x, y, w, h), label=f"{j}", embedding_model=models.reid.name))
    rep = run_eval(cfg, str(tmp_path / "cam"), tmp_path / "out", models=models, protected_bag=str(tmp_path / "prot"),
                   recovery_steps=3, progress=False, recovery=__import__(
                       "latent_rag_ros.eval.recovery", fromlist=["x"]).RecoveryConfig(height=32, width=16, channels=8))
    assert rep["source"]["n_query"] == 6 and rep["source"]["n_attack_train"] == 6
    # the "protected" images were the mosaic of the right crops: identical numbers to the mosaic baseline
    assert rep["privacy"]["ssim_mean"] == pytest.approx(rep["baselines"]["mosaic"]["privacy"]["ssim_mean"])
    assert rep["privacy"]["psnr_mean"] == pytest.approx(rep["baselines"]["mosaic"]["privacy"]["psnr_mean"])
    assert rep["utility"]["embedding_cosine_mean"] == pytest.approx(
        rep["baselines"]["mosaic"]["utility"]["embedding_cosine_mean"], abs=1e-5)
    assert rep["utility"]["different_people_cosine_mean"] < rep["baselines"]["none"]["utility"]["embedding_cosine_mean"]
    assert rep["utility"]["rank1"] is None  # no labelled gallery in a graph recording
    assert load_report(tmp_path / "out" / "report.json")["baselines"]["none"]["privacy"]["psnr_mean"] == math.inf


def test_sources_without_split_are_split_by_identity(tmp_path: Path) -> None:
    from latent_rag_ros.datasets import Sample
    from latent_rag_ros.eval.bags import BagPlan, make_bag
    from latent_rag_ros.eval.runner import load_eval_data

    rng = np.random.default_rng(0)
    pids = ["a", "a", "b", "c", "c", "c", None]
    samples = [Sample(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8), f"s{i}", p, None if p is None else 5)
               for i, p in enumerate(pids)]
    make_bag(BagPlan(samples, tmp_path / "bag", start_ns=10**18))
    data = load_eval_data(tmp_path / "bag")
    assert data.q_pids == ["a", "c"] and data.labelled
    assert sorted(str(p) for p in data.g_pids) == ["None", "a", "b", "c", "c"]
    assert set(data.q_camids) == {-1} and set(data.g_camids) == {-2}  # one camera: no same-camera removal
    assert any("single-camera" in n for n in data.notes)
    assert np.array_equal(data.query[0], samples[0].image)
    # unlabelled crops: no ranking, every other crop is a query, the rest are the attacker's data
    for i, s in enumerate(samples[:5]):
        cv2.imwrite(str(tmp_path / f"crop{i}.png"), s.image)
    flat = load_eval_data(tmp_path, max_attack=None)
    assert (len(flat.query), len(flat.attack), flat.labelled) == (3, 2, False)


def test_bench_rank_command() -> None:
    assert _cli(["bench", "rank", "--queries", "20", "--gallery", "100"]) == 0


def test_attacker_pairs_are_identity_disjoint_when_enough() -> None:
    """Issue 16 item 7: the recovery attacker trains on people who are never queried (hand-made ids)."""
    from latent_rag_ros.eval.sources import MIN_DISJOINT_ATTACK, identity_disjoint

    pid_of = {i: ("q1" if i < 3 else None if i == 3 else f"p{i}") for i in range(4 + MIN_DISJOINT_ATTACK)}
    notes: list[str] = []
    picked = identity_disjoint(list(pid_of), ["q1", "q2"], pid_of, notes)
    assert picked == list(range(4, 4 + MIN_DISJOINT_ATTACK))     # not q1's crops, not the unidentified one
    assert "identity-disjoint" in notes[-1]
    few = {i: pid_of[i] for i in range(5)}                          # only one never-queried crop: fall back
    assert identity_disjoint(list(few), ["q1"], few, notes) == list(range(5))
    assert "crop-disjoint only" in notes[-1]
