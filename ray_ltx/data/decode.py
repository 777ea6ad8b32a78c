"""Preprocessing's first stage, decoding (Ray Data CPU tasks), and the rows it starts the stream with.

Free of torch and of the encoders: at the start of a run every CPU's first decode task imports this module
while the encoder actors load their models, and the first clips are ready sooner for it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ray_ltx import storage
from ray_ltx.buckets import Bucket, assign_bucket

#: Row statuses flowing through the stream (a skipped clip's status is its skip reason).
OK = "ok"
PROMPT_ONLY = "prompt_only"  # the empty prompt, encoded once for caption dropout

#: Stream columns holding a tensor's shape ([] for a row without that tensor). Their Arrow type is set rather than
#: inferred: inferred, a batch whose shapes are all empty (the empty prompt alone, only skipped clips) is list<null>,
#: the next stage sees it as a ragged numpy object array, and Ray Data falls back to pickling the column.
SHAPE_COLUMNS = frozenset({"frames_shape", "audio_shape", "latents_shape", "prompt_embeds_shape"})


def stream_table(columns: dict[str, Any]) -> pa.Table:
    """A stage's output as an Arrow table of plain types, the same whatever the batch holds: shapes as
    list<int64>, the rest (strings, bytes, bools, ints) as Arrow infers them."""
    return pa.table({
        name: pa.array([[int(x) for x in shape] for shape in values], pa.list_(pa.int64()))
        if name in SHAPE_COLUMNS else pa.array(values)
        for name, values in columns.items()
    })


def _open_media(path: str):
    """A local path as is (PyAV reads it directly); a remote file as a seekable stream."""
    if not storage.is_uri(path):
        return path
    fs, inner = storage.filesystem(path)
    return fs.open_input_file(inner)


def decode_one(row: dict[str, Any], buckets: list[Bucket], data: dict[str, Any]) -> dict[str, Any]:
    """Probe, bucket, sample and decode one clip; a clip that cannot be used becomes a skip row."""
    from ray_ltx.data.audio import AudioError, decode_audio
    from ray_ltx.data.video import MediaError, decode_frames, probe, sample_frame_indices

    # Frames and audio travel as raw bytes + shape: Arrow's ragged tensor columns do not survive every block merge.
    out = {**row, "bucket": "", "status": OK, "detail": "", "frames": b"", "frames_shape": [0, 0, 0, 3], "audio": b"",
           "audio_shape": [0, 0]}
    if row["status"] == PROMPT_ONLY:
        return {**out, "status": PROMPT_ONLY}
    source = None
    try:
        if not storage.exists(row["path"]):
            raise MediaError("missing_file", row["rel_path"], f"no such file ({row['where']})")
        source = _open_media(row["path"])
        info = probe(source)
        bucket = assign_bucket(info.num_frames, info.height, info.width, buckets)
        if bucket is None:
            smallest = min(b.frames for b in buckets)
            if info.is_image:
                reason, detail = "image_without_image_bucket", (
                    f"{row['rel_path']}: an image, but no bucket has 1 frame; add e.g. 1x512x768 to "
                    "--video_resolution_buckets")
            else:
                reason, detail = "too_short", (
                    f"{row['rel_path']}: {info.num_frames} frames, the smallest bucket needs {smallest}")
            return {**out, "status": reason, "detail": detail}
        indices = sample_frame_indices(info.num_frames, bucket.frames, info.fps, mode=data["frame_sampling"],
                                       sample_fps=data["sample_fps"], stride=data["frame_stride"])
        if data["audio"] != "off":  # the audio of the sampled frames' span, before the costlier video decode
            if hasattr(source, "seek"):
                source.seek(0)
            waveform = None if info.is_image else decode_audio(
                source, indices[0] / info.fps, bucket.frames / data["sample_fps"], data["audio_sample_rate"],
                row["rel_path"])
            if waveform is None and data["audio"] == "required":
                return {**out, "status": "no_audio", "detail": f"{row['rel_path']}: no audio track (--audio required "
                        "skips it; --audio on trains it video-only)"}
            if waveform is not None:
                out.update(audio=waveform.tobytes(), audio_shape=list(waveform.shape))
        if hasattr(source, "seek"):
            source.seek(0)
        frames = decode_frames(source, indices, bucket.height, bucket.width)
        return {**out, "bucket": str(bucket), "frames": frames.tobytes(), "frames_shape": list(frames.shape)}
    except (MediaError, AudioError) as error:
        return {**out, "status": error.reason, "detail": str(error)}
    except ValueError as error:  # sampling: e.g. too short at the requested fps/stride
        return {**out, "status": "too_short", "detail": f"{row['rel_path']}: {error}"}
    except Exception as error:  # a decoder failure nobody foresaw skips this clip, never the whole job
        return {**out, "status": "unreadable", "detail": f"{row['rel_path']}: {type(error).__name__}: {error}"}
    finally:
        if source is not None and hasattr(source, "close"):
            source.close()


def decode_clips(batch: dict[str, Any], buckets: list[str], data: dict[str, Any]) -> pa.Table:
    parsed = [Bucket.parse(b) for b in buckets]
    keys = list(batch)
    rows = []
    for i in range(len(batch["sample_id"])):
        row = {k: batch[k][i] for k in keys}
        own = [Bucket.parse(b) for b in row["buckets"].split()]  # a dataset config's dataset may bring its own
        rows.append(decode_one(row, own or parsed, data))
    return stream_table({key: [row[key] for row in rows] for key in rows[0]})
