from __future__ import annotations

from pathlib import Path

import pytest

from envkit.config import find_config_file, load_config
from envkit.errors import ConfigError


def test_no_config_gives_default(tmp_path: Path) -> None:
    assert load_config(start=tmp_path).policy().preset == "compatible"


def test_pyproject_tool_envkit(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\n[tool.envkit]\npreset = "strict"\n[tool.envkit.policy]\n"torch.cuda" = "refuse"\n'
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    config = load_config(start=sub)
    assert config.source == tmp_path / "pyproject.toml"
    policy = config.policy()
    assert policy.preset == "strict" and policy.override_for("torch.cuda") == "refuse"
    assert config.policy("warn").preset == "warn"  # an explicit preset wins


def test_pyproject_without_envkit_section_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname="x"\n')
    assert find_config_file(tmp_path) is None or find_config_file(tmp_path) != tmp_path / "pyproject.toml"


def test_envkit_toml_top_level(tmp_path: Path) -> None:
    (tmp_path / "envkit.toml").write_text('preset = "warn"\n[policy]\n"packages.*" = "info"\n')
    policy = load_config(start=tmp_path).policy()
    assert policy.preset == "warn" and policy.override_for("packages.numpy") == "info"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("preset = [", "invalid TOML"),
        ('preset = "lenient"', "is not a policy"),
        ('[policy]\n"torch.cuda" = "block"', "severity must be one of"),
        ("[policy]\n\"torch.cuda\" = 3", "must map field names"),
    ],
)
def test_bad_config_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "envkit.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(start=tmp_path)
    assert "envkit.toml" in info.value.message
