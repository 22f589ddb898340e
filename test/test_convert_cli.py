"""`latent-rag convert`: an NVlabs-format snapshot -> safetensors + JSON -> identical images."""

from __future__ import annotations

from pathlib import Path

import torch

from latent_rag_ros.cli import main as cli_main
from latent_rag_ros.models.stylegan3 import load_generator

from helpers_nvlabs import make_small_generator, write_nvlabs_snapshot


def test_convert_round_trip_gives_identical_images(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    net = make_small_generator("sg3-human", seed=4)
    pkl = write_nvlabs_snapshot(net, tmp_path / "snap.pkl", marker=marker)
    assert cli_main(["convert", str(pkl), str(tmp_path / "conv")]) == 0
    assert (tmp_path / "conv.safetensors").is_file() and (tmp_path / "conv.json").is_file()
    from_pkl = load_generator(pkl)
    from_st = load_generator(tmp_path / "conv.safetensors")
    ws = from_pkl.mapping(torch.randn(2, from_pkl.z_dim, generator=torch.Generator().manual_seed(0)),
                          truncation_psi=0.7)
    with torch.no_grad():
        a, b, ref = from_pkl.synthesis(ws), from_st.synthesis(ws), net.synthesis(ws)
    assert torch.equal(a, b)
    assert (a - ref).abs().max() <= 1e-4
    assert from_st.img_height == 2 * from_st.img_width  # StyleGAN-Human rectangular
    assert not marker.exists(), "code from the snapshot ran"
