"""End-to-end tests of the ``vq3d`` command line on a micro model (16 px), plus help and error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vq3dlib import io
from vq3dlib.cli import main
from vq3dlib.train.logger import tensorboard_available

ROOT = Path(__file__).resolve().parents[1]

MICRO = dict(
    image_size=16, render_resolution=8, plane_resolution=16, plane_channels=8, samples_per_ray=8,
    occupancy_resolution=16, encoder_width=32, encoder_heads=2, decoder_width=32, decoder_heads=2,
    codebook_size=32, code_dim=8, disc_channels=8, disc_max_channels=16, field_hidden_dim=16,
    adversarial_weight=0.1, novel_adversarial_weight=0.1,
    prior_width=32, prior_depth=1, prior_heads=2, adversarial_start_step=1,
)  # fmt: skip
SETS = [a for k, v in MICRO.items() for a in ("--set", f"model.{k}={v}")]
COMMANDS = ["demo", "train", "reconstruct", "render", "sample", "eval", "export-mesh"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--out", str(out), "--steps", "2", "--batch-size", "2", "--no-progress",
                     "--device", "cpu", "--set", "train_size=4", "--set", "eval_size=2", *SETS])  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert code == 0
    return out


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (24, 20), (200, 60, 30)).save(path)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "usage: vq3d " + command in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_train_stage1_writes_a_loadable_model(stage1_run, capsys):
    assert (stage1_run / "model.safetensors").is_file()
    assert (stage1_run / "logs" / "scalars.jsonl").is_file()
    assert json.loads((stage1_run / "metrics.json").read_text())["step"] == 2


@pytest.fixture
def bundled(stage1_run, tmp_path, monkeypatch):
    """The micro model of ``stage1_run`` as the bundled default (a temporary weights folder)."""
    from vq3dlib.models import VQ3DModel, pretrained

    weights = tmp_path / "weights"
    weights.mkdir()
    VQ3DModel.load(stage1_run / "model.safetensors").save(
        weights / "tiny-procedural.safetensors", inference=True
    )
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    return weights


def test_reconstruct_with_the_bundled_model_writes_video_depth_and_a_coloured_mesh(
    bundled, image_file, tmp_path, capsys, monkeypatch
):
    trimesh = pytest.importorskip("trimesh")
    monkeypatch.chdir(tmp_path)
    argv = ["reconstruct", str(image_file), "--mesh", "out.glb", "--frames", "3", "--size", "16",
            "--mesh-resolution", "12", "--yaw", "20", "--pitch", "10", "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "reconstructions" / "photo"
    names = ["depth.png", "input.png", "out.glb", "reconstruction.png", "scene.safetensors", "turntable.gif",
             "turntable.mp4", "turntable_depth.gif", "view.png", "view_depth.png"]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == names
    with Image.open(out / "turntable.gif") as gif:
        assert gif.n_frames == 3 and gif.height == 16
    with Image.open(out / "depth.png") as depth:
        assert depth.mode == "RGB" and depth.size == (16, 16)
    mesh = trimesh.load(out / "out.glb", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert io.load_scene_indices(out / "scene.safetensors").shape == (1, 4, 4)
    rend = tmp_path / "rend"
    scene = str(out / "scene.safetensors")
    assert main(["render", "--model", "tiny-procedural", "--scene", scene, "--frames", "2", "--size", "16",
                 "--frames-png", "--yaw", "30", "--out", str(rend)]) == 0  # fmt: skip
    names = ["scene00_depth.png", "scene00_frame000.png", "scene00_frame001.png", "scene00_turntable.gif",
             "scene00_view.png", "scene00_view_depth.png"]  # fmt: skip
    assert sorted(p.name for p in rend.iterdir()) == names


def test_reconstruct_a_folder_and_files_reports_unreadable_ones_and_goes_on(stage1_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (20, 12), (0, 200, 0, 100)).save(images / "leaf.png")
    Image.new("L", (16, 16), 90).save(images / "grey.jpg")
    (images / "broken.png").write_text("not an image")
    (images / "notes.txt").write_text("skipped: not an image extension")
    other = tmp_path / "photo.webp"
    Image.new("RGB", (16, 16), (10, 20, 200)).save(other)
    demo = tmp_path / "demo"  # what `vq3d demo --out demo` writes: the model in demo/train
    (demo / "train").mkdir(parents=True)
    (demo / "train" / "model.safetensors").write_bytes((stage1_run / "model.safetensors").read_bytes())
    out = tmp_path / "out"
    argv = ["reconstruct", str(images), str(other), str(tmp_path / "missing.png"), "--model", str(demo),
            "--frames", "2", "--size", "16", "--crop", "pad", "--background", "black",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "broken.png is not an image" in err and "image not found: " + str(tmp_path / "missing.png") in err
    assert "2 of 5 images failed" in err and "notes.txt" not in err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 2 and all(line.startswith("vq3d: error: ") for line in errors), errors  # own lines
    assert sorted(p.name for p in out.iterdir()) == ["grey", "leaf", "photo"]
    assert (out / "leaf" / "turntable.mp4").is_file() and (out / "photo" / "depth.png").is_file()
    with Image.open(out / "leaf" / "input.png") as seen:  # padded with black, the leaf on black
        top, middle = seen.getpixel((8, 0)), seen.getpixel((8, 8))
    assert top == (0, 0, 0) and middle[1] == pytest.approx(200 * 100 / 255, abs=3) and middle[0] == 0


def test_reconstruct_with_a_mesh_threshold_no_density_reaches_is_one_line_per_image(
    stage1_run, image_file, tmp_path, capsys
):
    other = tmp_path / "other.png"
    Image.new("RGB", (16, 16), (10, 20, 200)).save(other)
    out = tmp_path / "o"
    argv = ["reconstruct", str(image_file), str(other), "--model", str(stage1_run), "--frames", "2",
            "--size", "16", "--mesh", "glb", "--mesh-resolution", "16", "--threshold", "1e30",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 3 and "2 of 2 images failed" in lines[-1], lines
    for line, path in zip(lines, (image_file, other)):
        assert line.startswith(f"vq3d: error: {path}: mesh threshold 1e+30 is outside the density range")
    assert "Traceback" not in err


def test_reconstruct_refuses_a_render_size_above_the_output_size(image_file, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["reconstruct", str(image_file), "--size", "32", "--render-size", "64", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "render_size must be in [1, size=32], got 64" in err, err
    assert not out.exists()


def test_without_bundled_weights_the_error_says_what_to_pass(image_file, tmp_path, monkeypatch, capsys):
    from vq3dlib.models import pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "empty")
    assert main(["reconstruct", str(image_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "no bundled model named 'tiny-procedural'" in err


def test_export_mesh_writes_a_closed_coloured_mesh(bundled, image_file, tmp_path, capsys):
    trimesh = pytest.importorskip("trimesh")
    for suffix in (".ply", ".obj", ".glb"):
        path = tmp_path / f"m{suffix}"
        code = main(["export-mesh", str(image_file), "--resolution", "12", "--out", str(path)])
        assert code == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        mesh = trimesh.load(path, force="mesh")
        assert f"{len(mesh.faces)} faces" in printed and "watertight" in printed
        assert len(mesh.vertices) > 0 and mesh.visual.kind == "vertex"
    assert main(["export-mesh", str(image_file), "--out", str(tmp_path / "m.stl")]) == 2
    assert ".glb" in capsys.readouterr().err


def test_eval_prints_metrics_and_writes_json(stage1_run, tmp_path, capsys):
    path = tmp_path / "m.json"
    assert main(["eval", "--model", str(stage1_run), "--n", "2", "--json", str(path)]) == 0
    metrics = json.loads(path.read_text())
    assert metrics["n_images"] == 2 and {"psnr", "novel_psnr", "depth_abs_rel", "baseline_psnr"} <= set(
        metrics
    )
    assert "novel-view PSNR" in capsys.readouterr().out


def test_stage2_train_and_sample(stage1_run, tmp_path):
    prior_dir = tmp_path / "s2"
    assert main(["train", "--stage", "2", "--stage1", str(stage1_run), "--out", str(prior_dir), "--steps",
                 "2", "--batch-size", "2", "--no-progress", "--set", "train_size=4"]) == 0  # fmt: skip
    assert (prior_dir / "prior.safetensors").is_file() and (prior_dir / "codes.safetensors").is_file()
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(stage1_run), "--prior", str(prior_dir), "--n", "2", "--label", "1",
                 "--top-k", "5", "--frames", "2", "--size", "16", "--out", str(out)]) == 0  # fmt: skip
    assert (out / "samples.gif").is_file() and (out / "sample01_turntable.gif").is_file()
    assert io.load_scene_indices(out / "samples.scene.safetensors").shape == (2, 4, 4)


def test_sample_passes_the_label_to_the_prior(stage1_run, tmp_path):
    from vq3dlib.models import CodePrior
    from vq3dlib.models.prior import DEFAULT_CFG_SCALE, DEFAULT_TOP_K
    from vq3dlib.train.stage1 import load_stage1_model
    from vq3dlib.train.stage2 import save_prior

    cfg = load_stage1_model(stage1_run).config
    prior = CodePrior.from_config(cfg).eval()
    with torch.no_grad():
        prior.class_embed.weight.normal_(0.0, 3.0)  # labels that matter: each class its own code distribution
    codes = torch.zeros(1, cfg.prior_seq_len, dtype=torch.long)
    assert not torch.allclose(prior(codes, 0), prior(codes, 3), atol=1e-2)  # conditioning changes the logits
    path = save_prior(prior, cfg, tmp_path / "prior.safetensors")
    got = {}
    for label in (0, 3):
        out = tmp_path / f"label{label}"
        # a low temperature: the random prior's logits differ by labels only by a few tenths
        argv = ["sample", "--model", str(stage1_run), "--prior", str(path), "--n", "6", "--label", str(label),
                "--seed", "4", "--frames", "1", "--size", "8", "--temperature", "0.05",
                "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        got[label] = io.load_scene_indices(out / "samples.scene.safetensors").reshape(6, -1)
        want = prior.sample(6, label, temperature=0.05, cfg_scale=DEFAULT_CFG_SCALE, top_k=DEFAULT_TOP_K,
                            generator=torch.Generator().manual_seed(4))  # the CLI's default guidance, top-k
        assert torch.equal(got[label], want)  # the samples of class `label`, same seed
    assert not torch.equal(got[0], got[3])


def test_top_k_flag_defaults_to_the_library_default_and_zero_turns_it_off(capsys):
    from vq3dlib.cli import _stage2_demo, build_parser
    from vq3dlib.models.prior import DEFAULT_TOP_K

    parser = build_parser()
    sample = ["sample", "--model", "m", "--prior", "p"]
    assert parser.parse_args(sample).top_k == DEFAULT_TOP_K
    assert parser.parse_args([*sample, "--top-k", "0"]).top_k is None
    assert parser.parse_args([*sample, "--top-k", "5"]).top_k == 5
    assert parser.parse_args(["demo"]).top_k == DEFAULT_TOP_K
    assert parser.parse_args(["demo", "--top-k", "0"]).top_k is None
    assert _stage2_demo(parser.parse_args(["demo", "--top-k", "4"])).eval.top_k == 4  # reaches the sampling
    assert _stage2_demo(parser.parse_args(["demo"])).eval.top_k == DEFAULT_TOP_K
    with pytest.raises(SystemExit):
        parser.parse_args([*sample, "--top-k", "-1"])
    assert "--top-k: must be a whole number >= 0" in capsys.readouterr().err


def test_eval_with_a_prior_reports_the_stage2_figures(stage1_run, tmp_path, capsys):
    from vq3dlib.models import CodePrior
    from vq3dlib.train.stage1 import load_stage1_model
    from vq3dlib.train.stage2 import save_prior

    path = save_prior(CodePrior.from_config(load_stage1_model(stage1_run).config), load_stage1_model(
        stage1_run).config, tmp_path / "p" / "prior.safetensors")  # fmt: skip
    js = tmp_path / "m.json"
    assert main(["eval", "--model", str(stage1_run), "--n", "2", "--prior", str(path), "--train-size", "6",
                 "--prior-eval-size", "4", "--samples-per-class", "1", "--classifier-steps", "2",
                 "--json", str(js)]) == 0  # fmt: skip
    s2 = json.loads(js.read_text())["stage2"]
    assert s2["n_samples"] == 6 and s2["n_held_out"] == 4 and 0 <= s2["class_accuracy"] <= 1
    assert 0 <= s2["copy_fraction"] <= 1 and s2["fid_samples"] > 0
    assert "class accuracy of conditional samples" in capsys.readouterr().out


def test_demo_end_to_end_micro(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--steps", "2", "--batch-size", "2", "--train-size", "4",
                 "--eval-size", "2", "--scenes", "1", "--frames", "2", "--no-progress", "--device", "cpu",
                 "--prior-steps", "2", "--classifier-steps", "2", "--samples-per-class", "1",
                 "--prior-eval-size", "4", *SETS])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    needles = ("reconstruction PSNR", "novel-view PSNR", "depth AbsRel", "baseline",
               "class accuracy of conditional samples", "FID of samples",
               "copying a training code grid")  # fmt: skip
    for needle in needles:
        assert needle in text
    stage2 = json.loads((out / "metrics.json").read_text())["stage2"]
    assert stage2["prior_steps"] == 2 and stage2["metrics"]["n_samples"] == 6
    assert (out / "samples.gif").is_file()
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train_steps"] == 2 and summary["held_out"]["n_images"] == 2
    assert (out / "turntables.gif").is_file() and (out / "depth_00.png").is_file()
    assert (out / "train" / "model.safetensors").is_file()
    assert summary["skipped_steps"] == 0 and summary["skipped_disc_steps"] == 0
    logs = out / "train" / "logs"
    assert (logs / "scalars.jsonl").is_file() and list((logs / "images").glob("*.png"))
    if tensorboard_available():  # the README promises TensorBoard logs (tensorboard is a dependency)
        assert list((logs / "tb").glob("events.out.tfevents.*"))


def test_train_on_a_folder_with_depth_required_names_the_missing_depth(tmp_path, capsys):
    data = tmp_path / "images"
    data.mkdir()
    for name in ("cat.png", "dog.png"):
        Image.new("RGB", (20, 16), (200, 60, 30)).save(data / name)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
            "--device", "cpu", *SETS]  # fmt: skip
    assert main([*argv, "--set", "depth=required"]) == 2
    err = capsys.readouterr().err
    assert "vq3d: error:" in err and "cat.png" in err and "dog.png" in err and "depth=none" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    with pytest.warns(UserWarning, match="no depth"):  # auto: trains without the depth loss, warns
        assert main([*argv, "--set", "eval_size=1"]) == 0
    assert "generator and 0 discriminator steps skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "nope.png", "--model", "/no/model"], "not found"),
        (["train", "--set", "no_such_key=1", "--no-progress"], "unknown config key"),
        (["train", "--set", "model.image_size=18", "--no-progress"], "patch_size"),
        (["train", "--set", "steps=abc", "--no-progress"], "steps"),
        (["train", "--stage", "2", "--no-progress"], "--stage1"),
        (["train", "--data", "/no/such/folder", "--steps", "1", "--no-progress", *SETS], "data"),
        (["eval", "--model", "/no/model"], "not found"),
        (["eval", "--model", "/no/model", "--data", "/some/folder", "--prior", "p"], "procedural scenes"),
        (["demo", "--sweep", "0"], "--sweep"),
        (["render", "--model", "m", "--scene", "s", "--sweep", "400"], "--sweep"),
        (["reconstruct", "x.png", "--threads", "-1"], "--threads"),
        (["reconstruct", "x.png", "--device", "foo"], "--device"),
        (["eval", "--model", "m", "--device", "tpu"], "must be cpu, cuda"),
    ],
)
def test_errors_are_clear_and_exit_nonzero(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_inputs_to_existing_model(stage1_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["reconstruct", str(bad), "--model", str(stage1_run), "--out", str(tmp_path)]) == 2
    assert "not an image" in capsys.readouterr().err
    wrong = tmp_path / "wrong.safetensors"
    io.save_scene(torch.zeros(1, 3, 3, dtype=torch.long), wrong)
    assert main(["render", "--model", str(stage1_run), "--scene", str(wrong), "--out", str(tmp_path)]) == 2
    assert "expects" in capsys.readouterr().err
    assert main(["export-mesh", "--model", str(stage1_run)]) == 2  # neither IMAGE nor --scene
    capsys.readouterr()


def test_unreadable_scene_and_prior_files_and_bad_sampling_options_are_user_errors(
    stage1_run, tmp_path, capsys
):
    text = tmp_path / "text.pt"
    text.write_text("hello")
    floats = tmp_path / "floats.safetensors"
    from safetensors.torch import save_file

    save_file({"indices": torch.full((1, 4, 4), 1.5)}, str(floats))  # float "indices"
    cases = ((text, "cannot be read as a scene file"), (floats, "must be integer code indices"))
    for scene, message in cases:
        argv = ["render", "--model", str(stage1_run), "--scene", str(scene), "--out", str(tmp_path)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    truncated = tmp_path / "prior.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    argv = ["sample", "--model", str(stage1_run), "--out", str(tmp_path / "s"), "--frames", "1"]
    assert main([*argv, "--prior", str(truncated)]) == 2
    assert "--prior" in capsys.readouterr().err
    from vq3dlib.models import CodePrior
    from vq3dlib.train.stage1 import load_stage1_model
    from vq3dlib.train.stage2 import save_prior

    cfg = load_stage1_model(stage1_run).config
    prior = save_prior(CodePrior.from_config(cfg), cfg, tmp_path / "ok.safetensors")
    for option, value in (("--cfg-scale", "nan"), ("--top-p", "0")):
        assert main([*argv, "--prior", str(prior), option, value]) == 2
        assert option.lstrip("-").replace("-", "_") in capsys.readouterr().err


@pytest.mark.slow  # two fresh interpreters importing torch
def test_console_entry_point_exit_codes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ok = subprocess.run([sys.executable, "-m", "vq3dlib.cli", "--help"], capture_output=True, text=True,
                        env=env, timeout=120)  # fmt: skip
    assert ok.returncode == 0 and "vq3d demo" in ok.stdout.replace("'", "")
    bad = subprocess.run([sys.executable, "-m", "vq3dlib.cli", "eval", "--model", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "vq3d: error:" in bad.stderr and "Traceback" not in bad.stderr


def test_library_errors_are_not_turned_into_user_errors(monkeypatch):
    # a bug inside the library (here: any exception from the training run) shows its traceback
    from vq3dlib.train import stage1

    def broken(config):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(stage1, "train_stage1", broken)
    with pytest.raises(ValueError, match="a bug deep inside"):
        main(["train", "--steps", "1", "--no-progress", "--device", "cpu", *SETS])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--model", "m", "--prior", "p", "--n", "0"], "--n"),
        (["demo", "--prior-steps", "0"], "--prior-steps"),
        (["eval", "--model", "m", "--prior", "p", "--samples-per-class", "0"], "--samples-per-class"),
        (["render", "--model", "m", "--scene", "s", "--frames", "0"], "--frames"),
        (["train", "--steps", "0", "--no-progress"], "steps"),
    ],
)
def test_numeric_arguments_are_checked_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "x.png", "--fov", "nan", "--yaw", "10"], "--fov: must be a finite number, got nan"),
        (["reconstruct", "x.png", "--fov", "180"], "--fov: must be in (0, 180) degrees, got 180"),
        (["reconstruct", "x.png", "--distance", "-1"], "--distance: must be a number > 0, got -1"),
        (["render", "--model", "m", "--scene", "s", "--elevation", "nan"], "--elevation: must be a finite"),
        (["reconstruct", "x.png", "--pitch", "95"], "--pitch: must be in (-90, 90) degrees, got 95"),
        (["reconstruct", "x.png", "--background", "notacolour"], "--background: unknown colour 'notacolour'"),
        (["export-mesh", "x.png", "--threshold", "inf"], "--threshold: must be a finite number, got inf"),
    ],
)
def test_bad_numbers_and_colours_are_named_at_parse_time(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_names_an_unreadable_image_and_a_bad_json_path(stage1_run, tmp_path, capsys):
    data = tmp_path / "images"
    data.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(data / "a.png")
    good = (data / "a.png").read_bytes()
    (data / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    argv = ["eval", "--model", str(stage1_run), "--n", "2", "--batch-size", "2"]
    assert main([*argv, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vq3d: error: --data: ") and "b.png is not an image Pillow can read" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*argv, "--json", str(tmp_path)]) == 2
    assert f"--json must be a file path, but {tmp_path} is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*argv, "--json", str(blocker / "sub" / "m.json")]) == 2
    assert "--json: cannot write" in capsys.readouterr().err


def test_demo_and_train_name_an_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "file.txt"
    out.write_text("x")
    for command in ("demo", "train"):
        assert main([command, "--out", str(out), "--steps", "1"]) == 2
        assert f"--out must be a folder, but {out} is a file" in capsys.readouterr().err
