"""Bad input: a clear message and exit code, and nothing already written is corrupted.

The cases of docs/reliability.md that the config, preprocessing and reliability tests do not cover.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import base_config
from ray_ltx.config import load_config
from ray_ltx.data import cache as cache_lib
from ray_ltx.data.pipeline import preprocess
from ray_ltx.data.samples import moving_shape_frames
from ray_ltx.errors import ConfigError, DatasetError
from ray_ltx.media import write_video

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray_ltx", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("rank: 16\nlr: [1e-4\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.*line"):
        load_config(path)


def test_wrong_type_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "types.yaml"
    path.write_text("training:\n  train_steps: ten\n")
    result = _cli("train", "--config", str(path))
    assert result.returncode == 2 and "train_steps" in result.stderr and "ten" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    result = _cli("preprocess", "--data_root", str(tmp_path / "file"), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 3 and "file" in result.stderr and "Traceback" not in result.stderr


def test_prompts_and_videos_of_different_lengths(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "videos.txt").write_text("a.mp4\nb.mp4\n")
    result = _cli("preprocess", "--data_root", str(tmp_path), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 3, result.stderr
    assert "prompts.txt" in result.stderr and "3" in result.stderr and "2" in result.stderr


@pytest.mark.full
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_odd_inputs_are_skipped_and_reported(tiny_model: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_video(root / "good.mp4", moving_shape_frames(20, 96, 128), fps=24)
    with av.open(str(root / "audio.mp4"), "w") as container:  # a file with no video stream
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1024, Fraction(1, 16000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    long_caption = "a red circle " + "moves slowly across the frame " * 60
    (root / "prompts.txt").write_bytes(long_caption.encode() + b"\nan audio track\ncaf\xe9 in latin-1\n")
    (root / "videos.txt").write_text("good.mp4\naudio.mp4\ngood.mp4\n")
    manifest = preprocess(base_config(tiny_model, root, tmp_path / "out"))
    reasons = {s["reason"] for s in manifest.skipped}
    assert {"no_video_stream", "caption_not_utf8"} <= reasons, manifest.skipped
    assert manifest.truncated_captions == 1
    assert "captions truncated to max_sequence_length: 1" in capsys.readouterr().out


@pytest.mark.full
@pytest.mark.slow
def test_disk_full_while_writing_the_cache(tiny_model: Path, sample_data: Path, tmp_path: Path, ray_cluster) -> None:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        flags = ["--pretrained_model_name_or_path", str(tiny_model), "--data_root", str(sample_data),
                 "--video_resolution_buckets", "9x64x96", "17x64x96", "--vae_dtype", "fp32",
                 "--text_encoder_dtype", "fp32", "--output_dir", str(tmp_path / "out")]
        result = _cli("preprocess", *flags, "--cache_dir", str(mount / "cache"), cwd=tmp_path)
        assert result.returncode == 9, result.stderr[-3000:]
        assert "no space left" in result.stderr and "Traceback" not in result.stderr
        assert not (mount / "cache" / cache_lib.MANIFEST).exists()  # nothing will read the incomplete cache
        partial = list((mount / "cache").rglob("*.parquet"))
        roomy = tmp_path / "roomy-cache"
        shutil.copytree(mount / "cache", roomy)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    # Given room, the rerun keeps what was complete and finishes the rest (in-process, on the session's Ray).
    preprocess(base_config(tiny_model, sample_data, tmp_path / "out", cache_dir=str(roomy), id_token=None))
    manifest = cache_lib.read_manifest(str(roomy))
    assert manifest.num_samples == 6 and manifest.stats["reused"] == sum(
        len([s for s in cache_lib.read_shard_header(str(roomy), str(p.relative_to(mount / "cache"))).info.sample_ids if s])
        for p in partial if not p.name.startswith("."))


def test_unknown_data_layout_column(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text("clip,words\na.mp4,hello\n")
    with pytest.raises(DatasetError, match="no column"):
        from ray_ltx.data.sources import read_records

        read_records(base_config(tmp_path, tmp_path, tmp_path / "out", dataset_file=str(tmp_path / "meta.csv")))
