"""Run by bench/archive.py in a fresh process: peak-RSS growth of one archive operation.

`python -m bench.archive_rss ENDPOINT BUCKET MODE PREFIX COUNT`, MODE `archive` (zip the
COUNT objects under PREFIX into S3 with `build_archive`) or `put` (upload a local file of
the same size with `S3Storage.put_file`). Prints one JSON line: the VmHWM (peak RSS) before
and after, in KiB, read from /proc/self/status, and the bytes stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.util import read_rss_kib


async def main(endpoint: str, bucket: str, mode: str, prefix: str, count: int) -> dict[str, int]:
    from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

    from avatar_api.storage.s3 import S3Storage
    from avatar_api.training.archive import build_archive

    # The adapter as deployed (bootstrap.build_storage): default transfer settings.
    storage = S3Storage(
        bucket,
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        path_style=True,
    )
    keys = [f"{prefix}{i:03d}.bin" for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="rss-") as tmp:
        local = Path(tmp) / "archive.zip"
        if mode == "put":
            # The same bytes the archive would hold, written here before the measurement.
            with local.open("wb") as out:
                for key in keys:
                    await storage.download_to(key, Path(tmp) / "part")
                    with (Path(tmp) / "part").open("rb") as part:
                        shutil.copyfileobj(part, out)  # streamed: no peak before measuring
        # Warm the client (connection pool, credentials, first request) before measuring.
        await storage.put_bytes("warm-up", b"x", content_type="application/octet-stream")
        before = read_rss_kib()["VmHWM"]
        if mode == "archive":
            stored = await build_archive(storage, keys, f"{prefix}archive.zip")
        else:
            stored = await storage.put_file(
                f"{prefix}raw.zip", local, content_type="application/zip"
            )
        after = read_rss_kib()["VmHWM"]
    await storage.close()
    return {"before_kib": before, "after_kib": after, "bytes": stored.size}


if __name__ == "__main__":
    endpoint, bucket, mode, prefix, count = sys.argv[1:6]
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    print(json.dumps(asyncio.run(main(endpoint, bucket, mode, prefix, int(count)))))
