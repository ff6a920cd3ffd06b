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


# -- issue 10, item 11: a typo is exit 2 naming the key and the nearest valid one -----------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('prest = "strict"', "unknown key 'prest' (did you mean 'preset'?)"),
        ('[mirror]\n"conda-forge" = "https://m/cf"', "unknown key 'mirror' (did you mean 'mirrors'?)"),
        ('preset = "stirct"', "preset = 'stirct' is not a policy (did you mean 'strict'?)"),
        ('[policy]\n"torch.cdua" = "refuse"', "'torch.cdua': not a fingerprint field (did you mean 'torch.cuda'?)"),
        ("[policy]\ntorch.cdua = \"refuse\"", "'torch.cdua': not a fingerprint field (did you mean 'torch.cuda'?)"),
        ('[policy]\n"pyhton.version" = "warn"', "(did you mean 'python.version'?)"),
        ('[policy]\n"determinism.tf32" = "warn"', "(did you mean 'determinism.tf32_"),
        ('[policy]\n"gpus.*" = "warn"', "'gpus.*': the pattern matches no fingerprint field"),
        ('[policy]\n"torch.cuda" = "refuze"', "the severity must be one of ok, info, warn, refuse (did you mean 'refuse'?)"),
        ('[policy]\n"torch.cuda" = "block"', "the severity must be one of ok, info, warn, refuse"),
    ],
    ids=["top-key", "mirrors-table", "preset", "field", "field-unquoted", "field-2", "determinism", "glob", "severity", "severity-far"],
)
@pytest.mark.parametrize("where", ["envkit.toml", "pyproject.toml"])
def test_typos_name_the_file_the_key_and_the_nearest(tmp_path: Path, text: str, says: str, where: str) -> None:
    if where == "pyproject.toml":  # the same settings under [tool.envkit]
        text = '[project]\nname = "x"\n[tool.envkit]\n' + "\n".join(
            f"[tool.envkit.{line[1:]}" if line.startswith("[") else line for line in text.splitlines()
        )
    (tmp_path / where).write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(start=tmp_path)
    assert info.value.message.startswith(f"{tmp_path / where}: ") and says in info.value.message, info.value.message


def test_a_typo_in_a_real_process_is_one_line_exit_2(tmp_path: Path, stamped: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "pyproject.toml").write_text('[tool.envkit.policy]\n"torch.cdua" = "refuse"\n')
    done = subprocess.run([sys.executable, "-m", "envkit", "check", str(stamped)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"envkit: error: {tmp_path / 'pyproject.toml'}: [tool.envkit.policy] 'torch.cdua': "
                           "not a fingerprint field (did you mean 'torch.cuda'?); fix or remove it\n")


def test_every_real_field_and_family_is_accepted(tmp_path: Path) -> None:
    """The valid names are the fields policy.diff reports, not a second list: each of them, the package
    family and globs over them load."""
    from envkit.policy import field_names

    lines = [f'"{name}" = "warn"' for name in field_names()] + ['"packages.numpy" = "refuse"', '"packages.*" = "info"', '"gpu.*" = "ok"']
    (tmp_path / "envkit.toml").write_text("[policy]\n" + "\n".join(lines) + "\n")
    policy = load_config(start=tmp_path).policy()
    assert policy.override_for("packages.numpy") == "refuse" and policy.override_for("packages.scipy") == "info"
    assert policy.override_for("gpu.driver") == "warn"  # the exact name beats the glob


def test_field_names_are_the_fields_diff_reports() -> None:
    """Every field of a live fingerprint (torch imported, so determinism is recorded) is a name a rule may use."""
    pytest.importorskip("torch")
    from envkit.fingerprint import collect
    from envkit.fingerprint.schema import DETERMINISM_KEYS
    from envkit.policy import field_names, flatten

    fp = collect()
    assert fp.determinism is not None and tuple(k for k, _ in fp.determinism) == DETERMINISM_KEYS
    assert set(flatten(fp)) <= set(field_names())


# -- issue 11: the policy is resolved here ---------------------------------------------------------------


def test_resolve_policy_reads_the_project_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.config import resolve_policy
    from envkit.policy import Policy

    (tmp_path / "envkit.toml").write_text('preset = "strict"\n[policy]\n"torch.cuda" = "info"\n')
    monkeypatch.chdir(tmp_path)
    assert resolve_policy(None) == Policy.of("strict", {"torch.cuda": "info"})
    assert resolve_policy("warn") == Policy.of("warn", {"torch.cuda": "info"})  # the preset given wins, the overrides stay
    given = Policy.of("compatible")
    assert resolve_policy(given) is given  # a Policy is used as it is, the file is not read
    (tmp_path / "envkit.toml").write_text("preset = [")
    assert resolve_policy(given) is given
    with pytest.raises(ConfigError, match="invalid TOML"):
        resolve_policy(None)
