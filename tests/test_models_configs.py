"""Tests for vq3dlib.models.configs: presets, validation, serialisation, parameter counts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vq3dlib.models import (
    CodePrior,
    TriplaneDecoder,
    TriplaneField,
    ViTEncoder,
    VQ3DConfig,
    get_config,
    list_configs,
    param_count,
)

SIZE_FIELDS = [
    "image_size", "patch_size", "encoder_width", "encoder_depth", "encoder_heads", "codebook_size",
    "code_dim", "decoder_width", "decoder_depth", "decoder_heads", "plane_resolution", "plane_channels",
    "samples_per_ray", "march_step_size", "render_resolution", "field_hidden_dim", "l2_weight",
    "perceptual_weight", "adversarial_weight", "novel_adversarial_weight", "depth_weight", "quantizer_weight",
    "novel_yaw_degrees", "novel_pitch_degrees", "novel_translation", "quantizer", "l2_normalize_codes",
    "commitment_weight", "prior_width", "prior_depth", "prior_heads", "num_classes",
    "super_resolution_hidden", "field_dir_frequencies", "field_out_features",
]


def test_presets_registered_and_valid():
    assert {"tiny", "imagenet256"} <= set(list_configs())
    for name in ("tiny", "imagenet256"):
        cfg = get_config(name)
        assert cfg.name == name
        assert cfg.grid_size * cfg.patch_size == cfg.image_size
        assert cfg.plane_upscale * cfg.grid_size == cfg.plane_resolution
        assert cfg.num_tokens == cfg.grid_size**2


def test_every_size_is_a_field():
    names = {f.name for f in dataclasses.fields(VQ3DConfig)}
    missing = [n for n in SIZE_FIELDS if n not in names]
    assert not missing


def test_imagenet256_follows_the_paper():
    cfg = get_config("imagenet256")
    assert (cfg.image_size, cfg.patch_size) == (256, 8)
    assert (cfg.encoder_width, cfg.encoder_depth, cfg.encoder_heads) == (768, 12, 12)
    assert (cfg.codebook_size, cfg.code_dim) == (8192, 32)
    assert cfg.l2_normalize_codes and cfg.quantizer == "vq"
    assert cfg.num_tokens == 1024 and cfg.vocab_size == 8192 and cfg.num_classes == 1000


def test_tiny_is_small():
    cfg = get_config("tiny")
    assert cfg.image_size <= 64 and cfg.render_resolution <= 64
    assert cfg.encoder_depth <= 4 and cfg.encoder_width <= 128


def test_tiny_classes_match_the_procedural_dataset():
    from vq3dlib.data.procedural import CLASSES, ProceduralScenes

    assert get_config("tiny").num_classes == len(CLASSES) == len(ProceduralScenes.classes)


def test_size_fields_reach_the_blocks():
    cfg = get_config("tiny", use_view_dirs=True, field_dir_frequencies=2, mlp_backend="torch")
    field = TriplaneField.from_config(cfg)
    assert field.dir_frequencies == 2
    assert field.color_net[0].in_features == cfg.field_geo_features + 3 + 6 * 2


def test_overrides_and_fresh_copies():
    a = get_config("tiny", encoder_depth=5)
    assert a.encoder_depth == 5
    a.encoder_width = 1024
    assert get_config("tiny").encoder_width != 1024
    assert get_config(a) is a
    assert get_config(a, code_dim=4).code_dim == 4


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"patch_size": 5}, "patch_size"),
        ({"plane_resolution": 36}, "plane_resolution"),
        ({"encoder_heads": 5}, "encoder_heads"),
        ({"decoder_heads": 5}, "decoder_heads"),
        ({"quantizer": "kmeans"}, "quantizer"),
        ({"mlp_backend": "cuda"}, "mlp_backend"),
        ({"depth_weight": -1.0}, "depth_weight"),
        ({"image_size": 0}, "image_size"),
        ({"near": 10.0, "far": 1.0}, "near"),
        ({"prior_class_dropout": 1.0}, "prior_class_dropout"),
        ({"fsq_levels": (1, 5)}, "fsq_levels"),
        ({"contraction": "l2"}, "contraction='l2' is not supported"),
        ({"contraction": "sphere"}, "contraction"),
        ({"field_out_features": 4, "super_resolution": False}, "super_resolution"),
        ({"super_resolution_hidden": 0}, "super_resolution_hidden"),
        ({"field_dir_frequencies": -1}, "field_dir_frequencies"),
        ({"depth_target": "inverse"}, "depth_target"),
    ],
)
def test_invalid_combinations_name_the_field(changes, word):
    with pytest.raises(ValueError, match=word):
        get_config("tiny", **changes)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")
    with pytest.raises(ValueError, match="not_a_field"):
        VQ3DConfig.from_dict({"not_a_field": 1})


@pytest.mark.parametrize("name", ["tiny", "imagenet256"])
def test_dict_round_trip_through_json(name):
    cfg = get_config(name, fsq_levels=(8, 8, 8))
    restored = VQ3DConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg


def test_vocab_size_and_sequence_length_per_quantizer():
    assert get_config("tiny", quantizer="fsq", fsq_levels=(8, 5, 5)).vocab_size == 200
    assert get_config("tiny", quantizer="lfq", code_dim=10).vocab_size == 1024
    res = get_config("tiny", quantizer="residual", residual_depth=3)
    assert res.vocab_size == res.codebook_size and res.prior_seq_len == 3 * res.num_tokens
    concat = get_config("tiny", triplane_reduce="concat")
    assert concat.field_in_features == 3 * concat.plane_channels


def test_param_count_counts_and_prints():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    lines: list[str] = []
    counts = param_count(model, print_fn=lines.append)
    assert counts == {"0": 16, "1": 0, "2": 10, "total": 26}
    assert len(lines) == 4 and "26" in lines[-1]
    assert param_count(model, print_fn=None, trainable_only=True)["total"] == 18
    with pytest.raises(TypeError, match="module"):
        param_count("not a module")


def test_tiny_components_compose():
    cfg = get_config("tiny", mlp_backend="torch")
    enc = ViTEncoder.from_config(cfg)
    to_codes = torch.nn.Linear(cfg.encoder_width, cfg.code_dim)  # stands in for the quantizer
    dec = TriplaneDecoder.from_config(cfg, in_dim=cfg.code_dim)
    field = TriplaneField.from_config(cfg)
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    planes = dec(to_codes(enc(images)))
    assert planes.shape == (2, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)
    feats = planes.mean(1).flatten(2).transpose(1, 2).reshape(-1, cfg.plane_channels)  # fake "sampling"
    out = field(feats)
    assert out.density.shape == (feats.shape[0],) and out.rgb.shape == (feats.shape[0], 3)
    out.density.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_imagenet256_on_meta_parameter_counts():
    cfg = get_config("imagenet256", mlp_backend="torch")
    with torch.device("meta"):
        enc = ViTEncoder.from_config(cfg)
        dec = TriplaneDecoder.from_config(cfg, in_dim=cfg.code_dim)
        field = TriplaneField.from_config(cfg)
        prior = CodePrior.from_config(cfg)
    enc_n = param_count(enc, print_fn=None)["total"]
    dec_n = param_count(dec, print_fn=None)["total"]
    prior_n = param_count(prior, print_fn=None)["total"]
    assert 80e6 < enc_n < 90e6  # ViT-Base/8 at 256 px
    assert 85e6 < dec_n < 100e6  # ViT-Base + triplane head
    assert param_count(field, print_fn=None)["total"] < 1e5
    assert 250e6 < prior_n < 400e6


def test_axis_contraction_needs_stratified_sampling():
    assert get_config("tiny").contraction == "axis" and get_config("tiny").sampling == "stratified"
    with pytest.raises(ValueError, match="contraction='axis' needs sampling='stratified'"):
        get_config("tiny", sampling="march")
    assert get_config("tiny", sampling="march", contraction="linf").contraction == "linf"
