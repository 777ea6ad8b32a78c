"""A clip's audio track: decoded with PyAV for the span of its sampled frames, resampled to a model's rate, and
turned into the log-mel spectrogram an audio VAE encodes.

A clip without an audio stream gives None (the caller decides: train it video-only, or skip it); a track FFmpeg cannot
decode raises :class:`AudioError`, so that clip is skipped and reported and nothing else is lost. The mel spectrogram
is the one Lightricks' LTX-2 audio processor computes (torchaudio's ``MelSpectrogram``: Hann window, centred reflect
padding, magnitude, Slaney mel scale and norm, then ``log(clamp(x, 1e-5))``), made here with ``torch.stft`` and
transformers' filter bank so torchaudio is not needed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO, Literal

import av
import numpy as np

if TYPE_CHECKING:  # torch only for the spectrogram: decode tasks, which call decode_audio, do without it
    import torch

AudioErrorReason = Literal["audio_unreadable"]
#: Channels the audio is decoded to: LTX-2's audio VAE takes stereo (a mono track is duplicated, more are mixed down).
CHANNELS = 2


class AudioError(Exception):
    """An audio track that cannot become training audio; ``reason`` is the skip reason in the cache manifest."""

    def __init__(self, reason: AudioErrorReason, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.reason = reason
        self.source = source
        self.detail = detail

    def __reduce__(self) -> tuple[type[AudioError], tuple[str, str, str]]:
        return (type(self), (self.reason, self.source, self.detail))


def decode_audio(source: str | os.PathLike | BinaryIO, start: float, duration: float, sample_rate: int,
                 name: str = "") -> np.ndarray | None:
    """The audio of [start, start + duration) seconds as (2, round(duration * sample_rate)) float32 at ``sample_rate``.

    None when the file has no audio stream. A track that ends early is padded with silence (streams often stop a few
    milliseconds before the video does). Raises :class:`AudioError` when the track does not decode.
    """
    if not name:
        name = os.fsdecode(source) if isinstance(source, str | os.PathLike) else "<file object>"
    wanted = round(duration * sample_rate)
    first = round(start * sample_rate)
    try:
        with av.open(source, metadata_errors="ignore") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            mono = stream.codec_context.channels == 1  # duplicated below: a mixdown would scale it by 1/sqrt(2)
            resampler = av.AudioResampler(format="fltp", layout="mono" if mono else "stereo", rate=sample_rate)
            chunks, decoded = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    decoded += out.samples
                if decoded >= first + wanted:
                    break
            else:
                chunks += [out.to_ndarray() for out in resampler.resample(None)]
    except (av.FFmpegError, ValueError) as error:
        raise AudioError("audio_unreadable", name, f"the audio track does not decode ({error})") from None
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((CHANNELS, 0), np.float32)
    clip = np.repeat(samples, CHANNELS // samples.shape[0], axis=0)[:, first:first + wanted]
    if clip.shape[1] < wanted:
        clip = np.pad(clip, ((0, 0), (0, wanted - clip.shape[1])))
    return np.ascontiguousarray(clip, dtype=np.float32)


def log_mel_spectrogram(waveform: torch.Tensor, sample_rate: int, hop_length: int, mel_bins: int,
                        n_fft: int = 1024) -> torch.Tensor:
    """(channels, samples) -> (channels, frames, mel_bins) log-magnitude mel spectrogram (frames = samples // hop + 1)."""
    import torch
    from transformers.audio_utils import mel_filter_bank

    spectrum = torch.stft(waveform.float(), n_fft=n_fft, hop_length=hop_length, win_length=n_fft,
                          window=torch.hann_window(n_fft, device=waveform.device), center=True, pad_mode="reflect",
                          return_complex=True).abs()
    bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=mel_bins, min_frequency=0.0,
                           max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
    mel = torch.einsum("cft,fm->ctm", spectrum, torch.from_numpy(bank).to(spectrum))
    return torch.log(mel.clamp(min=1e-5))
