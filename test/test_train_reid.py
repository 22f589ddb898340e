"""Issue 16 item 3: the pieces of ``latent-rag train reid`` on hand-checkable cases, and the committed model.

The training run itself (about 20 minutes on 2 cores) is recorded in data/demo/REID_MODEL_CARD.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_batch_hard_triplet_by_hand() -> None:
    from latent_rag_ros.training.reid import batch_hard_triplet

    # 1-d features: ids 0,0 at 0 and 1; id 1 at 3 and 3.5. Anchor 0: hardest positive 1, hardest negative 3
    feats = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    # margin 3: per-anchor relu(pos - neg + 3): a0: 1-3+3=1; a1: 1-2+3=2; a2: 0.5-2+3=1.5; a3: 0.5-2.5+3=1
    assert float(batch_hard_triplet(feats, labels, 3.0)) == pytest.approx((1 + 2 + 1.5 + 1) / 4)
    assert float(batch_hard_triplet(feats, labels, 0.1)) == 0.0   # well separated: no loss


def test_pk_batch_and_query_gallery_split() -> None:
    from latent_rag_ros.eval.tracks import LabelledCrops, query_gallery
    from latent_rag_ros.training.reid import pk_batch

    by_id = [[0, 1], [2, 3, 4, 5, 6], [7]]
    idx, lab = pk_batch(by_id, 2, 4, torch.Generator().manual_seed(0))
    assert len(idx) == 8 and len(set(lab)) == 2
    for i, c in zip(idx, lab):
        assert i in by_id[c]          # every crop belongs to the identity it is labelled with
    img = np.zeros((4, 2, 3), np.uint8)
    data = LabelledCrops([img] * 6, ["a", "a", "a", "b", "b", "c"], [0, 0, 1, 0, 0, 2], [0, 1, 2, 3, 4, 5])
    q, g = query_gallery(data)
    # a is seen in thirds 0 and 1: one query per (a, third), the middle crop; b and c only once: no query
    assert sorted(q) == [1, 2] and sorted(g) == [0, 3, 4, 5]


def test_committed_demo_reid_model_loads() -> None:
    from latent_rag_ros.cli.demo import DEMO_REID, DEMO_REID_WEIGHTS
    from latent_rag_ros.config import load_config
    from latent_rag_ros.models.factory import build_reid

    assert DEMO_REID_WEIGHTS.is_file() and (DEMO_REID_WEIGHTS.parent / "REID_MODEL_CARD.md").is_file()
    reid = build_reid(load_config(None, DEMO_REID), "cpu")
    out = reid(torch.rand(2, 3, 128, 64))
    assert out.shape == (2, 1280) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    plain = build_reid(load_config(None, {**DEMO_REID, "models.reid_path": ""}), "cpu")
    assert not torch.allclose(plain(torch.ones(1, 3, 128, 64)), reid(torch.ones(1, 3, 128, 64)))  # fine-tuned
