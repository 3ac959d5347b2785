"""Input limits of the Space: every bad input gives a `SpaceInputError` naming the problem, good inputs come out exactly
as the one audio/image input path reads them."""

import re

import numpy as np
import pytest
import soundfile as sf

from hf_mltm.audio import load_audio
from hf_mltm.image import load_image
from hf_mltm.space.limits import (
    InputLimits,
    SpaceInputError,
    check_query,
    check_template,
    parse_lines,
    prepare_audio,
    prepare_image,
)


def test_prepare_audio_divides_gradio_int16_by_32768_and_averages_the_channels():
    left = np.full(8000, 16384, dtype=np.int16)  # 0.5
    right = np.full(8000, -8192, dtype=np.int16)  # -0.25
    clip = prepare_audio((16000, np.stack([left, right], axis=1)), 16000)  # Gradio: (num_samples, channels)
    assert clip.waveform.dtype == np.float32 and clip.waveform.shape == (8000,)
    np.testing.assert_array_equal(clip.waveform, np.full(8000, 0.125, dtype=np.float32))
    assert clip.sampling_rate == 16000 and clip.duration_s == 0.5 and clip.notice is None and clip.path is None


def test_prepare_audio_reads_a_real_clip_exactly_as_load_audio_does(shared_data):
    path = sorted((shared_data / "esc50" / "audio").glob("*.flac"))[0]
    clip = prepare_audio(str(path), 32000)
    expected, rate = load_audio(str(path), 32000)
    np.testing.assert_array_equal(clip.waveform, expected)
    assert rate == clip.sampling_rate == 32000 and clip.duration_s == 5.0 and clip.notice is None
    assert clip.path == str(path) and clip.name == path.name


def test_prepare_audio_trims_a_long_clip_to_its_first_seconds_with_a_notice(tmp_path):
    rate = 8000
    t = np.arange(3 * rate) / rate
    samples = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "long.wav", samples, rate, subtype="FLOAT")
    clip = prepare_audio({"path": str(tmp_path / "long.wav")}, rate, limits=InputLimits(max_clip_s=1.0))
    assert clip.waveform.shape == (rate,) and clip.duration_s == 3.0
    np.testing.assert_allclose(clip.waveform, samples[:rate], atol=1e-7)
    assert clip.notice == "'long.wav' lasts 3.0 s; only its first 1 s were used (the Space's limit)."


def test_prepare_audio_trims_a_long_recording_too():
    clip = prepare_audio((8000, np.full(5 * 8000, 1000, dtype=np.int16)), 8000, limits=InputLimits(max_clip_s=2.0))
    assert clip.waveform.shape == (16000,) and clip.duration_s == 5.0 and "first 2 s" in clip.notice


@pytest.mark.parametrize(
    ("name", "content", "limits", "message"),
    [
        ("notes.txt", b"hello", InputLimits(), "reads audio files in these formats only: WAV, FLAC"),
        ("big.wav", b"x" * 101, InputLimits(max_audio_bytes=100), "is 0.0 MB, over the limit of 0.0 MB per audio file"),
        ("empty.wav", b"", InputLimits(), "is empty (0 bytes)"),
        ("broken.wav", b"RIFF not really a wave file", InputLimits(), "could not be decoded as audio"),
    ],
)
def test_prepare_audio_rejects_bad_files_before_decoding(tmp_path, name, content, limits, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SpaceInputError, match=re.escape(message)):
        prepare_audio(str(tmp_path / name), 16000, limits=limits)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "No audio: upload or record a clip first"),
        (["a.wav", "b.wav"], "One clip at a time"),
        ("", "No audio"),
        ((16000, np.full(3200, 100, dtype=np.int16)), r"lasts 0\.20 s; clips must last at least 0\.5 s"),
        ((16000, np.zeros(16000, dtype=np.int16)), "is silent"),
        ((16000, np.full(16000, np.nan, dtype=np.float32)), "NaN or infinite"),
        ((float("nan"), np.ones(16000, dtype=np.int16)), "sampling rate must be a whole number"),
        ("/no/such/clip.wav", "could not be found on the server"),
    ],
)
def test_prepare_audio_rejects_unusable_clips_with_a_message(value, message):
    with pytest.raises(SpaceInputError, match=message):
        prepare_audio(value, 16000)


def test_parse_lines_strips_drops_blanks_and_repeats_and_splits_labels_at_commas():
    assert parse_lines("  dog \n\n rain,  cat\n dog\n", "label") == ["dog", "rain", "cat"]
    assert parse_lines("a dog, barking\n  a  cat \n", "caption") == ["a dog, barking", "a cat"]


@pytest.mark.parametrize(
    ("text", "limits", "message"),
    [
        ("", InputLimits(), "Type at least one caption"),
        (" \n \n", InputLimits(), "Type at least one caption"),
        ("a\nb\nc", InputLimits(max_lines=2), "3 captions given; at most 2"),
        ("x" * 30, InputLimits(max_text_chars=20), "has 30 characters; keep it under 20"),
        (42, InputLimits(), "must be text, one per line"),
    ],
)
def test_parse_lines_rejects_empty_too_many_or_too_long_entries(text, limits, message):
    with pytest.raises(SpaceInputError, match=message):
        parse_lines(text, "caption", limits=limits)


def test_check_query_collapses_spaces_and_rejects_empty_or_long_queries():
    assert check_query("  a   dog\nbarking ") == "a dog barking"
    with pytest.raises(SpaceInputError, match="Type what you want to hear"):
        check_query("   ")
    with pytest.raises(SpaceInputError, match="keep it under 200"):
        check_query("a" * 201)


def test_check_template_accepts_only_the_label_field():
    assert check_template("the sound of {label}") == "the sound of {label}"
    assert check_template("{{literal}} {label}") == "{{literal}} {label}"
    for template, message in [("the sound", "has no {label}"), ("{label} at {place}", "may only contain"),
                              ("{label} {", "may only contain"), ("", "is empty")]:
        with pytest.raises(SpaceInputError, match=re.escape(message)):
            check_template(template)


def test_prepare_image_opens_a_real_photo_as_load_image_does(shared_data):
    path = sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0]
    image = prepare_image(str(path))
    expected = load_image(str(path))
    assert image.mode == "RGB" and image.size == expected.size
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_prepare_image_rejects_large_foreign_or_broken_files(shared_data, tmp_path):
    path = sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0]
    width, height = load_image(str(path)).size
    with pytest.raises(SpaceInputError, match=f"has {width} x {height} pixels, more than the 100 allowed"):
        prepare_image(str(path), limits=InputLimits(max_image_pixels=100))
    (tmp_path / "picture.tiff").write_bytes(b"II*\x00")
    with pytest.raises(SpaceInputError, match="reads images in these formats only: JPG, JPEG, PNG"):
        prepare_image(str(tmp_path / "picture.tiff"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not an image")
    with pytest.raises(SpaceInputError, match="could not be read as an image"):
        prepare_image(str(tmp_path / "broken.png"))
    with pytest.raises(SpaceInputError, match="No picture"):
        prepare_image(None)
