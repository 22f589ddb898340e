"""Sweep protector settings on the demo's query crops: privacy (SSIM/PSNR) against utility (cosine).

How the demo's protector settings (latent_rag_ros/demo.py, DEMO_PROTECTOR) were chosen; a benchmark,
not a test. Each setting is a comma-separated list of protector keys; settings are separated by ';':

    .venv/bin/python tools/demo_sweep.py "steps=10;steps=20,coarse_step=0.005,fine_step=0.1"

The gallery (frames 0-479 every 8th, HOG crops) becomes a store under --store (built once); the
queries are the HOG crops (at most 4 per frame) of frames 500, 503, ... 617. For each setting it prints
one JSON line: mean SSIM/PSNR protected vs original, mean cosine of the protected embedding to its
own original and to other people of the same frame, the own-match rate (own original closer than
every frame-mate's) and seconds per crop (one thread).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from latent_rag_ros.cli.demo import VTEST
from latent_rag_ros.config import default_config_path, load_config
from latent_rag_ros.core.protector import Protector
from latent_rag_ros.datasets import Sample, read_video_frames
from latent_rag_ros.eval.metrics import different_people, image_similarity
from latent_rag_ros.eval.runner import embed_crops
from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
from latent_rag_ros.people import crop_people
from latent_rag_ros.store import open_store
from latent_rag_ros.store.build import BuildPlan, build_store


def _setting(text: str, base):
    types = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    out = {}
    for kv in filter(None, text.split(",")):
        key, value = kv.split("=", 1)
        if key not in types:
            raise SystemExit(f"unknown protector key {key!r}")
        out[key] = (value.lower() in ("1", "true")) if types[key] is bool else types[key](value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", help='e.g. "steps=10;steps=20,coarse_step=0.005"')
    ap.add_argument("--store", default="demo_sweep_store", help="store folder (built when missing)")
    ap.add_argument("--frames", type=int, default=40, help="query frames (every 3rd from 500)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(default_config_path())
    models = build_models(cfg, "cpu", with_encoder=True)
    detector = build_detector(cfg)
    frames = dict(read_video_frames(VTEST, max_frames=500 + 3 * args.frames))
    if not Path(args.store, "store.sqlite").is_file():
        gallery = [Sample(image=p.crop, name=f"f{i}_{j}", frame=i) for i in range(0, 480, 8)
                   for j, p in enumerate(crop_people(detector, frames[i], cfg.detector))]
        with torch.no_grad():
            build_store(BuildPlan(gallery, args.store, models.reid, models.latent_encoder,
                                  built_with=model_fingerprint(models), progress=False))
    store = open_store(args.store, read_only=True)
    qcfg = replace(cfg.detector, max_crops=4)
    crops, frame_of = [], []
    for i in range(500, 500 + 3 * args.frames, 3):
        for p in crop_people(detector, frames[i], qcfg):
            crops.append(p.crop)
            frame_of.append(i)
    original = embed_crops(models.reid, crops)
    for text in args.settings.split(";"):
        pc = replace(cfg.protector, **_setting(text, cfg.protector))
        protector = Protector(models.generator, models.reid, pc, device="cpu")
        t0 = time.perf_counter()
        protected, _ = protector.protect_crops(crops, store)
        seconds = time.perf_counter() - t0
        feats = embed_crops(models.reid, protected)
        sim = image_similarity(protected, crops)
        cos = float(np.mean(np.sum(feats * original, axis=1)))
        diff = different_people(feats, original, frame_of, labelled=False)
        print(json.dumps({"setting": text, "crops": len(crops), "ssim": round(sim["ssim_mean"], 3),
                          "psnr": round(sim["psnr_mean"], 2), "cos_own": round(cos, 3),
                          "cos_different": round(diff["different_people_cosine_mean"], 3),
                          "own_match": round(diff["own_match_rate"], 3),
                          "own_match_chance": round(diff["own_match_chance"], 3),
                          "s_per_crop": round(seconds / len(crops), 2)}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
