"""A 3D-aware GAN in ~200 lines: an EG3D-style triplane generator trained on procedural images.

Built only from vq3dlib's public blocks:

* generator: latent ``z`` → learned latent tokens → :class:`vq3dlib.TriplaneDecoder` (a small ViT
  decoder) → triplanes ``[B, 3, C, R, R]`` → :class:`vq3dlib.ContractedTriplane` (sampling the planes
  passed per call) + :class:`vq3dlib.TriplaneField` (density, colour), joined by
  :class:`vq3dlib.RadianceField` (``with_planes`` binds each batch's planes);
* rendering: one :class:`vq3dlib.OccupancyGrid` per generated scene (``OccupancyGrid.from_field``,
  fresh every step because the scenes are new) and one batched :class:`vq3dlib.Renderer` call for all
  ``B`` scenes (each camera's rays carry its scene index), channels-first images from
  ``RenderOutput.images()``;
* cameras: random poses from :class:`vq3dlib.NovelViewSampler` (the dataset's pose distribution);
* data: real images of :class:`vq3dlib.ProceduralScenes` (canonical and novel views);
* losses: :class:`vq3dlib.StyleGANDiscriminator` with hinge losses
  (:func:`vq3dlib.discriminator_loss`, :func:`vq3dlib.generator_loss`) and a lazy R1 penalty
  (:func:`vq3dlib.r1_penalty`).

It prints the losses as they move and writes ``samples.png`` (rows: latents, columns: views from
-60 to +60 degrees of azimuth). It shows the API; it is far too small and short to win FID::

    PYTHONPATH=. python docs/examples/triplane_gan.py --steps 300 --out /tmp/gan
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from vq3dlib import (
    Cameras,
    ContractedTriplane,
    NovelViewSampler,
    OccupancyGrid,
    ProceduralScenes,
    RadianceField,
    Renderer,
    StyleGANDiscriminator,
    TriplaneDecoder,
    TriplaneField,
    discriminator_loss,
    generator_loss,
    orbit_cameras,
    r1_penalty,
    set_finite_checks,
)

DISTANCE, FOV = 2.7, 40.0  # the dataset's cameras


class TriplaneGenerator(nn.Module):
    """``z [B, z_dim]`` → triplanes; renders them from any cameras in one batched renderer call."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        g, width = args.token_grid, args.width
        self.z_dim, self.grid_resolution = args.z_dim, args.grid_resolution
        # learned latent tokens, shifted per sample by a mapping of z (a tiny stand-in for StyleGAN's)
        self.tokens = nn.Parameter(torch.randn(1, g * g, width) * 0.02)
        self.mapping = nn.Sequential(
            nn.Linear(args.z_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, g * g * width)
        )
        self.decoder = TriplaneDecoder(
            grid_size=g,
            width=width,
            depth=args.depth,
            heads=4,
            plane_channels=args.channels,
            plane_resolution=args.plane_resolution,
            conv_refine=True,
        )
        self.nerf = RadianceField(
            ContractedTriplane(channels=args.channels, learnable=False, contraction="linf"),
            TriplaneField(args.channels, args.hidden, density_bias=-1.0),
        )
        self.renderer = Renderer(step_size=args.step_size, spacing="contracted", near=0.05, jitter=True)

    def planes(self, z: Tensor) -> Tensor:
        tokens = self.tokens + self.mapping(z).view(z.shape[0], *self.tokens.shape[1:])
        return self.decoder(tokens)  # [B, 3, C, R, R]

    def render(self, planes: Tensor, cameras: Cameras) -> Tensor:
        """Camera ``i`` sees scene ``i`` (``len(cameras) == B``) → rgb ``[B, 3, H, W]`` in [-1, 1]."""
        field = self.nerf.with_planes(planes)  # the renderer's field over the B generated scenes
        # new scenes every step: evaluate each scene's occupancy afresh (no gradient), one grid per scene
        grid = OccupancyGrid.from_field(
            field.density, self.grid_resolution, n_scenes=planes.shape[0], device=planes.device
        )
        out = self.renderer(field, cameras, grid=grid)  # rays carry scene_index; cameras follow the field
        return out.images()["rgb"] * 2 - 1  # [B, 3, H, W] in [-1, 1]

    def forward(self, z: Tensor, cameras: Cameras) -> Tensor:
        return self.render(self.planes(z), cameras)


def real_images(args: argparse.Namespace) -> Tensor:
    """All views (canonical + novel) of ``args.scenes`` procedural scenes, in [-1, 1]."""
    data = ProceduralScenes(size=args.scenes, resolution=args.resolution, n_novel_views=3, seed=args.seed)
    items = [data[i] for i in range(len(data))]
    images = torch.cat([torch.cat([it["image"][None], it["novel_images"]]) for it in items])
    return images * 2 - 1


def save_grid(images: Tensor, rows: int, path: Path) -> None:
    """``images [rows * cols, 3, H, W]`` in [-1, 1] → one PNG, row-major."""
    n, _, h, w = images.shape
    cols = n // rows
    grid = ((images.clamp(-1, 1) + 1) / 2).view(rows, cols, 3, h, w).permute(0, 3, 1, 4, 2)
    Image.fromarray((grid.reshape(rows * h, cols * w, 3) * 255).round().byte().cpu().numpy()).save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--resolution", type=int, default=32, help="rendered/real image size (power of two)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="triplane_gan_out")
    p.add_argument("--quick", action="store_true", help="a few steps at a tiny resolution (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=256, help="procedural scenes in the real set")
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--token-grid", type=int, default=4, help="latent tokens per side")
    p.add_argument("--width", type=int, default=64, help="decoder width")
    p.add_argument("--depth", type=int, default=2, help="decoder transformer blocks")
    p.add_argument("--channels", type=int, default=16, help="triplane channels")
    p.add_argument("--plane-resolution", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32, help="field MLP width")
    p.add_argument("--grid-resolution", type=int, default=32, help="occupancy cells per side")
    p.add_argument("--step-size", type=float, default=1 / 32, help="marching step (contracted space)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--r1-gamma", type=float, default=1.0)
    p.add_argument("--r1-every", type=int, default=4, help="lazy R1: penalty every n steps, scaled by n")
    p.add_argument("--log-every", type=int, default=20)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.resolution, args.batch, args.scenes = min(args.steps, 4), 16, 4, 4
        args.token_grid, args.width, args.depth, args.plane_resolution = 2, 32, 1, 8
        args.grid_resolution, args.step_size, args.log_every = 8, 1 / 8, 1
    return args


def build(args: argparse.Namespace, device: torch.device):
    """Real images, the camera sampler, the generator and the discriminator."""
    reals = real_images(args).to(device)
    size = (args.resolution, args.resolution)
    sampler = NovelViewSampler(DISTANCE, FOV, size, yaw=35.0, pitch=(-5.0, 20.0), seed=args.seed)
    gen = TriplaneGenerator(args).to(device)
    disc = StyleGANDiscriminator(args.resolution, channels=16, max_channels=64).to(device)
    return reals, sampler, gen, disc


def train(gen, disc, reals: Tensor, sampler, args: argparse.Namespace) -> list[dict]:
    """Hinge GAN training with lazy R1; returns the losses of every step."""
    device = reals.device
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.0, 0.99))
    history, t0 = [], time.perf_counter()
    for step in range(args.steps):
        real = reals[torch.randint(len(reals), (args.batch,))]
        # discriminator: hinge on real vs generated (detached) images, lazy R1 on reals
        with torch.no_grad():
            fake = gen(torch.randn(args.batch, args.z_dim, device=device), sampler.sample(args.batch))
        r1_step = step % args.r1_every == 0
        real.requires_grad_(r1_step)
        logits_real = disc(real)
        d_loss = discriminator_loss(logits_real, disc(fake), kind="hinge")
        r1 = r1_penalty(logits_real, real) if r1_step else torch.zeros((), device=device)
        opt_d.zero_grad(set_to_none=True)
        (d_loss + args.r1_gamma / 2 * args.r1_every * r1).backward()
        opt_d.step()
        # generator: new latents and new random cameras, gradients through the renderer
        fake = gen(torch.randn(args.batch, args.z_dim, device=device), sampler.sample(args.batch))
        g_loss = generator_loss(disc(fake), kind="hinge")
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history.append({"step": step + 1, "d_loss": d_loss.item(), "g_loss": g_loss.item(), "r1": r1.item()})
        if step % args.log_every == 0 or step == args.steps - 1:
            print(
                f"step {step + 1:4d}/{args.steps}  d_loss {d_loss.item():.4f}  g_loss {g_loss.item():.4f}  "
                f"r1 {r1.item():.4f}  {time.perf_counter() - t0:6.1f}s",
                flush=True,
            )
    return history


@torch.no_grad()
def sample_views(gen: TriplaneGenerator, args: argparse.Namespace, n_latents: int = 4) -> Tensor:
    """``n_latents`` latents, each seen from 5 azimuths (-60 .. 60 degrees) in one batched render.

    Returns ``[n_latents * 5, 3, H, W]`` in [-1, 1], latent-major.
    """
    gen.eval()  # no jitter
    views = orbit_cameras(12, DISTANCE, 10.0, FOV, (args.resolution, args.resolution))[[10, 11, 0, 1, 2]]
    planes = gen.planes(torch.randn(n_latents, args.z_dim, device=gen.tokens.device))
    return gen.render(planes.repeat_interleave(len(views), 0), Cameras.cat([views] * n_latents))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    set_finite_checks(False)  # the examples are debugged: skip the per-op NaN/Inf input checks
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    reals, sampler, gen, disc = build(args, device)
    print(
        f"{len(reals)} real images {args.resolution}x{args.resolution}; generator "
        f"{sum(p.numel() for p in gen.parameters()) / 1e3:.0f}k params, discriminator "
        f"{sum(p.numel() for p in disc.parameters()) / 1e3:.0f}k; device {device}"
    )
    history = train(gen, disc, reals, sampler, args)
    first, last = history[0], history[-1]
    print(
        f"losses moved: d_loss {first['d_loss']:.4f} -> {last['d_loss']:.4f}, "
        f"g_loss {first['g_loss']:.4f} -> {last['g_loss']:.4f}"
    )
    n_latents = 4
    samples = sample_views(gen, args, n_latents)
    save_grid(samples, n_latents, out_dir / "samples.png")
    save_grid(reals[: 5 * n_latents], n_latents, out_dir / "reals.png")
    print(f"wrote {out_dir / 'samples.png'} ({n_latents} latents x 5 views), reals.png")
    (out_dir / "losses.json").write_text(json.dumps(history))
    return {"history": history, "samples": samples}


if __name__ == "__main__":
    main()
