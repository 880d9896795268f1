"""Where one stage-1 training step of a VQ3D config spends its time (forward + backward per part).

Runs one real step (``model(images, depth, step)``, backward, AdamW step) for the total, then times
each part forward + backward on the inputs that step gave it, with its inputs detached (so a part's
figure holds its own backward, not its producers'): ViT encoder, quantizer, decoder (with the
lifting), the field's triplane sampling, the field MLP, volume rendering (weights + compositing),
the super-resolution head, the loss terms and the optimiser step. The parts add up to about the
total; the rest is glue (sample placement, reshapes, Python).

Usage::

    python benchmarks/stage1_profile.py                     # tiny, batch 16, 2 threads
    python benchmarks/stage1_profile.py --batch-size 8 --json
    python benchmarks/stage1_profile.py --set lifting_depth_bins=0 --set lifting_depth_weight=0
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from common import device_name  # noqa: E402  (benchmarks/ on sys.path when run as a script)
from vq3dlib.data import ProceduralScenes
from vq3dlib.models import VQ3DModel, get_config
from vq3dlib.render.stratified import stratified_intervals
from vq3dlib.render.volrend import render_weight_from_density
from vq3dlib.train.loop import adamw, apply_overrides
from vq3dlib.train.stage1 import depth_target


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` (one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _fwd_bwd(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]

    def run() -> None:
        out = fn(*leaves)
        if not isinstance(out, torch.Tensor):
            out = torch.cat([o.reshape(-1) for o in out if o is not None])
        out.float().square().mean().backward()

    return run


def profile(
    config: str, batch_size: int, repeats: int, overrides: list[str] | None = None
) -> dict[str, float]:
    """Milliseconds per part of one step (see the module docstring); ``overrides``: ``key=value``
    config fields."""
    torch.manual_seed(0)
    model = VQ3DModel(apply_overrides(get_config(config), overrides or [])).train()
    cfg = model.config
    data = ProceduralScenes(batch_size, cfg.image_size, n_novel_views=0, seed=0)
    items = [data[i] for i in range(batch_size)]
    images = torch.stack([it["image"] for it in items])
    depth = depth_target({"depth": torch.stack([it["depth"] for it in items])})
    opt = adamw(model.generator_parameters(), lr=1e-4)  # as the trainers build it (fused)

    def step() -> None:
        out = model(images, depth=depth, step=10**6)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    parts: dict[str, float] = {"total step": _time(step, repeats)}
    tokens = model.encoder(images * 2 - 1)
    z_q, _, _ = model.quantizer(tokens)
    planes = model.decoder(z_q)
    parts["encoder"] = _time(_fwd_bwd(lambda x: model.encoder(x * 2 - 1), images), repeats)
    parts["quantizer"] = _time(_fwd_bwd(lambda t: model.quantizer(t)[0], tokens), repeats)
    parts["decoder (+ lifting)"] = _time(_fwd_bwd(model.decoder, z_q), repeats)

    cams = model.canonical_cameras(batch_size)
    rays = cams.generate_rays()
    o, d = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
    t0, t1 = stratified_intervals(
        o, d, cfg.samples_per_ray, near=cfg.near, far=cfg.far, inner_fraction=cfg.stratified_inner_fraction
    )
    k = t0.shape[1]
    pos = (o[:, None] + ((t0 + t1) / 2).clamp(max=cfg.far)[..., None] * d[:, None]).reshape(-1, 3)
    scene = rays.scene_index.reshape(-1).repeat_interleave(k)
    feats = model.triplane(pos, planes=planes, scene_index=scene)
    parts[f"triplane sampling ({pos.shape[0]} points)"] = _time(
        _fwd_bwd(lambda p: model.triplane(pos, planes=p, scene_index=scene), planes), repeats
    )
    parts["field MLP"] = _time(_fwd_bwd(lambda f: model.field(f).rgb, feats), repeats)
    out = model.field(feats)
    sigma = out.density.detach().reshape(-1, k)
    rgb = torch.cat([out.rgb, out.features], -1).detach() if out.features is not None else out.rgb.detach()

    def volrend(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        w, _, _ = render_weight_from_density(t0, t1, s)
        return (w[..., None] * c.reshape(*w.shape, -1)).sum(1)

    parts["volume rendering"] = _time(_fwd_bwd(volrend, sigma, rgb), repeats)
    if model.super_resolution is not None:
        r = cfg.render_resolution
        low = torch.rand(batch_size, 3, r, r)
        feat = torch.rand(batch_size, cfg.field_out_features, r, r) if cfg.field_out_features else None
        sr_inputs = (low,) if feat is None else (low, feat)
        parts["super-resolution head"] = _time(_fwd_bwd(model.super_resolution, *sr_inputs), repeats)
    with torch.no_grad():
        full = model(images, depth=depth, step=10**6)
    recon = full["reconstruction"].detach()
    def l2_terms(x: torch.Tensor) -> torch.Tensor:
        low = F.interpolate(x, scale_factor=0.5)
        return F.mse_loss(x, images) + F.mse_loss(low, F.interpolate(images, scale_factor=0.5))

    parts["losses (L2 terms)"] = _time(_fwd_bwd(l2_terms, recon), repeats)

    def opt_step() -> None:
        for p in model.generator_parameters():
            p.grad = torch.zeros_like(p)
        opt.step()

    parts["optimiser step"] = _time(opt_step, repeats)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a model config field (repeatable), e.g. --set samples_per_ray=32")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = profile(args.config, args.batch_size, args.repeats, args.set)
    total = parts["total step"]
    result = {
        "benchmark": "stage1_profile",
        "device": device_name("cpu"),
        "config": args.config,
        "overrides": args.set,
        "batch_size": args.batch_size,
        "images_per_second": round(args.batch_size / total * 1e3, 1),
        "ms": {k: round(v, 1) for k, v in parts.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['device']}, {args.config}, batch {args.batch_size}: {total:.0f} ms per step "
          f"= {result['images_per_second']} images/s")
    for name, ms in parts.items():
        print(f"  {name:<42} {ms:8.1f} ms  {ms / total:6.1%}")


if __name__ == "__main__":
    main()
