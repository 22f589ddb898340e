"""Training tools for the small demo models: a StyleGAN3 generator (GAN) and an E4E-style W+ encoder.

``latent-rag train generator|encoder|evaluate`` (see :mod:`latent_rag_ros.cli.training`). The
library pieces: :mod:`.data` (person crops), :mod:`.augment` (differentiable augmentation),
:mod:`.discriminator`, :mod:`.losses`, :mod:`.checkpoints` (atomic, resumable, safe to load),
:mod:`.runs` (run bookkeeping), :mod:`.generator` and :mod:`.encoder` (the training loops) and
:mod:`.evaluate` (held-out SSIM). No ROS imports here.
"""
