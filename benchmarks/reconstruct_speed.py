"""Image → 3D speed: reconstruct one image, render a turntable, extract a coloured mesh, write the files.

Measures what ``vq3d reconstruct IMAGE --mesh out.glb`` does for one image after the one-time C++
extension build (a warm-up run first): the forward pass, a ``--frames``-frame ``--size``² turntable
(the field rendered at ``--render-size``², default the model's ratio, 64² for 128² with the tiny
preset, and super-resolved to ``--size``² by the model's head; ``--render-size 128`` renders every
pixel), a ``--mesh-resolution``³ marching-cubes mesh with vertex colours, and the whole of
:func:`vq3dlib.reconstruction.reconstruct_images` (those plus the MP4, GIFs, PNGs, mesh and codes on
disk). Wall and CPU seconds; the load average is printed, since a shared machine's figures depend on
it. With a render size below ``--size``, also the PSNR of its turntable against every pixel rendered
from the field and of both against the true scene's views (``psnr_db``; not timed). Target: ≤ 5 s on a 2-core
CPU, ≤ 0.5 s on a GPU.

    python benchmarks/reconstruct_speed.py [--model PATH_OR_NAME] [--render-size N] [--device cuda] [--json]

``--model`` defaults to the bundled ``tiny-procedural``; without bundled weights an untrained
``tiny`` model stands in (noted in the output: an untrained field is not a trained one's density).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common  # noqa: F401  (puts the repository on sys.path)
from vq3dlib.data import ProceduralScenes
from vq3dlib.models import VQ3DModel, render_turntable
from vq3dlib.reconstruction import ReconstructOptions, reconstruct_images, render_size_of
from vq3dlib.train.stage1 import load_stage1_model


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _quality(data, scene, frames: dict, args) -> dict[str, float]:
    """PSNR of the turntable (rendered at the render size, super-resolved) against every pixel
    rendered from the field, and of both against the true scene's views (analytic renders)."""
    from vq3dlib.metrics import psnr
    from vq3dlib.models import turntable_cameras

    fast = frames["image"]
    full = render_turntable(scene, args.frames, resolution=args.size)["rgb"]
    truth = data.scene(0).render(turntable_cameras(scene.model.config, args.frames, resolution=args.size))
    truth = truth["rgb"].clamp(0, 1)
    db = lambda a, b: round(float(psnr(a, b).mean()), 2)
    return {"vs_every_pixel": db(fast, full), "vs_truth": db(fast, truth),
            "every_pixel_vs_truth": db(full, truth)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-procedural", help="model path or bundled name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--render-size", type=int, default=None, help="default: the model's ratio")
    parser.add_argument("--mesh-resolution", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # e.g. the automatic mesh level of an untrained field
    notes = []
    try:
        model = load_stage1_model(args.model, map_location=args.device)
    except (FileNotFoundError, ValueError) as exc:
        notes.append(f"untrained tiny model ({exc})")
        model = VQ3DModel.from_config("tiny").to(args.device).eval()
    folder = Path(tempfile.mkdtemp())
    data = ProceduralScenes(1, 128, seed=7)
    pixels = data[0]["image"].permute(1, 2, 0).numpy()
    Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / "scene.png")
    options = ReconstructOptions(frames=args.frames, size=args.size, render_size=args.render_size,
                                 mesh="out.glb", mesh_resolution=args.mesh_resolution)  # fmt: skip
    render_size = render_size_of(model.config, options)
    sr_size = args.size if render_size != args.size else None
    run = lambda: reconstruct_images(model, [folder / "scene.png"], folder / "out", options, progress=False)
    run()  # warm-up: the extension build / load, allocator, caches
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    image = torch.nn.functional.interpolate(image, size=(model.config.image_size,) * 2, mode="area")
    scene, t_rec, c_rec = _timed(lambda: model.reconstruct(image.to(args.device)))
    turn = lambda: render_turntable(scene, args.frames, resolution=render_size, image_size=sr_size)
    _, t_turn, c_turn = _timed(turn)
    mesh, t_mesh, c_mesh = _timed(lambda: scene.mesh(args.mesh_resolution))
    _, t_all, c_all = _timed(run)
    quality = _quality(data, scene, turn(), args) if render_size != args.size else None
    result = {
        "benchmark": "reconstruct_speed",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU",
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "frames": args.frames,
        "size": args.size,
        "render_size": render_size,
        "mesh_resolution": args.mesh_resolution,
        "mesh": {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "watertight": mesh.is_watertight},
        "seconds": {"reconstruct": t_rec, "turntable": t_turn, "mesh": t_mesh, "total_with_files": t_all},
        "cpu_seconds": {"reconstruct": c_rec, "turntable": c_turn, "mesh": c_mesh, "total_with_files": c_all},
        "psnr_db": quality,
        "target_s": 0.5 if args.device.startswith("cuda") else 5.0,
        "notes": notes,
    }
    result["met"] = t_all <= result["target_s"]
    for key, value in result["seconds"].items():
        print(f"{key:<18} {value:8.2f} s wall {result['cpu_seconds'][key]:8.2f} s CPU")
    print(f"{args.frames} frames rendered {render_size}², written {args.size}²; mesh {result['mesh']}")
    if quality:
        print(f"PSNR [dB]: {quality}")
    print(f"load average {result['load_average']}; notes: {notes}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
