"""StyleGAN networks laid out as NVlabs does: ``ops``, a ``base`` Generator, one network per file."""
