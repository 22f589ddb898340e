"""Compatibility shim: the old import path of the StyleGAN2 generator and the shared StyleGAN ops.

Kept because the official-parity tests (test_stylegan2.py, test_nvlabs_pickle.py), which must stay
unchanged, import from here. New code imports :mod:`latent_rag_ros.models.stylegan.stylegan2`
(network), :mod:`latent_rag_ros.models.stylegan.ops` (ops) or :mod:`latent_rag_ros.models.stylegan.base`.
"""

from latent_rag_ros.models.stylegan.base import FullyConnectedLayer, MappingNetwork
from latent_rag_ros.models.stylegan.ops import (
    bias_act,
    conv2d_resample,
    filter_size,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upfirdn2d,
    upsample2d,
)
from latent_rag_ros.models.stylegan.stylegan2 import (
    Conv2dLayer,
    Generator,
    SynthesisBlock,
    SynthesisLayer,
    SynthesisNetwork,
    ToRGBLayer,
)

__all__ = [
    "Conv2dLayer",
    "FullyConnectedLayer",
    "Generator",
    "MappingNetwork",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "bias_act",
    "conv2d_resample",
    "filter_size",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
