"""Everyday mistakes with the CLI and the Python API: a clear sentence instead of a traceback, nothing written, no
work lost after the compute is spent (docs/inputs.md)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepgen_core.cli import build_parser, main
from deepgen_core.errors import DeepGenInputError, GenerationError
from deepgen_core.image_processing import prepare_reference
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.user_files import check_output_file, open_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def never_load(monkeypatch):
    monkeypatch.setattr(DeepGenPipeline, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model was loaded")))


def _generate(*args) -> int:
    return main(["generate", "--prompt", "a red circle", "--steps", "1", *args])


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (RGB) and holds no pixel data: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ output paths


@pytest.mark.parametrize("out,message", [
    ("folder", "is a folder; give a file name"),
    ("image.jpgx", "extension '.jpgx'"),
    ("afile/image.png", "is a file, not a folder"),
])
def test_bad_output_path_fails_before_the_model_loads(tmp_path, capsys, never_load, out, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert _generate("--out", str(tmp_path / out)) == 2
    err = capsys.readouterr().err
    assert "--out" in err and message in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_read_only_output_folder(tmp_path, monkeypatch, capsys, never_load):
    """Root ignores permissions: the check must also hold when access() says no (read-only mount, ACL)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == tmp_path else real(p, mode, **k))
    assert _generate("--out", str(tmp_path / "sub" / "x.png")) == 2
    assert "is not writable" in capsys.readouterr().err and not (tmp_path / "sub").exists()


def test_convert_checks_its_output_folder_first(tmp_path, capsys, never_load):
    (tmp_path / "afile").write_text("x")
    assert main(["convert", "--model", str(tmp_path), "--out", str(tmp_path / "afile" / "converted")]) == 2
    assert "--out" in capsys.readouterr().err


def test_output_path_check_writes_nothing(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "x.webp") == tmp_path / "new" / "deeper" / "x.webp"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ input images


@pytest.mark.parametrize("content,message", [
    (b"not an image at all", "is not an image PIL can read"),
    (_png_header(20000, 20000), "downscale it first"),
    (b"", "is not an image"),
], ids=["text", "400-megapixels", "empty"])
def test_bad_image_files(tmp_path, content, message, capsys, never_load):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(DeepGenInputError, match=message):
        open_image(path)
    assert _generate("--image", str(path), "--out", str(tmp_path / "o.png")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message.split()[0] in err and not (tmp_path / "o.png").exists()


def test_truncated_image(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DeepGenInputError, match="truncated or corrupt"):
        open_image(path, "--image")


def _sideways_photo(path: Path) -> None:
    """A 64x32 JPEG whose EXIF says 'rotate 90 degrees clockwise' (orientation 6), as phones store portraits."""
    image = Image.new("RGB", (64, 32), "red")
    image.paste((0, 0, 255), (0, 0, 32, 32))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif)


def test_exif_orientation_is_applied(tmp_path):
    _sideways_photo(tmp_path / "phone.jpg")
    upright = open_image(tmp_path / "phone.jpg")
    assert upright.size == (32, 64)
    assert prepare_reference(Image.open(tmp_path / "phone.jpg")).shape == (3, 64, 32)  # core path, PIL image from the user


# ------------------------------------------------------------------------------------------------ prompts


@pytest.fixture()
def no_vlm(tiny_pipe, monkeypatch):
    monkeypatch.setattr(type(tiny_pipe.encoder), "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the VLM ran")))
    monkeypatch.setattr(DeepGenPipeline, "denoise", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the DiT ran")))
    return tiny_pipe


@pytest.mark.parametrize("token", ["<|image_pad|>", "<|im_end|>", "<|vision_start|>"])
def test_control_tokens_in_user_text_are_refused(no_vlm, token):
    with pytest.raises(DeepGenInputError, match=rf"prompt contains the model's control token.*{token.replace('|', '.')}"):
        no_vlm(f"a cat {token}{token}", num_inference_steps=1, height=64, width=64)
    with pytest.raises(DeepGenInputError, match="negative_prompt contains"):
        no_vlm("a cat", negative_prompt=token, num_inference_steps=1, height=64, width=64)


def test_overlong_prompt_is_refused_before_model_work(no_vlm):
    with pytest.raises(DeepGenInputError, match=r"prompt has \d+ tokens; DeepGen reads at most 1024.*shorten it"):
        no_vlm("a red circle and " * 1200, num_inference_steps=1, height=64, width=64)


def test_prompt_just_under_the_limit_works(tiny_pipe):
    out = tiny_pipe("red " * 900, num_inference_steps=1, height=64, width=64, output_type="latent")
    assert torch.isfinite(out.latents).all()


# ------------------------------------------------------------------------------------------------ decoding, progress


def test_decode_in_slices_equals_one_call_and_survives_out_of_memory(tiny_pipe, monkeypatch):
    kw = dict(prompt="a red circle", num_inference_steps=1, height=64, width=64, num_images_per_prompt=5, output_type="pt")
    whole = tiny_pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    decode, calls = tiny_pipe.vae.decode, []

    def small_decoder(z, *a, **k):
        calls.append(z.shape[0])
        if z.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(z, *a, **k)

    monkeypatch.setattr(tiny_pipe.vae, "decode", small_decoder)
    sliced = tiny_pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(sliced, whole)
    assert calls[0] == 5 and max(calls[1:]) <= 2


def test_decode_failure_keeps_the_latents(tiny_pipe, monkeypatch, tmp_path, capsys):
    def broken(z, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiny_pipe.vae, "decode", broken)
    with pytest.raises(GenerationError, match="latents are kept") as err:
        tiny_pipe("a red circle", num_inference_steps=1, height=64, width=64, num_images_per_prompt=3)
    assert err.value.latents.shape == (3, 16, 8, 8) and torch.isfinite(err.value.latents).all()


def test_cli_saves_the_latents_when_decoding_fails(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    monkeypatch.setattr(DeepGenPipeline, "_decode", lambda self, z: (_ for _ in ()).throw(GenerationError("the VAE failed (simulated).", z)))
    assert _generate("--out", str(tmp_path / "img.png")) == 1
    err = capsys.readouterr().err
    saved = tmp_path / "img.latents.safetensors"
    assert str(saved) in err and load_file(str(saved))["latents"].shape[1] == 16 and not (tmp_path / "img.png").exists()


def test_non_finite_latents_are_an_error_not_a_black_image(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(DeepGenPipeline, "denoise", lambda self, latents, *a, **k: latents * float("nan"))
    assert _generate("--out", str(tmp_path / "img.png")) == 1
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "img.png").exists()


def test_progress_bar_in_the_python_api_and_its_switch(tiny_pipe, capsys):
    tiny_pipe("a", num_inference_steps=2, height=64, width=64, output_type="latent")
    assert "denoising" in capsys.readouterr().err
    tiny_pipe.set_progress_bar_config(disable=True)
    try:
        tiny_pipe("a", num_inference_steps=2, height=64, width=64, output_type="latent")
        assert "denoising" not in capsys.readouterr().err
    finally:
        tiny_pipe.set_progress_bar_config()


# ------------------------------------------------------------------------------------------------ process behaviour


def test_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(DeepGenPipeline, "denoise", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert _generate("--out", str(tmp_path / "img.png")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and not (tmp_path / "img.png").exists()


def test_closed_pipe_is_quiet():
    """`deepgen train sft --help-config | head -1`: the reader is gone before the CLI writes."""
    read, write = os.pipe()
    os.close(read)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "deepgen_core.cli", "train", "sft", "--help-config"], stdout=write, stderr=subprocess.PIPE,
                          env=env, cwd=REPO, timeout=120)
    os.close(write)
    assert "Traceback" not in proc.stderr.decode() and "BrokenPipeError" not in proc.stderr.decode()
    assert proc.returncode == 141


def test_no_parser_accepts_abbreviations():
    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action.choices, dict):  # a subcommand table
                for sub in action.choices.values():
                    yield from walk(sub)

    parsers = list(walk(build_parser()))
    assert len(parsers) > 8 and all(not p.allow_abbrev for p in parsers)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reward-server", "--reward", "brightness", "--token", "123"])


def test_image_above_the_cap_but_below_pils_guard(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(9000, 9000))  # 81 MP: PIL would decode it, our cap refuses it from the header
    with pytest.raises(DeepGenInputError, match="81 megapixels\\); images above 67 megapixels are refused"):
        open_image(path)
