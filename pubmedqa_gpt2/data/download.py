"""The benchmark's official `ori_pqal.json`, pinned by URL and md5.

The URL names a fixed commit of the benchmark's repository and the md5 is the file's; a
download whose md5 differs (the upstream changed) is an error, not a new experiment. The
output is `persist`ed by DVC, so a local copy of the official file placed at
`data/external/ori_pqal.json` (offline machines: `make offline-data`) is checked and used
instead of the network. With HF_HUB_OFFLINE set (the offline setting) and no local copy, the
stage fails at once, without trying the network, where a name that never resolves would hang.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.io import md5_of
from pubmedqa_gpt2.core.paths import OFFICIAL_FILE

OFFLINE_HINT = "offline, run `make offline-data` (the official copy from PUBMEDQA_DIR)"


def offline_requested(environ=None, names: tuple[str, ...] = ("HF_HUB_OFFLINE",)) -> bool:
    """One of `names` (default HF_HUB_OFFLINE) set true in `environ` (default the process's),
    as huggingface_hub reads it: 1, ON, YES, TRUE."""
    environ = os.environ if environ is None else environ
    return any(environ.get(n, "").strip().upper() in ("1", "ON", "YES", "TRUE") for n in names)


def download_verified(
    url: str, md5: str, target: Path, timeout: float = 60.0, pin: str = "data.md5"
) -> None:
    """Download `url` to `target` if its md5 is `md5` (named `pin` in errors); otherwise
    write nothing and fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
        actual = md5_of(Path(tmp))
        if actual != md5:
            raise StageError(f"{url}: downloaded file has md5 {actual}, {pin} pins {md5}")
        os.replace(tmp, target)
    except OSError as exc:  # URLError, timeouts and HTTP errors are OSErrors
        raise StageError(
            f"{url}: cannot download ({exc}); {OFFLINE_HINT}, and set HF_HUB_OFFLINE=1"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_official_file(
    url: str, md5: str, target: Path = OFFICIAL_FILE, pin: str = "data.md5"
) -> str:
    """Check a local copy of the official file, or download it; returns what was done.
    `pin` names where `md5` comes from, in errors (the tests fetch a second pinned file)."""
    if target.is_file():
        actual = md5_of(target)
        if actual != md5:
            raise StageError(
                f"{target}: md5 is {actual}, but {pin} pins {md5}: this is not the official "
                f"{target.name}; delete it to download the official one"
            )
        return f"{target}: local copy, md5 {md5} verified"
    if offline_requested() and not url.startswith("file:"):  # a file: URL needs no network
        raise StageError(f"{target}: no local copy, and HF_HUB_OFFLINE is set; {OFFLINE_HINT}")
    download_verified(url, md5, target, pin=pin)
    return f"{target}: downloaded from {url}, md5 {md5} verified"
