"""tests/provision.py, offline: where the test data is found, and fetching it on a machine
without `../shared`, with local stand-ins for the network (file:// URLs, a local tokenizer)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.io import md5_of

from . import provision
from .conftest import needs_tokenizer
from .provision import Sources, ensure_tokenizer, fetch_pubmedqa, locate, network_reachable

EOT = "<|endoftext|>"


def tiny_tokenizer(folder: Path) -> dict[str, list[int]]:
    """A byte-level BPE tokenizer that is not GPT-2's, saved in `folder`; its own encodings
    of the two texts GPT-2's is checked on."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["Hello world, hello tokens."] * 5,
        vocab_size=280,
        min_frequency=1,
        special_tokens=[EOT],
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT)
    tokenizer.save_pretrained(folder)
    return {
        t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in provision.TOKENIZER_CHECKS
    }


@pytest.fixture
def upstream(tmp_path) -> Sources:
    """Stand-ins for the benchmark's repository and the hub, and Sources pinning them."""
    served = tmp_path / "upstream"
    served.mkdir()
    data = served / "ori_pqal.json"
    data.write_text(json.dumps({"1": {"QUESTION": "Does it work?", "final_decision": "yes"}}))
    truth = served / "test_ground_truth.json"
    truth.write_text(json.dumps({"1": "yes"}))
    checks = tiny_tokenizer(served / "tokenizer")
    return Sources(
        data_url=data.as_uri(),
        data_md5=md5_of(data),
        truth_url=truth.as_uri(),
        truth_md5=md5_of(truth),
        tokenizer=str(served / "tokenizer"),
        tokenizer_checks=checks,
    )


class Network:
    """The `online` callback: answers `up`, counts how often it was asked."""

    def __init__(self, up: bool):
        self.up, self.asked = up, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.up


def test_missing_data_is_fetched_once_into_the_cache_and_reused_offline(tmp_path, upstream):
    cache = tmp_path / "cache"
    online = Network(up=True)
    found = locate({}, tmp_path / "no-shared", cache, online, lambda: upstream)
    print("\n".join(found.found))
    assert found.error is None
    assert (found.pubmedqa, found.tokenizer) == (cache / "pubmedqa", cache / "gpt2-tokenizer")
    assert online.asked == 1  # one probe for both folders
    for url, name in (
        (upstream.data_url, "ori_pqal.json"),
        (upstream.truth_url, "test_ground_truth.json"),
    ):
        assert (found.pubmedqa / name).read_bytes() == Path(
            url.removeprefix("file://")
        ).read_bytes()
    assert "downloaded from file://" in "\n".join(found.found)
    from pubmedqa_gpt2.model.loading import load_tokenizer

    saved = load_tokenizer(found.tokenizer)
    assert (
        saved("Hello world", add_special_tokens=False)["input_ids"]
        == (upstream.tokenizer_checks["Hello world"])
    )

    # The next run: from the cache, checked again, without asking for the network.
    offline = Network(up=False)
    again = locate({}, tmp_path / "no-shared", cache, offline, lambda: upstream)
    print("\n".join(again.found))
    assert (again.pubmedqa, again.tokenizer, again.error) == (found.pubmedqa, found.tokenizer, None)
    assert offline.asked == 0
    assert "local copy, md5" in "\n".join(again.found)


def test_a_changed_upstream_is_refused_and_stops_the_run(tmp_path, upstream):
    changed = Path(upstream.truth_url.removeprefix("file://"))
    changed.write_text(json.dumps({"1": "no"}))  # no longer the pinned file
    cache = tmp_path / "cache"
    found = locate({}, tmp_path / "no-shared", cache, Network(up=True), lambda: upstream)
    print("\n".join(found.found))
    assert found.pubmedqa is None
    assert f"downloaded file has md5 {md5_of(changed)}" in found.error
    assert f"GROUND_TRUTH_MD5 pins {upstream.truth_md5}" in found.error
    assert not (cache / "pubmedqa" / "test_ground_truth.json").exists()
    assert [p.name for p in (cache / "pubmedqa").iterdir()] == ["ori_pqal.json"]  # verified
    with pytest.raises(StageError, match="md5"):
        fetch_pubmedqa(cache / "pubmedqa", upstream)


def test_a_corrupted_cached_file_is_refused(tmp_path, upstream):
    cache = tmp_path / "cache"
    locate({}, tmp_path / "no-shared", cache, Network(up=True), lambda: upstream)
    with (cache / "pubmedqa" / "ori_pqal.json").open("a") as f:
        f.write(" ")
    found = locate({}, tmp_path / "no-shared", cache, Network(up=False), lambda: upstream)
    assert found.pubmedqa is None and "this is not the official ori_pqal.json" in found.error


def test_a_tokenizer_that_is_not_gpt2s_is_refused(tmp_path, upstream):
    wrong = Sources(upstream.data_url, upstream.data_md5, tokenizer=upstream.tokenizer)
    with pytest.raises(StageError, match="not GPT-2's tokenizer"):
        ensure_tokenizer(tmp_path / "gpt2-tokenizer", wrong)
    assert not (tmp_path / "gpt2-tokenizer").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["upstream"]  # no temporary folder left


@needs_tokenizer
def test_the_real_tokenizer_passes_the_checks_and_is_saved(tmp_path, tokenizer_dir, tokenizer):
    """The path of a real first run, with the hub id replaced by a local copy."""
    sources = Sources("file:///unused", "0" * 32, tokenizer=str(tokenizer_dir))
    print(ensure_tokenizer(tmp_path / "gpt2-tokenizer", sources))
    from pubmedqa_gpt2.model.loading import load_tokenizer

    saved = load_tokenizer(tmp_path / "gpt2-tokenizer")
    text = "Is aspirin effective in preventing stroke? <|endoftext|> Yes."
    assert saved(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert saved.eos_token_id == 50256 and saved.pad_token_id == 50256


def test_offline_nothing_is_fetched_and_the_tests_skip(tmp_path, upstream):
    cache = tmp_path / "cache"
    online = Network(up=False)
    found = locate({}, tmp_path / "no-shared", cache, online, lambda: upstream)
    print("\n".join(found.found))
    assert (found.pubmedqa, found.tokenizer, found.error) == (None, None, None)
    assert online.asked == 1 and not cache.exists()
    assert all("offline" in line for line in found.found)


def test_a_variable_or_shared_is_used_as_it_is_and_nothing_is_fetched(tmp_path, upstream):
    shared = tmp_path / "shared"
    (shared / "pubmedqa").mkdir(parents=True)
    (shared / "pubmedqa" / "ori_pqal.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    online = Network(up=True)
    environ = {"GPT2_TOKENIZER_DIR": str(tmp_path / "empty")}
    found = locate(environ, shared, tmp_path / "cache", online, lambda: upstream)
    print("\n".join(found.found))
    assert (found.pubmedqa, found.tokenizer) == (shared / "pubmedqa", None)
    assert online.asked == 0 and not (tmp_path / "cache").exists()
    assert "set, but no tokenizer.json there" in found.found[1]


def test_a_failed_fetch_stops_the_run_and_ci_stops_without_the_data(tmp_path, upstream):
    upstream_changed = Path(upstream.data_url.removeprefix("file://"))
    upstream_changed.write_text("{}")
    failed = locate({}, tmp_path / "no-shared", tmp_path / "cache", Network(True), lambda: upstream)
    reason = provision.reason_to_stop(failed, {})
    assert reason.startswith("the test data could not be provided: fetching pubmedqa into ")
    assert f"data.md5 pins {upstream.data_md5}" in reason
    missing = provision.TestData(None, tmp_path, [])
    assert provision.reason_to_stop(missing, {}) is None
    assert provision.reason_to_stop(missing, {"CI": "false"}) is None
    assert provision.reason_to_stop(missing, {"CI": "true"}) == (
        "CI is set but the offline data is missing: PUBMEDQA_DIR (no ori_pqal.json there); "
        "the tests that need it would be skipped"
    )
    assert provision.reason_to_stop(provision.TestData(tmp_path, tmp_path, []), {"CI": "1"}) is None


def test_the_cache_is_under_the_users_cache_folder():
    assert provision.cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/pubmedqa-gpt2")
    assert provision.cache_root({}) == Path.home() / ".cache/pubmedqa-gpt2"
    assert provision.cache_root({}).resolve().is_relative_to(provision.ROOT) is False


def test_the_official_sources_are_the_pinned_ones():
    official = Sources.official()
    assert "/pubmedqa/pubmedqa/1f00b98d5cc626844bf8c4ca513b6e62c40071ec/" in official.data_url
    assert official.data_md5 == "05b2b70949907e260d2aa82bc5d20c6f"
    assert "/pubmedqa/pubmedqa/3e7616d288b52edaf38f5fd5c59821c7806bde86/" in official.truth_url
    assert official.truth_md5 == "f52c9d953b2833b43486fb1c00f1737f"


# ---- The probe: cheap, bounded, and never tried when the hub is declared offline ----


@pytest.fixture
def http_server():
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """Accepts connections (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def test_the_probe_says_online_when_every_server_answers(http_server):
    assert network_reachable((http_server, http_server + "missing"), environ={}) is True


def test_the_probe_says_offline_when_a_server_is_down_or_silent(http_server, silent_server):
    assert network_reachable((http_server, "http://127.0.0.1:9/"), environ={}) is False
    start = time.monotonic()
    assert network_reachable((http_server, silent_server), timeout=0.3, environ={}) is False
    assert time.monotonic() - start < 1.0


def test_the_probe_gives_up_at_its_deadline_even_while_names_resolve(monkeypatch):
    """Name resolution ignores socket timeouts: a probe stuck there counts as no network
    once the one deadline for all of them has passed (4 stuck: 0.2 s, not 4 x 0.2 s)."""

    def resolving_forever(request, timeout):
        time.sleep(2)
        raise OSError("name resolution timed out")

    monkeypatch.setattr(provision.urllib.request, "urlopen", resolving_forever)
    start = time.monotonic()
    urls = tuple(f"https://unresolvable.invalid/{i}" for i in range(4))
    assert network_reachable(urls, timeout=0.2, environ={}) is False
    assert time.monotonic() - start < 0.6


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_the_probe_sends_nothing_when_the_hub_is_declared_offline(
    http_server, monkeypatch, variable
):
    sent = []

    def no_network(request, timeout):
        sent.append(request.full_url)
        raise OSError("no network")

    monkeypatch.setattr(provision.urllib.request, "urlopen", no_network)
    assert network_reachable((http_server,), environ={variable: "1"}) is False
    assert sent == []
    assert network_reachable((http_server,), environ={variable: "0"}) is False
    assert sent == [http_server]  # the stand-in is the one the probe calls
