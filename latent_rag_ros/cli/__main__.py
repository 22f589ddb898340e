"""``python -m latent_rag_ros.cli``: the ``latent-rag`` command."""

from latent_rag_ros.cli import main

raise SystemExit(main())
