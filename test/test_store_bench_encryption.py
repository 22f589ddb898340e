"""`latent-rag bench store --compare-encryption` at a tiny size: both stores answer, and identically."""

from __future__ import annotations

from pathlib import Path

from latent_rag_ros.store.bench import bench_encryption


def test_encrypted_and_plain_copies_are_measured_alike(tmp_path: Path) -> None:
    res = bench_encryption(600, dim=16, queries=20, latent_shape=(2, 4), workdir=str(tmp_path), rounds=1,
                           say=lambda _: None)
    for kind in ("plain", "enc"):
        assert len(res[kind]) and res[kind]["search_k10"]["p50_ms"] > 0 and res[kind]["retrieve_m10"]["p50_ms"] > 0
    # encryption changes the bytes on disk, never what a search finds
    assert res["plain"]["recall_at_10"] == res["enc"]["recall_at_10"] > 0.5
    plain_db = (tmp_path / "plain_600" / "store.sqlite").read_bytes()
    enc_db = (tmp_path / "enc_600" / "store.sqlite").read_bytes()
    assert plain_db != enc_db
