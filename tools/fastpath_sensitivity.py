"""How sensitive the T-step loop is to rounding: eager at 1 vs 2 threads, fast path with/without folding.

Demo generator, the DeepSORT re-ID encoder, demo settings (T=20, coarse 0.005, fine 0.1), real vtest
crops. Prints the step deviation and image SSIM of each variant against eager at 1 thread.
Usage: OMP_NUM_THREADS=2 .venv/bin/python tools/fastpath_sensitivity.py [--crops 4]
"""

from __future__ import annotations

import argparse
import json

import torch

from latent_rag_ros.config import load_config
from latent_rag_ros.core.fastpath import fast_generation, loss_encoder, step_deviation
from latent_rag_ros.core.generation import StepOptions, identity_aligned_generation, render
from latent_rag_ros.core.imaging import bgr_to_tensor, tensor_to_bgr
from latent_rag_ros.eval.metrics import ssim
from latent_rag_ros.models.factory import build_detector, build_models
from latent_rag_ros.people import crop_people


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crops", type=int, default=4)
    args = ap.parse_args()
    cfg = load_config(None, {"protector.device": "cpu"})
    models = build_models(cfg, "cpu", with_encoder=True)
    g, reid, enc = models.generator, models.reid.eval().requires_grad_(False), models.latent_encoder
    g.eval().requires_grad_(False)
    import cv2
    cap = cv2.VideoCapture("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    crops = []
    det = build_detector(cfg)
    while len(crops) < args.crops:
        ok, frame = cap.read()
        if not ok:
            break
        crops += [p.crop for p in crop_people(det, frame, cfg.detector)]
    crops = crops[: args.crops]
    images = bgr_to_tensor(crops, (g.img_height, g.img_width))
    with torch.no_grad():
        f = reid(bgr_to_tensor(crops, reid.input_size))
        w = enc(images)
    opts = StepOptions(steps=20, coarse_step=0.005, fine_step=0.1)
    torch.set_num_threads(1)
    ref_w, _ = identity_aligned_generation(w, images, f, g, reid, opts)
    with torch.no_grad():
        ref_img = render(g, ref_w)

    def report(name: str, w_adv: torch.Tensor) -> None:
        with torch.no_grad():
            img = render(g, w_adv)
        s = [ssim(a, b) for a, b in zip(tensor_to_bgr(img), tensor_to_bgr(ref_img))]
        print(json.dumps({"variant": name, **step_deviation(w_adv, ref_w, opts),
                          "ssim_min": round(min(s), 4), "ssim_mean": round(sum(s) / len(s), 4)}), flush=True)

    report("eager 1 thread (again)", identity_aligned_generation(w, images, f, g, reid, opts)[0])
    report("fast, no folding, 1 thread", fast_generation(w, images, f, g, reid, opts).w_adv)
    report("fast, folded encoder, 1 thread", fast_generation(w, images, f, g, loss_encoder(reid), opts).w_adv)
    torch.set_num_threads(2)
    report("eager 2 threads", identity_aligned_generation(w, images, f, g, reid, opts)[0])
    report("eager, batch one by one", torch.cat([identity_aligned_generation(
        w[i:i + 1], images[i:i + 1], f[i:i + 1], g, reid, opts)[0] for i in range(len(w))]))


if __name__ == "__main__":
    main()
