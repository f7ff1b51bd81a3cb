"""The client behind `nerfserve submit`: resumable upload, follow the job, download and verify artifacts.

Photos or a folder of photos are zipped first (stored, not recompressed); a zip or a video goes as is.
The file is sent in parts of `part_bytes`, each with its sha256; a part that fails is retried, and a
dropped connection resumes after the last part the server has.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

from core.errors import UserInputError
from service.intake import IMAGE_EXT, VIDEO_EXT
from service.storage import file_sha256

TERMINAL = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """The server refused a request; carries its error code, message and hint."""

    def __init__(self, status: int, code: str, message: str, hint: str = "") -> None:
        super().__init__(f"HTTP {status} {code}: {message}" + (f" ({hint})" if hint else ""))
        self.status, self.code, self.message, self.hint = status, code, message, hint


def default_key(data_dir: str | None = None) -> str | None:
    """NERFSERVE_API_KEY, else the embedded server's DATA_DIR/api_key."""
    if os.environ.get("NERFSERVE_API_KEY"):
        return os.environ["NERFSERVE_API_KEY"].strip()
    p = Path(data_dir or os.environ.get("NERFSERVE_DATA_DIR", "data")) / "api_key"
    return p.read_text().strip() if p.is_file() else None


def pack_inputs(paths: list[Path], tmp_dir: Path) -> Path:
    """One file to upload: a zip or a video as given, else a zip of the images (folders walked)."""
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() in {".zip"} | VIDEO_EXT:
        return paths[0]
    images: list[Path] = []
    for p in paths:
        if p.is_dir():
            images += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXT)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXT:
            images.append(p)
        elif p.is_file():
            raise UserInputError("unsupported_file", f"{p} is not an image, a .zip or a video",
                                 "pass photos (JPEG, PNG, HEIC, ...), a folder of them, a .zip or a video")
        else:
            raise UserInputError("no_such_file", f"{p} does not exist", "check the path")
    if not images:
        raise UserInputError("no_images", f"no images found in {', '.join(map(str, paths))}",
                             "pass photos, a folder of photos, a .zip or a video")
    out = tmp_dir / "capture.zip"
    seen: set[str] = set()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, img in enumerate(images):
            name = img.name if img.name not in seen else f"{i:05d}_{img.name}"
            seen.add(name)
            zf.write(img, f"images/{name}")
    return out


class Client:
    def __init__(self, server: str, key: str | None, timeout_s: float = 60.0, retries: int = 5) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout_s)
        self.retries = retries

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, url: str, **kw) -> httpx.Response:
        """A request retried on connection errors and 502/503/504, with back-off."""
        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, url, **kw)
                if r.status_code not in (502, 503, 504) or attempt == self.retries:
                    break
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            time.sleep(min(2 ** attempt * 0.5, 10))
        if r.status_code >= 400:
            try:
                e = r.json()
                raise ClientError(r.status_code, e.get("error", "error"), e.get("message", r.text), e.get("hint", ""))
            except ValueError:
                raise ClientError(r.status_code, "error", r.text[:500]) from None
        return r

    # ---- uploads -----------------------------------------------------------------------------------

    def upload(self, path: Path, options: dict, part_bytes: int = 8 * 1024 * 1024,
               on_bytes: Callable[[int], None] = lambda n: None, upload_id: str | None = None) -> dict:
        """Resumable upload of one file, then commit. Returns the job. Pass upload_id to resume."""
        size = path.stat().st_size
        if upload_id is None:
            up = self._call("POST", "/v1/uploads", json={"filename": path.name, "size": size}).json()
        else:
            up = self._call("GET", f"/v1/uploads/{upload_id}").json()
        have = {p["number"]: p for p in up["parts"]}
        n_parts = max(1, -(-size // part_bytes))
        with open(path, "rb") as f:
            for n in range(1, n_parts + 1):
                f.seek((n - 1) * part_bytes)
                data = f.read(part_bytes)
                digest = hashlib.sha256(data).hexdigest()
                if have.get(n, {}).get("sha256") != digest:
                    self._call("PUT", f"/v1/uploads/{up['id']}/parts/{n}", content=data,
                               headers={"X-Part-SHA256": digest, "Content-Type": "application/octet-stream"})
                on_bytes(len(data))
        return self._call("POST", f"/v1/uploads/{up['id']}/commit", json={"options": options}).json()

    # ---- jobs --------------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, on_update: Callable[[dict], None] = lambda j: None, poll_s: float = 1.0,
             timeout_s: float | None = None) -> dict:
        """Poll until the job ends; calls on_update with every status seen."""
        start = time.monotonic()
        while True:
            j = self.job(job_id)
            on_update(j)
            if j["state"] in TERMINAL:
                return j
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"job {job_id} still {j['state']} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def artifacts(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}/artifacts").json()

    def download(self, url: str, dest: Path, sha256: str | None = None, resume: bool = True) -> Path:
        """Stream a file to dest (resuming a partial .part file with Range); verify its sha256."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if (resume and part.exists()) else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.http.stream("GET", url, headers=headers) as r:
            if r.status_code == 416:
                have = 0
            elif r.status_code >= 400:
                r.read()
                raise ClientError(r.status_code, "download_failed", f"GET {url}: {r.text[:200]}")
            mode = "ab" if r.status_code == 206 else "wb"
            with open(part, mode) as f:
                for chunk in r.iter_bytes(1024 * 1024):
                    f.write(chunk)
        if sha256 is not None:
            got = file_sha256(part)
            if got != sha256:
                part.unlink()
                raise ClientError(0, "checksum_mismatch", f"{dest.name}: sha256 {got} != manifest {sha256}",
                                  "download it again")
        os.replace(part, dest)
        return dest

    def download_all(self, job_id: str, out_dir: Path, on_file: Callable[[str], None] = lambda p: None) -> list[Path]:
        """Every file of the manifest into out_dir (same relative paths), each verified; plus manifest.json."""
        import json

        manifest = self.artifacts(job_id)
        got = []
        root = out_dir.resolve()
        for f in manifest["files"]:
            dest = (root / f["path"]).resolve()
            if not dest.is_relative_to(root):
                raise ClientError(0, "unsafe_manifest", f"manifest path {f['path']!r} leaves {out_dir}")
            got.append(self.download(f["url"], dest, f.get("sha256")))
            on_file(f["path"])
        (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return got


# ---- the `nerfserve submit` command -----------------------------------------------------------------


def submit(paths: list[Path], server: str, key: str | None, options: dict, wait: bool,
           download: Path | None, part_bytes: int = 8 * 1024 * 1024, quiet: bool = False) -> dict:
    from tqdm import tqdm

    client = Client(server, key)
    try:
        with tempfile.TemporaryDirectory(prefix="nerfserve-submit-") as tmp:
            file = pack_inputs(paths, Path(tmp))
            with tqdm(total=file.stat().st_size, unit="B", unit_scale=True, desc="upload", disable=quiet) as bar:
                job = client.upload(file, options, part_bytes, on_bytes=bar.update)
        print(f"job {job['id']}: {job['state']}", file=sys.stderr)
        if not (wait or download):
            return job
        job = follow(client, job["id"], quiet)
        if job["state"] != "succeeded":
            err = job.get("error") or {}
            raise UserInputError(err.get("code") or job["state"], f"job {job['id']} {job['state']}: "
                                 f"{err.get('message') or ''}".strip(), "see GET /v1/jobs/{id}/log")
        if download:
            files = client.download_all(job["id"], download)
            print(f"downloaded {len(files)} files to {download} (sha256 verified)", file=sys.stderr)
        return job
    finally:
        client.close()


def follow(client: Client, job_id: str, quiet: bool = False) -> dict:
    """Wait for the job with one progress bar per stage (stage %, overall %, ETA)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def show(j: dict) -> None:
        stage = j.get("stage") or j["state"]
        if quiet or j["state"] in TERMINAL:
            return
        if stage not in bars:
            for b in bars.values():
                b.close()
            bars[stage] = tqdm(total=100, desc=stage, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                               "{postfix}")
        bar = bars[stage]
        bar.n = round(100 * (j.get("stage_progress") or 0.0))
        eta = j.get("eta_s")
        bar.set_postfix_str(f"overall {j['progress']:.0f}%" + (f", ETA {eta:.0f} s" if eta is not None else ""))

    try:
        return client.wait(job_id, show)
    finally:
        for b in bars.values():
            b.close()
