"""The official file's download (`pubmedqa_gpt2/data/download.py`) against a stand-in
`urlopen`: the offline switch as huggingface_hub reads it, the timeout, the md5 pin, and a
partial download kept beside the target under a hidden name until it is verified."""

from __future__ import annotations

import hashlib
import io
import urllib.request

import pytest

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.data import download

BODY = b'{"1": "official"}' * 1000


@pytest.mark.parametrize("value", ["1", "ON", "on", "Yes", "yes", "TRUE", "true", " 1 "])
def test_the_offline_switch_is_on_for_each_value_huggingface_hub_reads_as_true(value):
    assert download.offline_requested({"HF_HUB_OFFLINE": value})
    assert download.offline_requested({"A": "0", "B": value}, names=("A", "B"))


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2"])
def test_the_offline_switch_is_off_otherwise(value, monkeypatch):
    assert not download.offline_requested({"HF_HUB_OFFLINE": value})
    assert not download.offline_requested({"OTHER": "1"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download.offline_requested()  # the process's environment by default


@pytest.fixture
def served(monkeypatch, tmp_path):
    """urlopen stand-in serving BODY; records its calls, and the files beside the target
    while the body is read."""
    calls, seen = [], []
    target = tmp_path / "external" / "ori_pqal.json"

    class Response(io.BytesIO):
        def read(self, size=-1):
            seen.append(sorted(p.name for p in target.parent.iterdir()))
            return super().read(size)

    def urlopen(url, timeout=None):
        calls.append((url, timeout))
        return Response(BODY)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return target, calls, seen


def test_a_verified_download_lands_whole_and_only_at_its_target(served, tmp_path, monkeypatch):
    target, calls, seen = served
    elsewhere = tmp_path / "tmp"
    elsewhere.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(elsewhere))
    download.download_verified("https://x/ori_pqal.json", hashlib.md5(BODY).hexdigest(), target)
    assert target.read_bytes() == BODY
    assert calls == [("https://x/ori_pqal.json", 60.0)]
    # while downloading: one hidden partial file beside the target; after: the target alone
    assert seen and all(
        len(names) == 1 and names[0].startswith(".ori_pqal.json.") for names in seen
    )
    assert [p.name for p in target.parent.iterdir()] == ["ori_pqal.json"]
    assert list(elsewhere.iterdir()) == []


def test_a_download_with_another_md5_is_refused_naming_the_pin(served):
    target, _, _ = served
    wrong = "0" * 32
    with pytest.raises(StageError) as err:
        download.download_verified("https://x/f.json", wrong, target, timeout=5, pin="tests.md5")
    got = hashlib.md5(BODY).hexdigest()
    assert (
        str(err.value) == f"https://x/f.json: downloaded file has md5 {got}, tests.md5 pins {wrong}"
    )
    assert list(target.parent.iterdir()) == []  # nothing written
    with pytest.raises(StageError, match=r", data\.md5 pins 0{32}$"):
        download.download_verified("https://x/f.json", wrong, target)


def test_a_network_failure_is_one_line_with_the_offline_hint(monkeypatch, tmp_path):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    target = tmp_path / "ori_pqal.json"
    with pytest.raises(StageError) as err:
        download.download_verified("https://x/f.json", "0" * 32, target)
    assert str(err.value) == (
        "https://x/f.json: cannot download (<urlopen error no route>); offline, run `make "
        "offline-data` (the official copy from PUBMEDQA_DIR), and set HF_HUB_OFFLINE=1"
    )
    assert list(tmp_path.iterdir()) == []
