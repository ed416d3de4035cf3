"""Config: YAML files, overrides, type checking, validation and round trips."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from synthgen.config import Config, ConfigError


def _write(tmp_path, text: str, name: str = "run.yaml") -> str:
    path = str(tmp_path / name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_defaults_are_valid() -> None:
    cfg = Config()
    cfg.validate()
    assert Config.from_yaml() == cfg
    assert cfg.train.model == "pix2pix" and cfg.data.image_size == 256 and cfg.pix2pix.ngf == 64


def test_from_yaml_overrides_a_few_keys(tmp_path) -> None:
    path = _write(tmp_path, """
data:
  images: imgs/
  image_size: 64
pix2pix:
  ngf: 8
  gan_mode: hinge
train:
  lr: 1.0e-3
  epochs: 3
vae:
""")
    cfg = Config.from_yaml(path)
    assert cfg.data.images == "imgs/" and cfg.data.image_size == 64
    assert cfg.pix2pix.ngf == 8 and cfg.pix2pix.gan_mode == "hinge"
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    # Everything else keeps its default.
    default = Config()
    assert cfg.pix2pix.ndf == default.pix2pix.ndf and cfg.vae == default.vae
    assert cfg.train.batch_size == default.train.batch_size and cfg.data.masks == ""


def test_coercions(tmp_path) -> None:
    path = _write(tmp_path, "train:\n  lr: 1\n  epochs: 4.0\n  gpu: 'yes'\n  resume: 0\n")
    cfg = Config.from_yaml(path)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 4 and isinstance(cfg.train.epochs, int)
    assert cfg.train.gpu is True and cfg.train.resume is False


def test_overrides_win_over_the_file(tmp_path) -> None:
    path = _write(tmp_path, "train:\n  epochs: 3\n  lr: 0.001\npix2pix:\n  ngf: 8\n")
    cfg = Config.from_yaml(path, overrides={"train.epochs": 7, "pix2pix.ngf": "16", "data.invert_mask": "true",
                                            "train.lr": None})
    assert cfg.train.epochs == 7 and cfg.pix2pix.ngf == 16 and cfg.data.invert_mask is True
    assert cfg.train.lr == 0.001  # None means "not given": the file's value stays


def test_overrides_without_a_file() -> None:
    cfg = Config.from_yaml(None, overrides={"train.model": "vae", "vae.latent_dim": 16})
    assert cfg.train.model == "vae" and cfg.vae.latent_dim == 16


def test_unknown_section_names_the_file(tmp_path) -> None:
    path = _write(tmp_path, "trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'") as e:
        Config.from_yaml(path)
    assert path in str(e.value)


def test_unknown_key_names_the_key_and_file(tmp_path) -> None:
    path = _write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'") as e:
        Config.from_yaml(path)
    assert path in str(e.value)


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"command line: unknown key 'pix2pix\.nfg'"):
        Config.from_yaml(None, overrides={"pix2pix.nfg": 8})
    with pytest.raises(ConfigError, match="unknown key 'nosection.x'"):
        Config.from_yaml(None, overrides={"nosection.x": 1})


@pytest.mark.parametrize("text,key", [
    ("train:\n  epochs: many\n", "train.epochs"),
    ("train:\n  epochs: 2.5\n", "train.epochs"),
    ("train:\n  lr: fast\n", "train.lr"),
    ("train:\n  lr: true\n", "train.lr"),
    ("train:\n  epochs: [1, 2]\n", "train.epochs"),
    ("data:\n  augment: maybe\n", "data.augment"),
    ("data:\n  image_size: false\n", "data.image_size"),
])
def test_wrong_type_names_the_key_and_file(tmp_path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match="must be") as e:
        Config.from_yaml(path)
    assert f"'{key}'" in str(e.value) and path in str(e.value)


def test_section_must_be_a_mapping(tmp_path) -> None:
    path = _write(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping") as e:
        Config.from_yaml(path)
    assert path in str(e.value)


@pytest.mark.parametrize("overrides,key", [
    ({"pix2pix.gan_mode": "foo"}, "pix2pix.gan_mode"),
    ({"data.image_size": 30}, "data.image_size"),
    ({"data.image_size": 0}, "data.image_size"),
    ({"train.model": "gan"}, "train.model"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"train.precision": "fp8"}, "train.precision"),
    ({"train.precision": "fp16"}, "fp16 needs --gpu"),
    ({"train.decay_start": 1.5}, "train.decay_start"),
    ({"pix2pix.upsample": "bicubic"}, "pix2pix.upsample"),
    ({"pix2pix.diffaug": "color,blur"}, "pix2pix.diffaug"),
    ({"data.val_pairs": 3, "data.min_pairs": 3}, "data.min_pairs"),
])
def test_bad_value_names_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as e:
        Config.from_yaml(None, overrides=overrides)
    assert key in str(e.value)


def test_bad_value_in_file(tmp_path) -> None:
    path = _write(tmp_path, "pix2pix:\n  gan_mode: foo\ndata:\n  image_size: 30\n")
    with pytest.raises(ConfigError) as e:
        Config.from_yaml(path)
    # Every problem is listed, not only the first.
    assert "pix2pix.gan_mode" in str(e.value) and "data.image_size" in str(e.value)


def test_valid_edge_values() -> None:
    cfg = Config.from_yaml(None, overrides={"pix2pix.diffaug": "", "data.image_size": 16, "train.decay_start": 0,
                                            "train.precision": "bf16", "data.val_pairs": 0, "data.min_pairs": 1})
    assert cfg.pix2pix.diffaug == "" and cfg.data.image_size == 16 and cfg.train.decay_start == 0.0
    assert Config.from_yaml(None, overrides={"train.precision": "fp16", "train.gpu": True}).train.gpu is True


def test_yaml_round_trip(tmp_path) -> None:
    cfg = Config.from_yaml(None, overrides={"data.images": "a b/imgs", "data.image_size": 48, "train.lr": 3e-5,
                                            "pix2pix.diffaug": "color", "vae.beta": 0.25, "train.gpu": True,
                                            "train.cpus_per_worker": 0.5, "train.model": "vae"})
    text = cfg.to_yaml()
    assert list(yaml.safe_load(text)) == ["data", "pix2pix", "vae", "diffusion", "train", "variations", "generate", "evaluate", "tune"]
    back = Config.from_yaml(_write(tmp_path, text))
    assert back == cfg
    assert back.train.lr == 3e-5 and back.data.images == "a b/imgs"
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_default_round_trip(tmp_path) -> None:
    assert Config.from_yaml(_write(tmp_path, Config().to_yaml())) == Config()


@pytest.mark.parametrize("name", ["config.yaml", "config.json"])
def test_save_writes_a_file_that_loads_back_equal(tmp_path, name: str) -> None:
    cfg = Config.from_yaml(None, overrides={"train.epochs": 11, "pix2pix.ngf": 4, "train.lr": 5e-4})
    directory = str(tmp_path / "run" / "nested")
    path = cfg.save(directory, name)
    assert path == os.path.join(directory, name)
    assert os.listdir(directory) == [name]  # no temp file left
    if name.endswith(".json"):
        with open(path) as f:
            assert json.load(f) == cfg.to_dict()
    assert Config.from_yaml(path) == cfg
    # Saving again replaces the file.
    cfg.train.epochs = 12
    cfg.save(directory, name)
    assert Config.from_yaml(path).train.epochs == 12


def test_missing_file_names_the_path(tmp_path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read config") as e:
        Config.from_yaml(path)
    assert path in str(e.value)


def test_invalid_yaml_names_the_path(tmp_path) -> None:
    path = _write(tmp_path, "train:\n  epochs: [1, 2\n  lr: : :\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        Config.from_yaml(path)
    assert path in str(e.value)


def test_top_level_must_be_a_mapping(tmp_path) -> None:
    path = _write(tmp_path, "- train\n- data\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as e:
        Config.from_yaml(path)
    assert path in str(e.value)


def test_empty_file_gives_defaults(tmp_path) -> None:
    assert Config.from_yaml(_write(tmp_path, "")) == Config()
    assert Config.from_yaml(_write(tmp_path, "# only a comment\n", "c.yaml")) == Config()


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("key", ["generate.threshold", "evaluate.threshold"])
@pytest.mark.parametrize("bad", ["real:", "real:x", "real:-1", "real:0", "foo", "nan", ""])
def test_bad_thresholds_name_the_key(key, bad) -> None:
    with pytest.raises(ConfigError) as e:
        Config.from_yaml(overrides={key: bad})
    assert key in str(e.value) and repr(bad) in str(e.value) and "real:F" in str(e.value)


def test_thresholds_absolute_or_relative(tmp_path) -> None:
    from synthgen.config import parse_threshold

    cfg = Config.from_yaml(_write(tmp_path, "generate:\n  threshold: 0.65\nevaluate:\n  threshold: real:0.8\n"))
    assert cfg.generate.threshold == "0.65" and cfg.evaluate.threshold == "real:0.8"  # YAML float -> str
    assert parse_threshold(cfg.generate.threshold) == ("absolute", 0.65)
    assert parse_threshold(cfg.evaluate.threshold) == ("real", 0.8)
    assert parse_threshold(" REAL:1.2 ") == ("real", 1.2) and parse_threshold(-1.0) == ("absolute", -1.0)
    assert Config.from_yaml(overrides={"generate.threshold": "real:0.9"}).generate.threshold == "real:0.9"
