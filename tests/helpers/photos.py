"""A smooth synthetic 'photo' for geometry tests (no scikit-image needed)."""
import torch


def smooth_photo(height: int = 150, width: int = 220, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB image in [0, 1] (a few low-frequency waves per channel), ``(1, 3, H, W)`` float32."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 1, height, dtype=torch.float64)[:, None]
    cols = torch.linspace(0, 1, width, dtype=torch.float64)[None, :]
    channels = []
    for _ in range(3):
        f = torch.rand(4, 2, generator=gen, dtype=torch.float64) * 12
        phase = torch.rand(4, generator=gen, dtype=torch.float64) * 6.3
        wave = sum(torch.sin(f[i, 0] * rows + f[i, 1] * cols + phase[i]) for i in range(4))
        channels.append(0.5 + 0.12 * wave)
    return torch.stack(channels)[None].clamp(0, 1).float()
