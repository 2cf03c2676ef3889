"""Where the tests' data comes from, and fetching it once on a machine without `../shared`.

Each folder is, in order:

1. the one its variable names (PUBMEDQA_DIR, GPT2_TOKENIZER_DIR): a local copy, used as it
   is; nothing is ever fetched for a variable that is set, even when its folder is empty;
2. the copy in `../shared` (every machine of this team, and CI);
3. the copy in the cache folder (`$XDG_CACHE_HOME/pubmedqa-gpt2`, else
   `~/.cache/pubmedqa-gpt2`), fetched there by an earlier run and checked again;
4. fetched into that cache now, if the network answers a quick probe (never when
   HF_HUB_OFFLINE=1): the official `ori_pqal.json` (`data.url`, `data.md5` of params.yaml)
   and `test_ground_truth.json` (pinned below) through the download stage's own code, so a
   changed upstream is refused; the GPT-2 tokenizer through the hub, checked on two
   encodings before it is kept.

Otherwise the folder is missing and the tests that need it skip (or, under CI, the run stops).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pubmedqa_gpt2.core.io import atomic_dir
from pubmedqa_gpt2.data import download
from pubmedqa_gpt2.data.download import ensure_official_file

ROOT = Path(__file__).resolve().parents[1]

# The benchmark's test ground truth was added to its repository after data.url's commit
# (1f00b98 has no data/test_ground_truth.json); 3e7616d is the commit that added it, and the
# file has not changed since.
GROUND_TRUTH_URL = (
    "https://raw.githubusercontent.com/pubmedqa/pubmedqa/"
    "3e7616d288b52edaf38f5fd5c59821c7806bde86/data/test_ground_truth.json"
)
GROUND_TRUTH_MD5 = "f52c9d953b2833b43486fb1c00f1737f"
TOKENIZER_ID = "gpt2"  # the four GPT-2 sizes share this tokenizer
# What the real GPT-2 tokenizer gives (see ../shared/README.md): a wrong download is refused.
TOKENIZER_CHECKS = {"Hello world": [15496, 995], "<|endoftext|>": [50256]}
PROBE_TIMEOUT_S = 0.8
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class Sources:
    """Where each fetched file comes from and what it must be."""

    data_url: str
    data_md5: str
    truth_url: str = GROUND_TRUTH_URL
    truth_md5: str = GROUND_TRUTH_MD5
    tokenizer: str = TOKENIZER_ID  # hub id (or a local folder: the tests' stand-in)
    tokenizer_checks: dict[str, list[int]] = field(default_factory=lambda: TOKENIZER_CHECKS)

    @classmethod
    def official(cls) -> Sources:
        from pubmedqa_gpt2.core.config import load_params

        data = load_params(ROOT / "params.yaml").data
        return cls(data_url=data.url, data_md5=data.md5)

    @property
    def probe_urls(self) -> tuple[str, ...]:
        return (self.data_url, self.truth_url, f"https://huggingface.co/{self.tokenizer}")


@dataclass
class TestData:
    """The two folders (None: missing), how each was found, and a fetch that failed."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    pubmedqa: Path | None
    tokenizer: Path | None
    found: list[str]
    error: str | None = None


def cache_root(environ: dict | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pubmedqa-gpt2"


def offline_requested(environ: dict | None = None) -> bool:
    return download.offline_requested(environ, OFFLINE_VARIABLES)


def network_reachable(
    urls: tuple[str, ...], timeout: float = PROBE_TIMEOUT_S, environ: dict | None = None
) -> bool:
    """Whether every URL's server answers a HEAD request within `timeout` seconds (all probed
    at once; name resolution included). False at once, with no request, when HF_HUB_OFFLINE
    (or TRANSFORMERS_OFFLINE) is set."""
    if offline_requested(environ):
        return False
    answered: dict[str, bool] = {}

    def probe(url: str) -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            answered[url] = True
        except urllib.error.HTTPError:
            answered[url] = True  # the server answered: the network works
        except (OSError, ValueError):
            answered[url] = False

    threads = [threading.Thread(target=probe, args=(url,), daemon=True) for url in urls]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:  # a probe still running (resolving a name) then counts as no network
        t.join(max(0.0, deadline - time.monotonic()))
    return all(answered.get(url, False) for url in urls)


def fetch_pubmedqa(target: Path, sources: Sources) -> list[str]:
    """Both official files in `target`, each checked against its pinned md5 (a cached copy
    too) or downloaded and checked; any other content is a StageError and is not kept."""
    return [
        ensure_official_file(sources.data_url, sources.data_md5, target / "ori_pqal.json"),
        ensure_official_file(
            sources.truth_url,
            sources.truth_md5,
            target / "test_ground_truth.json",
            pin="tests/provision.py GROUND_TRUTH_MD5",
        ),
    ]


def ensure_tokenizer(target: Path, sources: Sources) -> str:
    """A tokenizer already in `target` (checked when it was fetched), or the tokenizer of
    `sources.tokenizer` saved there if it encodes the checks; returns what was done."""
    from transformers import AutoTokenizer

    from pubmedqa_gpt2.core.errors import StageError

    if (target / "tokenizer.json").is_file():
        return f"{target}: cached"
    tokenizer = AutoTokenizer.from_pretrained(sources.tokenizer, trust_remote_code=False)
    for text, ids in sources.tokenizer_checks.items():
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != ids:
            raise StageError(
                f"tokenizer {sources.tokenizer!r}: {text!r} encodes to {got}, not {ids}: "
                "not GPT-2's tokenizer, not kept"
            )
    with atomic_dir(target) as tmp:
        tokenizer.save_pretrained(tmp)
    return f"{target}: GPT-2 tokenizer from {sources.tokenizer}, checked"


def locate(
    environ: dict,
    shared: Path,
    cache_dir: Path,
    online: Callable[[], bool],
    sources: Callable[[], Sources] = Sources.official,
) -> TestData:
    """The PubMedQA and tokenizer folders, by the order of the module docstring. `online` is
    asked at most once, and only when a folder is missing everywhere."""
    online = cache(online)
    found: list[str] = []
    error = None

    def folder(env: str, name: str, probe: str, complete: Callable[[Path], bool], fetch):
        nonlocal error
        if env in environ:
            path = Path(environ[env]).resolve()
            ok = (path / probe).is_file()
            found.append(f"{env}: {path} ({'set' if ok else f'set, but no {probe} there'})")
            return path if ok else None
        if (shared / name / probe).is_file():
            found.append(f"{env}: {(shared / name).resolve()} (../shared)")
            return (shared / name).resolve()
        target = cache_dir / name
        if not complete(target) and not online():
            found.append(f"{env}: missing (no ../shared/{name}, nothing cached, offline)")
            return None
        try:
            what = fetch(target, sources())
        except Exception as exc:  # any failure: reported, and conftest stops the run
            error = f"fetching {name} into {target} failed: {exc}"
            found.append(f"{env}: missing ({error})")
            return None
        found.append(f"{env}: {target} (cache)")
        found.extend(f"  {line}" for line in ([what] if isinstance(what, str) else what))
        return target

    def pubmedqa_complete(target: Path) -> bool:
        return all((target / f).is_file() for f in ("ori_pqal.json", "test_ground_truth.json"))

    pubmedqa = folder(
        "PUBMEDQA_DIR", "pubmedqa", "ori_pqal.json", pubmedqa_complete, fetch_pubmedqa
    )
    tokenizer = folder(
        "GPT2_TOKENIZER_DIR",
        "gpt2-tokenizer",
        "tokenizer.json",
        lambda target: (target / "tokenizer.json").is_file(),
        ensure_tokenizer,
    )
    return TestData(pubmedqa, tokenizer, found, error)


def reason_to_stop(data: TestData, environ: dict) -> str | None:
    """Why the run must stop before any test: a fetch failed, or CI (`CI=true`) lacks a
    folder (a green CI must mean the tests that need it ran); None to go on."""
    if data.error:
        return f"the test data could not be provided: {data.error}"
    if environ.get("CI", "").lower() not in ("", "0", "false"):
        missing = [
            f"{env} (no {probe} there)"
            for env, path, probe in (
                ("PUBMEDQA_DIR", data.pubmedqa, "ori_pqal.json"),
                ("GPT2_TOKENIZER_DIR", data.tokenizer, "tokenizer.json"),
            )
            if path is None
        ]
        if missing:
            return (
                f"CI is set but the offline data is missing: {', '.join(missing)}; "
                "the tests that need it would be skipped"
            )
    return None


def locate_for_this_run(shared: Path) -> TestData:
    """`locate` for this process: its environment, the user's cache, the real network."""
    return locate(
        os.environ,
        shared,
        cache_root(),
        lambda: network_reachable(Sources.official().probe_urls),
    )
