"""``latent-rag train generator|encoder|evaluate``: train the small demo models and measure them.

Registered into the main ``latent-rag`` parser by :func:`register`. Hyper-parameter flags default to
"not given": a new run takes the dataclass defaults of :class:`GeneratorTrainConfig` /
:class:`EncoderTrainConfig`; ``--resume`` takes the checkpoint's settings, and a flag that would
change what a step computes is refused (``--steps``, ``--minutes``, ``--checkpoint-every``,
``--log-every``, ``--threads``, ``--device`` may change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from latent_rag_ros.cli.args import add_config_args, config_from_args

# One flag per scalar field of the trainer's config dataclass (GeneratorTrainConfig /
# EncoderTrainConfig): ``--field-name`` (argparse dest = the field name); list fields have their own.
_FLAG_TYPES = (int, float, str)
_HELP = {
    "resolution": "image height (width = height/2); default 64", "channels": "synthesis width; default 32",
    "steps": "total optimisation steps of the run", "batch": "batch size; default 16",
    "minutes": "stop (and checkpoint) after this many minutes of this invocation",
    "recon_weight": "joint encoder/reconstruction warm-up weight (0: plain GAN)",
    "augment": "DiffAugment policy, e.g. color,translation,cutout (none: off)",
    "init": "start from this E4E checkpoint (e.g. GEN_RUN/encoder_warm.pt)",
    "id_weight": "identity loss weight with the re-ID encoder (0: off)",
    "progressive_every": "steps per unlocked W+ delta (0: all from the start)",
    "threads": "torch CPU threads (0: default)",
}


def _blocks(text: str) -> list[int]:
    parts = [int(p) for p in text.split(",") if p.strip()]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("expected four comma-separated block counts, e.g. 1,2,2,1")
    return parts


def config_flags(cls: type) -> dict[str, type]:
    """``{field: type}`` of the int/float/str fields of a config dataclass: the trainer's flags."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if hints[f.name] in _FLAG_TYPES}


def _add_flags(p: argparse.ArgumentParser, flags: dict[str, type]) -> None:
    for dest, typ in flags.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=_HELP.get(dest))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="video, rosbag2, folder of crops, dataset layout or crops .npz")
    p.add_argument("--frames", default=None, help="frame range of a video/bag, START:STOP (e.g. 0:480)")
    p.add_argument("--frame-step", type=int, default=1, help="use every Nth frame of a video/bag")
    p.add_argument("--split", default=None, help="split of a dataset layout (train/query/gallery)")
    p.add_argument("--limit", type=int, default=0, help="use at most this many crops")
    add_config_args(p, "the detector settings")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder (checkpoints, outputs, logs)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--resume-from", default="", help="continue from this checkpoint file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _make_config(cls: type, args: argparse.Namespace, flags: dict[str, type], stored: dict[str, Any] | None) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in (stored or {}).items() if k in names}
    values.update({k: getattr(args, k) for k in flags if getattr(args, k, None) is not None})
    if getattr(args, "e_blocks", None) is not None:
        values["e_blocks"] = args.e_blocks
    if getattr(args, "blocks", None) is not None:
        values["blocks"] = args.blocks
    return cls(**values)


def _stored_config(out: Path, args: argparse.Namespace, kind: str) -> dict[str, Any] | None:
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.training import checkpoints as ck
    from latent_rag_ros.training.generator import resolve_resume

    path = resolve_resume(out, args.resume_from or args.resume)
    if path is None:
        return None
    return dict(ck.load_checkpoint(path, kind, ("config",))["config"])


def _detector_config(args: argparse.Namespace) -> Any:
    return config_from_args(args)


def _crops(args: argparse.Namespace, size: tuple[int, int], cache: Path | None) -> Any:
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.training.data import cached_crops

    crops = cached_crops(args.data, size, cache, frames=args.frames, frame_step=args.frame_step,
                         config=_detector_config(args), split=args.split)
    if args.limit and len(crops) > args.limit:
        # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
        from latent_rag_ros.training.data import CropSet

        crops = CropSet(crops.images[: args.limit].clone(), crops.names[: args.limit], dict(crops.meta))
    print(f"data: {len(crops)} crops of {size[0]}x{size[1]} from {args.data}", file=sys.stderr)
    return crops


def cmd_train_generator(args: argparse.Namespace) -> int:
    """Train or resume a generator run."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.training.generator import GeneratorTrainConfig, train_generator

    out = Path(args.out)
    stored = _stored_config(out, args, "generator") if (args.resume or args.resume_from) else None
    cfg = _make_config(GeneratorTrainConfig, args, config_flags(GeneratorTrainConfig), stored)
    cfg.validate()
    crops = _crops(args, (cfg.resolution, cfg.resolution // 2), out / "crops.npz")
    summary = train_generator(cfg, crops, out, resume=args.resume_from or args.resume,
                              progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("step", "stopped", "elapsed_s_total", "files", "last_losses")}))
    return 0


def cmd_train_encoder(args: argparse.Namespace) -> int:
    """Train or resume an encoder run for a generator file."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.models.generator_io import load_generator
    from latent_rag_ros.training.encoder import EncoderTrainConfig, train_encoder

    out = Path(args.out)
    stored = _stored_config(out, args, "encoder") if (args.resume or args.resume_from) else None
    cfg = _make_config(EncoderTrainConfig, args, config_flags(EncoderTrainConfig), stored)
    cfg.validate()
    G = load_generator(args.generator)
    crops = _crops(args, (int(G.img_height), int(G.img_width)), out / "crops.npz")
    del G
    summary = train_encoder(cfg, crops, args.generator, out, resume=args.resume_from or args.resume,
                            progress=not args.no_progress)
    print(json.dumps({k: summary[k] for k in ("step", "stopped", "elapsed_s_total", "files", "last_losses")}))
    return 0


def cmd_train_evaluate(args: argparse.Namespace) -> int:
    """Mean SSIM (and L1, PSNR) of encode -> regenerate on crops; optional JSON report and figure."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    import torch

    from latent_rag_ros.models.e4e import load_e4e
    from latent_rag_ros.models.generator_io import load_generator
    from latent_rag_ros.training.evaluate import image_grid, reconstruction_report, save_png
    from latent_rag_ros.training.runs import set_threads, write_json

    set_threads(args.threads)
    G = load_generator(args.generator)
    size = (int(G.img_height), int(G.img_width))
    E = load_e4e(args.encoder, num_ws=G.num_ws, input_size=size)
    crops = _crops(args, size, Path(args.cache) if args.cache else None)
    with torch.no_grad():
        report, rec = reconstruction_report(G, E, crops.as_float(), batch=args.batch)
    report.update({"generator": str(args.generator), "encoder": str(args.encoder), "data": crops.meta})
    if args.figure:
        n = min(args.figure_count, len(crops))
        pick = torch.linspace(0, len(crops) - 1, n).round().long()
        save_png(args.figure, image_grid([crops.as_float()[pick], rec[pick]]))
        report["figure"] = str(args.figure)
    if args.report:
        write_json(Path(args.report), report)
    print(json.dumps(report))
    return 0


def register(subparsers: Any, bench_subparsers: Any = None) -> None:
    """Add ``train`` (``generator``, ``encoder``, ``evaluate``, ``reid``) to the ``latent-rag`` parser."""
    # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
    from latent_rag_ros.training.configs import EncoderTrainConfig, GeneratorTrainConfig

    train = subparsers.add_parser("train", help="train the small demo generator / encoder (CPU or GPU)")
    sub = train.add_subparsers(dest="train_command", required=True)

    g_defaults = GeneratorTrainConfig()
    p = sub.add_parser("generator", help="GAN-train a small StyleGAN3 generator on person crops",
                       description=f"Defaults: {json.dumps(dataclasses.asdict(g_defaults))}")
    _add_data_args(p)
    _add_run_args(p)
    _add_flags(p, config_flags(GeneratorTrainConfig))
    p.add_argument("--e-blocks", dest="e_blocks", type=_blocks, default=None,
                   help="IR-SE stage depths of the warm-up encoder, e.g. 1,2,2,1")
    p.set_defaults(func=cmd_train_generator)

    e_defaults = EncoderTrainConfig()
    p = sub.add_parser("encoder", help="train an E4E-style W+ encoder for a generator",
                       description=f"Defaults: {json.dumps(dataclasses.asdict(e_defaults))}")
    _add_data_args(p)
    _add_run_args(p)
    p.add_argument("--generator", required=True, help="generator file (NAME.safetensors + NAME.json, or .pkl)")
    _add_flags(p, config_flags(EncoderTrainConfig))
    p.add_argument("--blocks", dest="blocks", type=_blocks, default=None, help="IR-SE stage depths, e.g. 1,2,2,1")
    p.set_defaults(func=cmd_train_encoder)

    p = sub.add_parser("evaluate", help="mean SSIM of encode -> regenerate on (held-out) crops")
    _add_data_args(p)
    p.add_argument("--generator", required=True)
    p.add_argument("--encoder", required=True, help="E4E checkpoint (e.g. RUN/encoder.pt)")
    p.add_argument("--report", default="", help="write the metrics as JSON here")
    p.add_argument("--figure", default="", help="write originals (top) / reconstructions (bottom) PNG here")
    p.add_argument("--figure-count", type=int, default=12)
    p.add_argument("--cache", default="", help="crops cache file (.npz) to reuse/write")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_train_evaluate)

    from latent_rag_ros.training.reid import ReIDTrainConfig

    p = sub.add_parser("reid", help="train a small re-ID network (MobileNetV2 / OSNet) on tracked people of a video",
                       description=f"Defaults: {json.dumps(dataclasses.asdict(ReIDTrainConfig()))}")
    p.add_argument("--out", required=True, help="output folder (reid_ARCH.pt, reid_train.json)")
    _add_default_flags(p, ReIDTrainConfig)
    p.add_argument("--no-baseline", action="store_true",
                   help="skip evaluating the DeepSORT MobileNetV2 on the same held-out tracks")
    p.set_defaults(func=cmd_train_reid)

    from latent_rag_ros.training.anonymiser import AnonymiserTrainConfig

    p = sub.add_parser("anonymiser", help="train PrivacyReID's / SecureReID's anonymiser (comparison baselines)",
                       description=f"Defaults: {json.dumps(dataclasses.asdict(AnonymiserTrainConfig()))}")
    p.add_argument("--out", required=True, help="checkpoint file (e.g. anonymiser_privacyreid.pt; + .json record)")
    _add_default_flags(p, AnonymiserTrainConfig, {"method": ("privacyreid", "securereid")})
    p.add_argument("--reid", default="demo",
                   help="frozen re-ID model the anonymiser serves: 'demo' (the demo's trained MobileNetV2) "
                        "or KIND[:PATH]")
    p.set_defaults(func=cmd_train_anonymiser)


def cmd_train_anonymiser(args: argparse.Namespace) -> int:
    """Track people of the video, train the anonymiser against a frozen re-ID model, save G and G_R."""
    from latent_rag_ros.config import load_config
    from latent_rag_ros.eval.tracks import tracked_crops
    from latent_rag_ros.models.factory import build_detector, build_reid
    from latent_rag_ros.training.anonymiser import AnonymiserTrainConfig, train_anonymiser

    cfg = AnonymiserTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnonymiserTrainConfig)})
    pcfg = load_config(getattr(args, "config", None) or None, {})
    say = lambda m: print(f"[train anonymiser] {m}", flush=True)  # noqa: E731
    if args.reid == "demo":
        from latent_rag_ros.cli.demo import DEMO_REID

        kind, path = DEMO_REID["models.reid"], DEMO_REID["models.reid_path"]
        pcfg.models.reid_input_height = DEMO_REID["models.reid_input_height"]
        pcfg.models.reid_input_width = DEMO_REID["models.reid_input_width"]
    else:
        kind, _, path = args.reid.partition(":")
    try:
        reid = build_reid(pcfg, "cpu", kind=kind, path=path or "")
        train = tracked_crops(cfg.data, cfg.train_frames, cfg.train_step, build_detector(pcfg), pcfg.detector, "train")
        train_anonymiser(cfg, train, reid, args.out, log=say)
    except (ValueError, OSError) as exc:
        print(f"latent-rag train anonymiser: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_default_flags(p: argparse.ArgumentParser, cls: type,
                       choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """One ``--field-name`` flag per field of ``cls``, typed from its default (tuples as ``A-B`` ranges)."""
    defaults = cls()
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        typ = _frame_range if isinstance(default, tuple) else type(default)
        kw: dict[str, Any] = {"choices": choices[f.name]} if choices and f.name in choices else {}
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ, default=default, **kw)


def _frame_range(text: str) -> tuple[int, int]:
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected START:STOP frame indices, e.g. 0:480")
    return int(a), int(b)


def cmd_train_reid(args: argparse.Namespace) -> int:
    """Track people, train the re-ID network, print held-out Rank-1/mAP (and the DeepSORT MobileNetV2's, beside)."""
    from latent_rag_ros.config import load_config
    from latent_rag_ros.eval.measure import rank_on_tracks
    from latent_rag_ros.eval.tracks import tracked_crops
    from latent_rag_ros.models.factory import build_detector, build_reid
    from latent_rag_ros.training.reid import ReIDTrainConfig, train_reid
    from latent_rag_ros.training.runs import write_json

    cfg = ReIDTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ReIDTrainConfig)})
    pcfg = load_config(getattr(args, "config", None) or None, {})
    det = build_detector(pcfg)
    say = lambda m: print(f"[train reid] {m}", flush=True)  # noqa: E731
    train = tracked_crops(cfg.data, cfg.train_frames, cfg.train_step, det, pcfg.detector, "train")
    held = tracked_crops(cfg.data, cfg.eval_frames, cfg.eval_step, det, pcfg.detector, "eval")
    record = train_reid(cfg, train, held, args.out, rank_on_tracks, log=say)
    if not args.no_baseline:   # the untrained ImageNet MobileNetV2 at the same input size, on the same tracks
        pcfg.models.reid_input_height, pcfg.models.reid_input_width = cfg.height, cfg.width
        record["baseline_deepsort_mobilenetv2"] = rank_on_tracks(build_reid(pcfg, "cpu", kind="deepsort_mobilenetv2"),
                                                                held)
        say(f"DeepSORT MobileNetV2 on the same tracks: {record['baseline_deepsort_mobilenetv2']}")
        write_json(Path(args.out) / "reid_train.json", record)
    return 0
