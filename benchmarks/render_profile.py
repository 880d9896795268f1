"""Where one frame of ``render_speed.py`` goes: per-stage CPU time of our renderer (torch.profiler).

Renders the benchmark scene (one scene, ``--resolution`` px, compiled kernels, the chunks of rays in
turn as ``Renderer(threads=1)`` does, each op on all ``--threads``) after two warm-up frames, under
``torch.profiler`` with a label around every stage of :class:`~vq3dlib.render.Renderer`:
marching (``ray_march``), the field's evaluations (``field``: without autograd, as here, the
early-stop pre-pass evaluates the whole field at the marched samples and the render reuses its
values at the kept ones; ``field.density`` runs when gradients are on), volume rendering
(visibility, weights, accumulation, ``pack_info``) and the NaN/Inf input checks (``aten::aminmax``);
the remainder is Python glue (positions, indexing, merging the marching rounds). ``--copy-layout`` passes the
planes as ``[B, 3, C, H, W]`` contiguous, so every triplane call pays the channels-last layout copy
(``planes_channels_last``), as ``render_speed.py``'s field does not.

    python benchmarks/render_profile.py [--resolution 128] [--threads 2] [--repeats 3] [--copy-layout]
                                        [--json]

Prints the median over ``--repeats`` frames of each stage in ms and as a share of the frame.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import render_speed
import torch
from torch.profiler import ProfilerActivity, profile, record_function

STAGES = (
    "ray_march",
    "render_visibility_from_density",
    "render_weight_from_density",
    "accumulate_along_rays",
    "pack_info",
)
KERNELS = (
    "vq3dlib::march_packed",
    "vq3dlib::triplane_sample_fwd",
    "vq3dlib::planes_channels_last",
    "vq3dlib::volrend_density_fwd",
    "aten::aminmax",
)


def _labelled(name: str, fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        with record_function("stage: " + name):
            return fn(*args, **kwargs)

    return inner


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copy-layout", action="store_true", help="planes contiguous [B, 3, C, H, W]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import vq3dlib.render.renderer as renderer_module

    for name in STAGES:  # the renderer's module-level names: label each call
        setattr(renderer_module, name, _labelled(name, getattr(renderer_module, name)))
    setup_args = argparse.Namespace(
        batch=1, plane_resolution=256, resolution=args.resolution, grid_resolution=128, step_size=1 / 128
    )
    setup = render_speed.Setup(setup_args, torch.device("cpu"))
    field = setup.field
    if args.copy_layout:
        field.planes_cl = field.planes
    field.density = _labelled("field.density", field.density)
    render_speed.SceneField.__call__ = _labelled("field", render_speed.SceneField.__call__)
    # the chunks in turn (Renderer(threads=1)): every op of the frame on the profiled threads
    fns = setup.closures(32, None)
    render = fns.get("vq3dlib (ext, threads=1)", fns["vq3dlib (ext)"])
    render(), render()
    frames = []
    for _ in range(args.repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            render()
            total = (time.perf_counter() - start) * 1e3
        ms = {"frame": total}
        for event in prof.key_averages():
            if event.key.startswith("stage: ") or event.key in KERNELS:
                ms[event.key] = event.cpu_time_total / 1e3
        frames.append(ms)
    median = {k: statistics.median(f.get(k, 0.0) for f in frames) for k in {k for f in frames for k in f}}
    median = dict(sorted(median.items(), key=lambda kv: -kv[1]))
    staged = sum(v for k, v in median.items() if k.startswith("stage: "))
    median["rest (Python glue)"] = median["frame"] - staged
    out = {"resolution": args.resolution, "threads": args.threads, "copy_layout": args.copy_layout,
           "median_ms": median}
    if args.json:
        print(json.dumps(out))
        return out
    print(f"one {args.resolution}^2 frame, {args.threads} threads, median of {args.repeats} (torch.profiler)")
    for k, v in median.items():
        print(f"{k:40s} {v:8.1f} ms  {100 * v / median['frame']:5.1f}%")
    return out


if __name__ == "__main__":
    main()
