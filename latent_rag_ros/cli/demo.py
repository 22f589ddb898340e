"""``latent-rag demo``: the whole job on the embedded default, on a real pedestrian video.

1. gallery split of vtest.avi (first part) -> person crops -> trusted store (identity vectors + W+);
2. query split (the rest) -> a rosbag2 of camera frames;
3. the graph (store, detector, protector, egress nodes as processes) on a private ROS domain;
4. the bag replayed into it, /reid/protected recorded into a second bag;
5. the evaluation report (privacy, utility, recovery attack, baselines) and the figure grid.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from latent_rag_ros.config import default_config_path, load_config, parse_overrides, ros_name

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
GALLERY_FRAMES = range(0, 480, 8)      # first 48 s of the video: the trusted gallery
QUERY_START = 500                      # the rest: what the robot sees later
# Protector settings for the demo generator (``--set`` overrides them). The paper's step sizes
# (coarse 0.001, fine 0.01, T=10) are in W+ units of StyleGAN-Human; on the 64x32 demo generator
# they barely move the image (SSIM 0.42 to the originals). A sweep on the query crops
# (docs/NOTES.md) chose these: SSIM 0.28, and protected embeddings that match their own person
# better than the other people in the frame in 76% of queries (paper defaults: 52%).
DEMO_PROTECTOR = {"protector.steps": 20, "protector.coarse_step": 0.005, "protector.fine_step": 0.1}
# The demo protects with one 1-thread worker process per CPU core (core/parallel.py): on 2 cores it
# protects ~1.6x the crops per second of one process (docs/perf.md). Not part of DEMO_PROTECTOR, which the
# regression guard and the benchmarks reuse with their own process counts.
DEMO_WORKERS = {"protector.workers": 0}
# The demo's re-ID model (retrieval, L_id, evaluation): the DeepSORT MobileNetV2 fine-tuned on the tracked
# people of vtest.avi frames 0-479 by `latent-rag train reid` (data/demo/REID_MODEL_CARD.md); the untrained
# DeepSORT MobileNetV2 (ImageNet features, the package default) is evaluated beside it as a transfer backbone.
DEMO_REID_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "demo" / "reid_mobilenetv2.pt"
DEMO_REID = {"models.reid": "deepsort_mobilenetv2", "models.reid_path": str(DEMO_REID_WEIGHTS),
             "models.reid_input_height": 128, "models.reid_input_width": 64}
TRANSFER_BACKBONE = "deepsort_mobilenetv2"
# PixelFade / AVIH iterations in the demo (their papers: 100); `--comparison-iters` changes it.
DEMO_COMPARISON_ITERS = 30


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 on success (prints where the report is)."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    import torch

    from latent_rag_ros.datasets import Sample, read_video_frames
    from latent_rag_ros.eval.bags import BagPlan, make_bag
    from latent_rag_ros.models.factory import build_detector, build_models, model_fingerprint
    from latent_rag_ros.people import crop_people
    from latent_rag_ros.store.build import BuildPlan, build_store

    if not VTEST.is_file():
        _say(f"{VTEST} is missing: install it with `sudo apt-get install opencv-doc` (make setup does this as root)")
        return 2
    t_start = time.monotonic()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store_dir = out / "store"

    if not DEMO_REID_WEIGHTS.is_file():
        _say(f"{DEMO_REID_WEIGHTS} is missing (the package was installed without its data files); reinstall it")
        return 2
    settings = {**DEMO_PROTECTOR, **DEMO_WORKERS, **DEMO_REID, **_set_overrides(args)}
    cfg = load_config(args.config or _default_cfg(), {**settings, "store.path": str(store_dir),
                                                      "protector.device": "cpu"})
    models = build_models(cfg, "cpu", with_encoder=True)
    if models.random_weights:
        _say("WARNING: the demo generator/encoder weights are not installed, so this run uses RANDOM-WEIGHT "
             f"models for: {', '.join(models.random_weights)}. Protected images are then noise-like; the numbers "
             "show the pipeline works, not how good the method is.")
    _say(f"models: {json.dumps(models.sources)}")
    _say(f"protector: T={cfg.protector.steps}, coarse step {cfg.protector.coarse_step}, fine step "
         f"{cfg.protector.fine_step}, m={cfg.protector.m}, workers {cfg.protector.workers or 'one per core'} "
         "(demo settings; --set protector.KEY=VALUE changes them)")
    detector = build_detector(cfg)

    _say("1/5 gallery: detecting people in vtest.avi frames 0-479 and building the trusted store")
    frames = dict(read_video_frames(VTEST, max_frames=QUERY_START + args.query_frames * 3))
    gallery = []
    for i in GALLERY_FRAMES:
        for j, p in enumerate(crop_people(detector, frames[i], cfg.detector)):
            gallery.append(Sample(image=p.crop, name=f"vtest#f{i:04d}_b{j}", frame=i))
    with torch.no_grad():
        stats = build_store(BuildPlan(gallery, store_dir, models.reid, models.latent_encoder, batch_size=16,
                                      built_with=model_fingerprint(models), progress=True))
    _say(f"   store: {stats}")

    _say("2/5 query: writing the later frames as a rosbag2 (the camera stream)")
    query_idx = list(range(QUERY_START, QUERY_START + args.query_frames * 3, 3))
    query_idx = [i for i in query_idx if i in frames]
    in_bag = out / "camera_bag"
    make_bag(BagPlan([frames[i] for i in query_idx], in_bag, rate_hz=10.0 / 3))

    _say("3/5 starting store, detector, protector and egress nodes (private ROS domain)")
    # lazy: ROS 2 (rclpy): optional, absent from a pip install
    from latent_rag_ros.nodes.graph import Graph
    from latent_rag_ros.nodes.replay import ReplayPlan, replay_bag

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(110, 200)))
    graph = Graph()
    overrides = {"store.path": str(store_dir), "protector.device": "cpu", "ros.service_timeout_s": 30.0,
                 "detector.max_crops": 4, "link.keys_dir": str(out / "keys"),
                 "ros.evaluation_mode": True}
    _say("   evaluation mode ON: egress keeps identity labels and stage timings for the report "
         "(a deployed robot strips them: ros.evaluation_mode false)")
    # lazy: ROS 2 (rclpy): optional, absent from a pip install
    from latent_rag_ros.nodes.graph import provision_local_keys

    provision_local_keys(args.config or _default_cfg(), overrides)   # the demo's own robot + admin link keys
    # Four node processes share the CPU: one math thread each (oversubscribed OpenMP threads were
    # measured 5-30x slower on a 2-core machine).
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    graph.start(("store_node", "detector_node", "protector_node", "egress_node"), args.config or _default_cfg(),
                {**overrides, **settings}, env=env, log_dir=str(out / "logs"))
    try:
        _say("4/5 replaying the camera bag into the graph, recording /reid/protected")
        rstats = replay_bag(ReplayPlan(in_bag, out / "protected_bag", ros_name(cfg.ros.camera_topic),
                                       ros_name(cfg.ros.egress_topic),
                                       rate=0.25, discovery_timeout=180.0, drain_s=30.0, max_wait_s=300.0,
                                       wait_subscribed=(ros_name(cfg.ros.crops_topic),), first_wait_s=240.0))
        _say(f"   replay: {rstats}")
    finally:
        codes = graph.stop()
    _say(f"   nodes stopped: {codes}")
    if rstats["protected_received"] == 0:
        _say(f"no protected crops were received; see the node logs in {out / 'logs'}")
        return 1

    _say("5/5 evaluating: privacy, utility, recovery attack and baselines")
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.eval.recovery import RecoveryConfig
    from latent_rag_ros.eval.runner import run_eval

    # One OpenMP thread when other work shares the CPU (two were measured much slower then), all cores
    # when it is idle. Measured now: the 1-minute load average still counts the graph just stopped.
    if cpu_busy_share() > 0.5:
        torch.set_num_threads(1)

    # A small U-Net attacker (16 base channels, batch 8, 128x64) so three attacks fit a CPU demo;
    # --attacker picks a stronger one (the report and summary name it).
    attack = RecoveryConfig(model=getattr(args, "attacker", "unet"), steps=args.recovery_steps, channels=16,
                            batch_size=8)
    n_ab = int(getattr(args, "ablation_queries", 8))
    iters = int(getattr(args, "comparison_iters", DEMO_COMPARISON_ITERS))
    comparisons = ("pixelfade", "avih") if iters > 0 else ()
    if getattr(args, "anonymisers", False):
        comparisons += ("privacyreid", "securereid")
    report = run_eval(cfg, str(in_bag), out / "report", models=models, protected_bag=str(out / "protected_bag"),
                      recovery_steps=args.recovery_steps, recovery_model=attack.model, recovery=attack,
                      progress=True,
                      store_path=str(store_dir), ablation=n_ab > 0, ablation_queries=n_ab or None,
                      reid_names=TRANSFER_BACKBONE, comparisons=comparisons,
                      comparison_params={n: {"iters": iters} for n in comparisons})
    _summary(report, out, rstats, models.random_weights, time.monotonic() - t_start)
    return 0


def cpu_busy_share(window_s: float = 1.0) -> float:
    """Share of all CPUs busy over ``window_s`` (from /proc/stat; 1.0 where that file does not exist)."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)   # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(window_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 1.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def _default_cfg() -> str:
    return str(default_config_path() or "")


def _set_overrides(args: argparse.Namespace) -> dict:
    return parse_overrides(getattr(args, "set", []))


def _summary(report: dict, out: Path, rstats: dict, random_weights: list[str], seconds: float) -> None:
    def get(path: str) -> object:
        node: object = report
        for k in path.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        return node

    lines = [
        f"frames replayed: {rstats['frames_played']}, protected crops received on /reid/protected: "
        f"{rstats['protected_received']}",
        f"privacy  (protected vs original): SSIM {get('privacy.ssim_mean')}, PSNR {get('privacy.psnr_mean')}",
        f"utility  cosine(protected emb, original emb): {get('utility.embedding_cosine_mean')}; "
        f"between different people: {get('utility.different_people_cosine_mean')}; own person matched best: "
        f"{get('utility.own_match_rate')} (chance {get('utility.own_match_chance')})",
        f"recovery attack PSNR ({get('recovery.model')} attacker, {get('recovery.steps')} steps): "
        f"latent-rag {get('recovery.psnr_mean')}, "
        f"blur {get('baselines.blur.recovery.psnr_mean')}",
        "Rank-1 / mAP (identities from tracks, published images): " + ", ".join(
            f"{n} {get(p + 'utility.rank1')} / {get(p + 'utility.mAP')}" for n, p in (
                ("latent-rag", ""), ("blur", "baselines.blur."), ("mosaic", "baselines.mosaic."),
                ("pixelfade", "baselines.pixelfade."), ("avih", "baselines.avih."),
                ("privacyreid", "baselines.privacyreid."), ("securereid", "baselines.securereid."),
                ("none", "baselines.none.")) if get(p + "utility.rank1") is not None or n == "latent-rag"),
        f"report: {out / 'report' / 'report.md'} (json: report.json, figure: grid.png)",
        f"took {seconds:.0f} s",
    ]
    if random_weights:
        lines.append(f"NOTE: RANDOM-WEIGHT models were used for {', '.join(random_weights)}")
    for line in lines:
        _say(line)
    sys.stdout.flush()
