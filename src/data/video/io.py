"""Finding and decoding videos: files decoded with PyAV, or folders of extracted frames.

A video is either a file (``.mp4 .avi .mkv .webm .mov .m4v``), decoded with PyAV (FFmpeg bindings, a declared
dependency; docs/video.md says why not torchvision's video reader), or a folder of frames (``.jpg`` / ``.png`` ...
sorted by name) extracted at a known frame rate, as the reference's Kinetics-200, UCF101 (25 fps) and HMDB51
(30 fps) frame decoders read them. Both expose the same two calls:

* ``duration`` (seconds) and
* ``read_spans(spans)``: for each ``(start, end)`` time span, the frames whose timestamps fall in ``[start, end)``,
  in order, as ``(time, frame)`` pairs; a frame is a (H, W, 3) uint8 array. A file is decoded once from the
  earliest start to the latest end, whatever the number of spans.

Anything that goes wrong while reading (missing, truncated or not-a-video files, no frame where one is needed)
raises :class:`VideoError`, which the datasets turn into a skipped video and a counted warning.
"""
import math
import os

import numpy as np
from PIL import Image

from src.data.decode import to_rgb
from src.data.folders import IMG_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


class VideoError(Exception):
    """A video that cannot be read (or has too few frames): the dataset skips it."""


def is_video_file(name):
    return name.lower().endswith(VIDEO_EXTENSIONS)


def frame_files(folder):
    """Sorted image files of a frame folder (empty list when it holds none)."""
    try:
        return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMG_EXTENSIONS))
    except OSError:
        return []


def list_videos(folder):
    """Videos directly below ``folder``: video files and frame folders (sub-folders holding images), sorted."""
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and is_video_file(entry.name):
            out.append(entry.path)
        elif entry.is_dir() and frame_files(entry.path):
            out.append(entry.path)
    return out


class PyAVVideo:
    """A video file read with PyAV (one thread per decoder: the DataLoader workers are the parallelism).

    Args:
        path: the file.
    Raises:
        VideoError: cannot open it, no video stream, or no known duration and no frame.
    """

    def __init__(self, path):
        import av  # imported here: image-only runs never need it

        self.path = path
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 30.0
                if stream.duration is not None and stream.time_base is not None:
                    self.duration = float(stream.duration * stream.time_base)
                elif container.duration is not None:
                    self.duration = container.duration / 1e6  # av.time_base units (microseconds)
                elif stream.frames:
                    self.duration = stream.frames / self.fps
                else:
                    self.duration = None
        except (av.FFmpegError, IndexError, OSError, ValueError) as exc:
            raise VideoError(f"{type(exc).__name__}: {exc}") from None
        if self.duration is None:  # no metadata: decode once to measure
            frames = self._decode(0.0, math.inf)
            if not frames:
                raise VideoError("no decodable frame")
            self.duration = frames[-1][0] + 1.0 / self.fps

    def _decode(self, start, end):
        """(time, rgb array) of every frame with start <= time < end, decoding from a seek before ``start``."""
        import av

        out = []
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "NONE"
                if start > 0 and stream.time_base is not None:
                    container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * frame.time_base)
                    if t >= end:
                        break
                    if t >= start:
                        out.append((t, frame.to_ndarray(format="rgb24")))
        except (av.FFmpegError, OSError, ValueError) as exc:
            if not out:
                raise VideoError(f"{type(exc).__name__}: {exc}") from None
            # a truncated tail: keep what decoded; the spans that needed more frames fail below
        return out

    def read_spans(self, spans):
        """See the module docstring. Raises VideoError when a span holds no frame."""
        frames = self._decode(min(s for s, _ in spans), max(e for _, e in spans))
        return [_in_span(frames, s, e) for s, e in spans]


class FrameFolderVideo:
    """A folder of frames extracted at ``fps``: frame k (in name order) is at time k / fps.

    Args:
        path: the folder. fps: extraction frame rate (30 for Kinetics / HMDB51 frames, 25 for UCF101).
    Raises:
        VideoError: no image in the folder. ValueError: ``fps`` is not a positive number (every video would fail).
    """

    def __init__(self, path, fps=30.0):
        self.path, self.fps = path, float(fps)
        if not self.fps > 0:  # a setting, not one bad video: never turned into a skipped video
            raise ValueError(f"frame rate of a frame folder must be > 0, got {fps}")
        self.files = frame_files(path)
        if not self.files:
            raise VideoError("no frame images")
        self.duration = len(self.files) / self.fps

    def read_spans(self, spans):
        """See the module docstring; only the frames inside the spans are opened (lazily, by the caller)."""
        out = []
        for s, e in spans:
            first, last = max(math.ceil(s * self.fps - 1e-9), 0), min(math.ceil(e * self.fps - 1e-9), len(self.files))
            items = [(k / self.fps, _LazyFrame(os.path.join(self.path, self.files[k]))) for k in range(first, last)]
            if not items:
                raise VideoError(f"no frame in [{s:.3f}, {e:.3f}) s of {len(self.files)} frames at {self.fps:g} fps")
            out.append(items)
        return out


class _LazyFrame:
    """An image file read on first use (only the subsampled frames of a clip are ever opened)."""

    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with Image.open(self.path) as img:
                return np.asarray(to_rgb(img))
        except Exception as exc:  # any decoder failure
            raise VideoError(f"frame {os.path.basename(self.path)}: {type(exc).__name__}: {exc}") from None


def _in_span(frames, start, end):
    items = [(t, f) for t, f in frames if start <= t < end]
    if not items:
        raise VideoError(f"no decodable frame in [{start:.3f}, {end:.3f}) s")
    return items


def load_frame(frame):
    """A (H, W, 3) uint8 array from what ``read_spans`` returned (an array, or a lazily read image)."""
    return frame.load() if isinstance(frame, _LazyFrame) else frame


def open_video(path, frames_fps=30.0):
    """:class:`PyAVVideo` for a file, :class:`FrameFolderVideo` for a folder (frames at ``frames_fps``)."""
    if os.path.isdir(path):
        return FrameFolderVideo(path, frames_fps)
    if not os.path.isfile(path):
        raise VideoError("no such file")
    return PyAVVideo(path)
