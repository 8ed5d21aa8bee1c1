"""Face detection over the photo test set: accuracy and time per photo.

Run with `uv run python bench/faces.py`. Each photo goes through the real pipeline first
(decode, orient, sRGB, downscale) and the detector then runs on that output, as in production.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

# The fixture builder lives in the test package; make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image
from tests.photos.fixtures import build_photo_set

from avatar_api.photos import faces
from avatar_api.photos.processing import normalise_photo

RUNS = 3


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="faces-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        photo_set = build_photo_set(root / "fixtures")
        build_s = time.perf_counter() - started

        started = time.perf_counter()
        faces.load_model()
        with Image.new("RGB", (640, 480)) as warm_up:
            faces.detect_faces(warm_up)
        load_ms = (time.perf_counter() - started) * 1000

        print(f"{'name':<24} {'size':>10} {'expected':>8} {'found':>5} {'score':>5} {'ms':>6}")
        correct = total = false_positives = misses = 0
        times: list[float] = []
        for name, (path, expected) in photo_set.items():
            if expected.faces is None:
                continue
            out = root / f"{name}.jpg"
            normalise_photo(path, out, detect_faces=False)
            with Image.open(out) as image:
                image.load()
                runs = []
                for _ in range(RUNS):
                    t0 = time.perf_counter()
                    found = faces.detect_faces(image)
                    runs.append((time.perf_counter() - t0) * 1000)
                size = f"{image.width}x{image.height}"
            ms = statistics.mean(runs)
            times.append(ms)
            total += 1
            correct += len(found) == expected.faces
            false_positives += max(0, len(found) - expected.faces)
            misses += max(0, expected.faces - len(found))
            score = f"{found[0].score:.2f}" if found else "-"
            flag = "" if len(found) == expected.faces else "  <-- wrong"
            print(
                f"{name:<24} {size:>10} {expected.faces:>8} {len(found):>5} {score:>5} "
                f"{ms:>6.1f}{flag}"
            )

        print()
        print(f"correct:         {correct}/{total}")
        print(f"false positives: {false_positives} faces")
        print(f"missed faces:    {misses}")
        print(f"mean ms/photo:   {statistics.mean(times):.1f} (max {max(times):.1f})")
        print(f"model load+warm: {load_ms:.0f} ms; fixture build: {build_s:.1f} s")


if __name__ == "__main__":
    main()
