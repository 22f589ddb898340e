"""``latent-rag train reid``: a small re-ID network (OSNet) trained on tracked people of a video (issue 16 item 3).

The demo video (vtest.avi) has no identity labels, so identities come from the evaluation's IoU +
colour-histogram tracker over the package's person detector (``eval.tracks.tracked_crops``, wired by
the cli, since training and evaluation are independent layers): frames 0-479 train,
frames 500-794 (never seen in training) are evaluated with the Market-1501 protocol (thirds of the
time act as cameras, as in ``latent-rag eval``). Loss: label-smoothed cross-entropy on the track
identities plus a batch-hard triplet loss (Hermans et al. 2017) on the L2-normalised feature,
P identities x K crops per batch, AMSGrad with a cosine decay, random flip / pad-crop / erasing. Saved
under the key names an existing loader reads (``build_net``), so no new loading code is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


@dataclass
class ReIDTrainConfig:
    """What ``train reid`` does: data ranges, network, batch sampling, optimiser and budget."""

    data: str = VTEST
    train_frames: tuple[int, int] = (0, 480)
    eval_frames: tuple[int, int] = (500, 795)
    train_step: int = 2            # every 2nd frame for training (the tracker's gap counts processed frames)
    eval_step: int = 3             # every 3rd for evaluation (as the demo's camera bag)
    arch: str = "mobilenetv2"     # mobilenetv2 (from the DeepSORT ImageNet weights) or osnet_x0_25 (from scratch)
    height: int = 128
    width: int = 64
    ids_per_batch: int = 8         # P
    per_id: int = 4                # K
    steps: int = 1200
    minutes: float = 14.0          # wall-clock cap of the training loop
    lr: float = 3.5e-4             # Adam, fine-tuning (osnet from scratch: --lr 0.003)
    weight_decay: float = 5e-4
    margin: float = 0.3
    label_smooth: float = 0.1
    triplet_weight: float = 1.0
    min_track: int = 6             # crops a training track needs (P x K sampling with replacement below K)
    seed: int = 0
    threads: int = 1
    eval_every: int = 400


def to_tensor(images: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """BGR uint8 crops -> RGB float [N,3,H,W] in [0,1] at the training size (area resize)."""
    import cv2

    arr = np.stack([cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA)[:, :, ::-1] for im in images])
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip, 4-pixel pad + random crop, and random erasing (p 0.5) per image."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    pad = F.pad(x, (4, 4, 4, 4), mode="replicate")
    out = torch.empty_like(x)
    offs = torch.randint(0, 9, (b, 2), generator=gen)
    for i in range(b):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = pad[i, :, dy:dy + h, dx:dx + w]
        if float(torch.rand(1, generator=gen)) < 0.5:
            eh = int(h * float(torch.empty(1).uniform_(0.2, 0.5, generator=gen)))
            ew = int(w * float(torch.empty(1).uniform_(0.2, 0.5, generator=gen)))
            y0 = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
            out[i, :, y0:y0 + eh, x0:x0 + ew] = torch.rand(3, 1, 1, generator=gen)
    return out


def batch_hard_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss: hardest positive and hardest negative per anchor (Euclidean distance)."""
    d = torch.cdist(feats, feats)
    same = labels[:, None] == labels[None, :]
    hardest_pos = torch.where(same, d, torch.zeros_like(d)).amax(1)
    hardest_neg = torch.where(same, torch.full_like(d, math.inf), d).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def pk_batch(by_id: list[list[int]], p: int, k: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """P identities x K crops each (with replacement when an identity has fewer than K): (indices, labels)."""
    ids = torch.randperm(len(by_id), generator=gen)[:p].tolist()
    idx, lab = [], []
    for c in ids:
        members = by_id[c]
        pick = torch.randint(0, len(members), (k,), generator=gen) if len(members) < k else \
            torch.randperm(len(members), generator=gen)[:k]
        idx += [members[int(j)] for j in pick]
        lab += [c] * k
    return idx, lab


def build_net(arch: str, num_classes: int) -> tuple[torch.nn.Module, int, str]:
    """The network to train, with a ``classifier`` head: (net, feature dim, name).

    ``mobilenetv2`` starts from the DeepSORT MobileNetV2 ImageNet weights (the only pretrained
    appearance weights installable here; saved under torchvision's key names, so
    ``models.reid: deepsort_mobilenetv2`` with ``reid_path`` loads it); ``osnet_*`` starts from scratch
    (saved as a torchreid OSNet, ``models.reid: torchreid``).
    """
    from latent_rag_ros.models.reid import load_reid, osnet

    if arch == "mobilenetv2":
        net = load_reid("deepsort_mobilenetv2").net.requires_grad_(True)
        net.classifier = torch.nn.Linear(1280, num_classes)
        return net, 1280, "deepsort_mobilenetv2"
    if arch.startswith("osnet"):
        net = osnet(arch, fc_dims=(512,), num_classes=num_classes)
        return net, int(net.feature_dim), f"torchreid_{arch}"
    raise ValueError(f"unknown re-ID architecture {arch!r}; expected mobilenetv2 or osnet_x0_25/x0_5/...")


def train_reid(cfg: ReIDTrainConfig, train: Any, held: Any, out_dir: str | Path,
               evaluate: Callable[[torch.nn.Module, Any], dict[str, Any]],
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train on ``train``, judge on ``held``, save ``reid_ARCH.pt`` (float16) + ``reid_train.json``; return the record.

    ``train`` / ``held``: labelled crops (``images``, ``pids``, ``camids``: the evaluation's
    ``eval.tracks.tracked_crops``); ``evaluate(encoder, held)`` returns Rank-1/mAP (the cli passes the
    evaluation's ``measure.rank_on_tracks``), so this layer does not import the evaluation.
    """
    from latent_rag_ros.models.reid import ReIDEncoder
    from latent_rag_ros.training.checkpoints import atomic_torch_save
    from latent_rag_ros.training.runs import Deadline, hardware, set_threads, write_json

    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted({p for p in train.pids if train.pids.count(p) >= cfg.min_track})
    if len(names) < cfg.ids_per_batch:
        raise ValueError(f"{cfg.data}: only {len(names)} tracks of >= {cfg.min_track} crops in frames "
                         f"{cfg.train_frames}; need >= {cfg.ids_per_batch} (ids_per_batch)")
    keep = [i for i, p in enumerate(train.pids) if p in set(names)]
    x_all = to_tensor([train.images[i] for i in keep], cfg.height, cfg.width)
    cls = {n: c for c, n in enumerate(names)}
    y_all = [cls[train.pids[i]] for i in keep]
    by_id: list[list[int]] = [[] for _ in names]
    for j, c in enumerate(y_all):
        by_id[c].append(j)
    log(f"data: {len(keep)} training crops of {len(names)} tracks (frames {cfg.train_frames}, step "
        f"{cfg.train_step}); {len(held.pids)} held-out crops of {len(set(held.pids))} tracks")
    net, dim, name = build_net(cfg.arch, len(names))
    enc = ReIDEncoder(net, dim, name, (cfg.height, cfg.width))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True)
    deadline = Deadline(cfg.minutes)
    history: list[dict[str, Any]] = []
    step = 0
    sums = {"id": 0.0, "triplet": 0.0, "acc": 0.0}
    for step in range(1, cfg.steps + 1):
        # cosine decay over the run's progress: steps done or wall-clock budget spent, whichever is further
        budget = deadline.elapsed() / deadline.limit if deadline.limit else 0.0
        progress = min(1.0, max((step - 1) / cfg.steps, budget))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        net.train()
        idx, lab = pk_batch(by_id, cfg.ids_per_batch, cfg.per_id, gen)
        x = enc.preprocess(augment(x_all[idx], gen))
        y = torch.tensor(lab)
        feat = net(x)
        logits = net.classifier(feat)
        l_id = F.cross_entropy(logits, y, label_smoothing=cfg.label_smooth)
        l_tri = batch_hard_triplet(F.normalize(feat, dim=1), y, cfg.margin)
        loss = l_id + cfg.triplet_weight * l_tri
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums["id"] += float(l_id.detach())
        sums["triplet"] += float(l_tri.detach())
        sums["acc"] += float((logits.argmax(1) == y).float().mean())
        if step % 50 == 0:
            rec = {"step": step, **{k: v / 50 for k, v in sums.items()}, "s": round(deadline.elapsed(), 1)}
            sums = dict.fromkeys(sums, 0.0)
            if cfg.eval_every and step % cfg.eval_every == 0:
                net.eval()
                rec["eval"] = evaluate(enc, held)
            history.append(rec)
            log(json.dumps(rec))
        if deadline.expired():
            log(f"time budget of {cfg.minutes} min reached at step {step}")
            break
    net.eval()
    train_s = deadline.elapsed()
    result = evaluate(enc, held)
    # float16 halves the committed file; loading casts back to float32
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()
             if not k.startswith("classifier.")}
    weights = out / f"reid_{cfg.arch}.pt"
    atomic_torch_save(state, weights)
    record = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))), "steps_done": step,
              "train_seconds": round(train_s, 1), "n_train_crops": len(keep), "n_train_ids": len(names),
              "held_out": result, "history": history, "hardware": hardware(),
              "n_parameters": sum(p.numel() for k, p in state.items()), "weights": weights.name}
    write_json(out / "reid_train.json", record)
    log(f"held-out frames {cfg.eval_frames}: Rank-1 {result['rank1']:.3f}, mAP {result['mAP']:.3f} "
        f"({result['n_query']} queries, {result['n_ids']} tracks); weights -> {weights}")
    return record
