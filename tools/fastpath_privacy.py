"""Privacy and utility of each protector path on the regression-guard crops (issue 17, acceptance 3).

The measurement of test/test_eval_regression.py (16 query crops of the five hand-verified vtest tracks,
gallery = the rest of the tracks, store from the people of frames 0-199, demo models and settings,
every figure on the published image) run for each protector path on the same store and crops:
``eager`` (fast_path false), ``eager-b1`` (the eager loop one crop at a time: the eager path's own
spread, i.e. the noise floor), ``fast`` (default, bit-identical to eager), ``folded`` and
``channels-last`` (protector.fast_reid), ``workers`` / ``workers-folded`` (the fast path in one
1-thread process per core, core/parallel.py). Prints one JSON line per path: SSIM to the originals (privacy:
lower is better), own-match rate and Rank-1 (utility), the SSIM of its images to eager's, and the wall
time per crop (one process, paths in turn; not a clean timing on a shared machine).
Usage: OMP_NUM_THREADS=1 .venv/bin/python tools/fastpath_privacy.py [--paths eager,eager-b1,fast,folded]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
FIXTURE = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "vtest_tracks.json"
PATHS = {"eager": (False, "off", None, 1), "eager-b1": (False, "off", 1, 1), "fast": (True, "off", None, 1),
         "folded": (True, "folded", None, 1), "channels-last": (True, "channels_last", None, 1),
         "workers": (True, "off", None, 0), "workers-folded": (True, "folded", None, 0)}
# ^ name: (fast_path, fast_reid, batch size (None: the config's), protector.workers (0: one per core))


def regression_crops() -> tuple[list[np.ndarray], list[str], list[int], list[np.ndarray], list[str], list[int]]:
    """The regression guard's queries (3-4 fixed times per fixture track, 16 in all) and gallery (the rest)."""
    from latent_rag_ros.datasets import crop, read_video_frames

    tracks = json.loads(FIXTURE.read_text())["tracks"]
    frames = dict(read_video_frames(VTEST, max_frames=703))
    q, qp, qc, g, gp, gc = [], [], [], [], [], []
    for t in tracks:
        dets = t["detections"]
        chosen = {min(range(len(dets)), key=lambda k: abs(dets[k][0] - s)) for s in (610, 640, 670, 700)}
        for k, (f, box) in enumerate(dets):
            img, cam = crop(frames[f], box), (f - 600) // 34
            if k in chosen and len(q) < 16:
                q.append(img), qp.append(t["name"]), qc.append(cam)
            else:
                g.append(img), gp.append(t["name"]), gc.append(cam)
    return q, qp, qc, g, gp, gc


def main() -> int:
    """Protect the crops with each path and print privacy/utility per path."""
    from latent_rag_ros.cli.demo import DEMO_PROTECTOR, DEMO_REID
    from latent_rag_ros.config import load_config
    from latent_rag_ros.core.protector import Protector
    from latent_rag_ros.datasets import Sample, read_video_frames
    from latent_rag_ros.eval.metrics import cosine_distmat, different_people, evaluate_rank, image_similarity, ssim
    from latent_rag_ros.eval.runner import embed_published, published
    from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
    from latent_rag_ros.people import crop_people
    from latent_rag_ros.store import open_store
    from latent_rag_ros.store.build import BuildPlan, build_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default="eager,eager-b1,fast,folded,channels-last")
    ap.add_argument("--paper-settings", action="store_true", help="config defaults (T=10, 0.001/0.01), not the demo's")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    settings = {**DEMO_REID, **({} if args.paper_settings else DEMO_PROTECTOR)}
    cfg = load_config(None, {**settings, "models.generator": "demo", "models.latent_encoder": "demo",
                             "protector.device": "cpu", "protector.seed": 0})
    models = build_models(cfg, "cpu", with_encoder=True)
    det = build_detector(cfg)
    q, qp, qc, g, gp, gc = regression_crops()
    fo, fg = embed_published(models.reid, q), embed_published(models.reid, g)
    ref = None
    print(json.dumps({"T": cfg.protector.steps, "coarse_step": cfg.protector.coarse_step,
                      "fine_step": cfg.protector.fine_step, "threads": torch.get_num_threads(), "queries": len(q),
                      "gallery": len(g), "load_avg": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store_crops = [Sample(p.crop, f"f{i}_b{j}", frame=i)
                       for i, fr in read_video_frames(VTEST, max_frames=200, frame_step=20)
                       for j, p in enumerate(crop_people(det, fr, cfg.detector))]
        with torch.no_grad():
            build_store(BuildPlan(store_crops, Path(tmp) / "store", models.reid, models.latent_encoder,
                                  built_with=model_fingerprint(models), progress=False))
        store = open_store(str(Path(tmp) / "store"))
        try:
            for name in [p for p in args.paths.split(",") if p]:
                fast, fast_reid, bs, workers = PATHS[name]
                pcfg = replace(cfg.protector, fast_path=fast, fast_reid=fast_reid,
                               batch_size=bs or cfg.protector.batch_size, workers=workers)
                prot = Protector(models.generator, models.reid, pcfg, "cpu")
                if prot.pool is not None:
                    prot.pool.start()   # process start-up is not protection time
                torch.manual_seed(0)
                t0 = time.perf_counter()
                res = prot.protect_crops(q, store)[0]
                sec = time.perf_counter() - t0
                pub = published(res)
                fp = embed_published(models.reid, pub)
                cmc, _ = evaluate_rank(cosine_distmat(fp, fg), qp, gp, qc, gc)
                prot.close()
                row = {"path": name, "ssim_mean": round(image_similarity(pub, q)["ssim_mean"], 4),
                       "own_match_rate": different_people(fp, fo, qp, labelled=True)["own_match_rate"],
                       "rank1": float(cmc[0]), "s_per_crop": round(sec / len(q), 2),
                       "load_avg": [round(x, 2) for x in os.getloadavg()]}
                if ref is None:
                    ref = pub
                else:
                    s = [ssim(a, b) for a, b in zip(pub, ref)]
                    row["ssim_to_first_min_mean"] = [round(min(s), 4), round(float(np.mean(s)), 4)]
                print(json.dumps(row), flush=True)
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
