from __future__ import annotations

from envkit.fingerprint.schema import Fingerprint, Package


def test_package_origin_round_trips_and_old_entries_keep_their_form() -> None:
    with_origin = Package("pytorch", "2.0.1", "conda", "py3.11_cpu_0", "file:///c/linux-64/p.tar.bz2", "0" * 32)
    plain = Package("numpy", "1.25.0", "pypi", None)
    fp = Fingerprint(packages=(plain, with_origin))
    doc = fp.to_json()
    assert doc["packages"]["items"][1] == ["pytorch", "2.0.1", "conda", "py3.11_cpu_0", {"url": "file:///c/linux-64/p.tar.bz2", "md5": "0" * 32}]
    assert doc["packages"]["items"][0] == ["numpy", "1.25.0", "pypi", None]
    back = Fingerprint.from_json(doc)
    assert back.packages[1].url == with_origin.url and back.digest == fp.digest
