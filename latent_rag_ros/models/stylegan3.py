"""Compatibility shim: the old import path of the StyleGAN3 generator, its ops and ``load_generator``.

Kept because the official-parity tests (test_stylegan3.py, test_nvlabs_pickle.py,
test_convert_cli.py) and the fast-path/generation/protector tests, which stay unchanged, import from
here. New code imports :mod:`latent_rag_ros.models.stylegan.stylegan3` (network),
:mod:`latent_rag_ros.models.stylegan.ops` (ops) and :func:`latent_rag_ros.models.generator_io.load_generator`.
This module only re-exports, so it closes no import cycle (generator_io does not import it).
"""

from latent_rag_ros.models.generator_io import load_generator
from latent_rag_ros.models.stylegan.base import MappingNetwork
from latent_rag_ros.models.stylegan.ops import design_lowpass_filter, filtered_lrelu
from latent_rag_ros.models.stylegan.ops import modulated_conv2d_sg3 as modulated_conv2d
from latent_rag_ros.models.stylegan.stylegan3 import Generator, SynthesisInput, SynthesisLayer, SynthesisNetwork

__all__ = [
    "Generator",
    "MappingNetwork",
    "SynthesisInput",
    "SynthesisLayer",
    "SynthesisNetwork",
    "design_lowpass_filter",
    "filtered_lrelu",
    "load_generator",
    "modulated_conv2d",
]
