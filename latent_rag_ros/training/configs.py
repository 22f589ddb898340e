"""Settings of the two trainers, apart from the training code: ``latent-rag train`` builds its flags
from these dataclasses' fields (one flag per scalar field) without loading the networks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latent_rag_ros.training.augment import parse_policy


@dataclass
class RunSettings:
    """What both trainers' runs share: batch, length, data flips, seed, checkpointing, budget and device.

    Subclasses redeclare ``steps`` with their own default; the fields keep this order in both.
    """

    batch: int = 16
    steps: int = 1000
    xflip: float = 0.5              # probability of mirroring each real crop
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    minutes: float = 0.0            # wall-clock budget of one invocation (0: none)
    threads: int = 0
    device: str = "cpu"

    def validate_run(self) -> None:
        """Raise ValueError for run settings that cannot train."""
        if self.batch < 2 or self.steps < 0 or self.checkpoint_every < 1:
            raise ValueError("need batch >= 2, steps >= 0, checkpoint_every >= 1")


@dataclass
class GeneratorTrainConfig(RunSettings):
    """Architecture and optimisation settings of a generator training run (defaults: the demo model)."""

    resolution: int = 64            # image height; width is height / 2 (StyleGAN-Human's square=False)
    channels: int = 32              # synthesis width (channel_max; channel_base = channels * resolution)
    num_layers: int = 4             # synthesis layers (num_ws = num_layers + 2)
    num_critical: int = 2
    margin_size: int = 4
    lrelu_upsampling: int = 1       # official default 2; 1 is ~4x cheaper on CPU (less alias-free)
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 2
    d_channels: int = 64            # discriminator channel_max (channel_base = 16 * d_channels)
    steps: int = 2000
    g_lr: float = 0.0025            # StyleGAN3-T defaults
    d_lr: float = 0.002
    r1_gamma: float = 0.1
    r1_interval: int = 16
    ema_kimg: float = 5.0
    ema_rampup: float = 0.05
    augment: str = "color,translation,cutout"
    recon_weight: float = 0.0       # > 0: joint encoder / reconstruction warm-up (see module doc)
    recon_l2: float = 1.0
    recon_l1: float = 1.0
    recon_ssim: float = 1.0
    e_lr: float = 0.0005
    e_width: float = 0.25
    e_blocks: list[int] = field(default_factory=lambda: [1, 2, 2, 1])
    e_style_width: int = 64

    def generator_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs of the StyleGAN3-T generator (rectangular ``resolution x resolution/2``)."""
        return {"z_dim": self.z_dim, "c_dim": 0, "w_dim": self.w_dim, "img_resolution": self.resolution,
                "img_channels": 3, "mapping_kwargs": {"num_layers": self.mapping_layers},
                "channel_base": self.channels * self.resolution, "channel_max": self.channels,
                "num_layers": self.num_layers, "num_critical": self.num_critical,
                "margin_size": self.margin_size, "lrelu_upsampling": self.lrelu_upsampling, "square": False}

    def validate(self) -> None:
        """Raise ValueError for settings that cannot train."""
        if self.resolution < 16 or self.resolution & (self.resolution - 1):
            raise ValueError("resolution must be a power of two >= 16")
        self.validate_run()
        if self.r1_interval < 1:
            raise ValueError("r1_interval must be >= 1")
        if len(self.e_blocks) != 4:
            raise ValueError("e_blocks needs four IR-SE stage depths")
        parse_policy(self.augment)


@dataclass
class EncoderTrainConfig(RunSettings):
    """Settings of an encoder training run (defaults: the demo encoder)."""

    # architecture of a fresh encoder (with ``init`` the checkpoint's architecture is used instead)
    width: float = 0.25             # IR-SE width multiplier (channels 64,128,256,512 x width, at least 16)
    blocks: list[int] = field(default_factory=lambda: [1, 2, 2, 1])
    style_width: int = 64           # conv width of the map2style heads
    init: str = ""                  # start from this E4E checkpoint (e.g. the generator run's encoder_warm.pt)
    lr: float = 0.0005
    l2: float = 1.0
    l1: float = 1.0
    ssim: float = 1.0
    id_weight: float = 0.0          # > 0: identity loss with the re-ID encoder ``reid``
    reid: str = "deepsort_mobilenetv2"
    reid_size: list[int] = field(default_factory=lambda: [128, 64])
    delta_weight: float = 2e-4      # e4e's delta-norm regulariser
    progressive_every: int = 0      # steps per newly unlocked W+ delta (0: all deltas from the start)

    def validate(self) -> None:
        """Raise ValueError for settings that cannot train."""
        self.validate_run()
        if len(self.blocks) != 4:
            raise ValueError("blocks needs four IR-SE stage depths")
