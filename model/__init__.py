"""Video-Robin: text- and video-conditioned music generation (pure PyTorch, no Ray).

Shape letters used in docstrings and comments throughout the package:
    B  batch (clips, or cache rows)
    N  patches per clip
    P  latent frames per patch
    D  latent channels (64 for the SongBloom VAE)
    T  sequence length (prefix + patch positions)
    H  hidden width of a transformer
    F  video frames sampled for a clip
    C  audio channels; S audio samples

Importing this package does nothing but define names; nothing downloads at run time.
"""

from model.config import VideoRobinConfig, load_config

__all__ = ["VideoRobinConfig", "load_config"]
