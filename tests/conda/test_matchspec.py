from __future__ import annotations

import pytest

from envkit.conda.matchspec import InvalidMatchSpec, MatchSpec, parse_match_spec, version_clauses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("numpy", MatchSpec("numpy")),
        ("numpy=1.26", MatchSpec("numpy", "=1.26")),
        ("flask==2.0.2", MatchSpec("flask", "==2.0.2")),
        ("numpy>=1.21,<2", MatchSpec("numpy", ">=1.21,<2")),
        ("numpy >=1.0 , <2.0 =py34_0", MatchSpec("numpy", ">=1.0,<2.0", "py34_0")),
        ("numpy>= 1.2", MatchSpec("numpy", ">=1.2")),
        ("python 3.11.*", MatchSpec("python", "3.11.*")),
        ("python>=3.8,<3.12|3.7.*", MatchSpec("python", ">=3.8,<3.12|3.7.*")),
        ("numpy 1.26.4 py311_0", MatchSpec("numpy", "1.26.4", "py311_0")),
        ("pytorch=2.0.1=*cuda*", MatchSpec("pytorch", "=2.0.1", "*cuda*")),
        ("pytorch=*=*cuda*", MatchSpec("pytorch", "=*", "*cuda*")),
        ("openssl=3.0.8=h0a4308_0", MatchSpec("openssl", "=3.0.8", "h0a4308_0")),
        ("pytorch::pytorch=2.0.1", MatchSpec("pytorch", "=2.0.1", channel="pytorch")),
        ("conda-forge/label/dev::numpy", MatchSpec("numpy", channel="conda-forge/label/dev")),
        ("https://104.17.92.24:443::flask=1.0.2", MatchSpec("flask", "=1.0.2", channel="https://104.17.92.24:443")),
        ("pytorch[version='>=2', build=*cuda*]", MatchSpec("pytorch", ">=2", "*cuda*")),
        ('numpy[version=">=1,<2"]', MatchSpec("numpy", ">=1,<2")),
        ("numpy[build_number='>=3', channel=conda-forge]", MatchSpec("numpy", channel="conda-forge")),
        ("_libgcc_mutex", MatchSpec("_libgcc_mutex")),
        ("mkl<2024.1", MatchSpec("mkl", "<2024.1")),
        ("openssl 1.1.1w", MatchSpec("openssl", "1.1.1w")),
        ("https://repo.anaconda.com/pkgs/main/linux-64/ca-certificates-2025.2.25-h06a4308_0.conda", MatchSpec("ca-certificates")),
    ],
)
def test_valid_specs_split_into_parts(text: str, expected: MatchSpec) -> None:
    assert parse_match_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("numpy=>1.2", "did you mean `>=`?"),
        ("numpy=<1", "did you mean `<=`?"),
        ("numpy=", "`=` is not followed by a version"),
        ("numpy = 1.2", "no space"),
        ("numpy>=", "`>=` is not followed by a version"),
        (">=1.0", "no package name"),
        ("numpy,>=1", "not a package name"),
        ("num$py", "not a package name"),
        ("numpy==1.2==", "not a version"),
        ("numpy=1.2=", "ends with '='"),
        ("numpy=1..2", "empty version part"),
        ("numpy=1.2.", "empty version part"),
        ("numpy>=1.0,", "empty constraint"),
        ("numpy>=1|", "empty constraint"),
        ("numpy (>=1", "unbalanced parentheses"),
        ("numpy 1.2 py36 extra", "too many space-separated parts"),
        ("numpy=1.2=py$", "not a build string"),
        ("bad chan::numpy", "not a channel"),
        ("numpy[version=>=1,<2]", "quoting values that hold a comma"),
        ("numpy[colour=red]", "unknown field 'colour'"),
        ("numpy[version='1'", "brackets must close and come last"),
        ("numpy[version='']", "has no value"),
        ("numpy[build_number=x]", "not a number"),
    ],
)
def test_invalid_specs_say_why(text: str, says: str) -> None:
    with pytest.raises(InvalidMatchSpec) as info:
        parse_match_spec(text)
    assert says in str(info.value)


def test_version_clauses() -> None:
    assert version_clauses(">=1,<2|3.*") == [[(">=", "1"), ("<", "2")], [("", "3.*")]]
    assert version_clauses("=2.0.1") == [[("=", "2.0.1")]]
