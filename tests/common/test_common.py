"""The small shared utilities: seeds from keys, category names, devices, tolerant configs, error exit codes."""
import dataclasses
import hashlib
import warnings

import pytest
import torch

from common.config import ConfigWarning, JobConfig
from common.devices import resolve_device
from common.errors import EXIT_FAILURE, EXIT_USAGE, ArtifactError, CtlError, InputError, NothingProducedError
from common.naming import match_category, short_category
from common.seeds import seed_from_key


def test_seed_from_key_is_the_leading_bytes_of_the_keys_sha256():
    digest = hashlib.sha256(b"0|scene|12|1").digest()
    assert seed_from_key("0|scene|12|1", bits=32) == int.from_bytes(digest[:4], "little")
    assert seed_from_key("0|scene|12|1") == int.from_bytes(digest[:8], "little")
    assert seed_from_key("a") != seed_from_key("b")
    with pytest.raises(ValueError, match="32 or 64"):
        seed_from_key("a", bits=16)


CATEGORIES = ["Apparel & Accessories|Shoes", "Apparel & Accessories|Clothing|Shirts & Tops", "Home|Lamps",
              "Other|Lamps"]


@pytest.mark.parametrize("name, expected", [
    ("Apparel & Accessories|Shoes", "Apparel & Accessories|Shoes"),
    ("shoes", "Apparel & Accessories|Shoes"),
    ("  SHIRTS & TOPS ", "Apparel & Accessories|Clothing|Shirts & Tops"),
    ("home|lamps", "Home|Lamps"),
    ("lamps", None),          # two categories end in "Lamps": ambiguous
    ("socks", None),
])
def test_match_category(name, expected):
    assert match_category(name, CATEGORIES) == expected


def test_short_category():
    assert short_category("A|B|Shirts & Tops ") == "Shirts & Tops"
    assert short_category("plain") == "plain" and short_category("A|") == "A|"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda:1")


@dataclasses.dataclass(frozen=True)
class _Config(JobConfig):
    lr: float = 0.1
    epochs: int = 3


def test_config_from_dict_ignores_unknown_fields_with_a_warning_and_defaults_missing_ones():
    with pytest.warns(ConfigWarning, match="renamed_field"):
        cfg = _Config.from_dict({"lr": 0.5, "renamed_field": 1})
    assert cfg == _Config(lr=0.5, epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _Config.from_dict(cfg.to_dict()) == cfg
        assert _Config.from_dict({"data": "x"}, ignore=("data",)) == _Config()
    assert cfg.replace(epochs=9).epochs == 9


def test_error_kinds_carry_their_exit_codes():
    assert InputError.exit_code == EXIT_USAGE == 2
    assert ArtifactError.exit_code == NothingProducedError.exit_code == EXIT_FAILURE == 1
    assert issubclass(InputError, ValueError) and issubclass(ArtifactError, CtlError)
