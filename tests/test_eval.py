"""`deepgen eval`: each benchmark's published data format in, its official scorer's layout out (file by file),
resume, sharding over two processes, CVTG-2K scoring and the input errors. DeepGen-Tiny at 64 px, 2 steps."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from deepgen_core.errors import DeepGenInputError
from deepgen_core.eval import BENCHMARKS, EvalSettings, Sample, get_benchmark, load_model, run_eval, score_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = EvalSettings(height=64, width=64, steps=2, batch_size=2)


@pytest.fixture(scope="module")
def pipe():
    return load_model(device="cpu")[0]


def _source(path: Path, colour: str, size=(80, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _json(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


# --------------------------------------------------------------------------- tiny data files in the published formats


def geneval_data(root: Path, n: int = 3) -> Path:
    rows = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": f"a photo of {i} cats"} for i in range(n)]
    path = root / "prompts" / "evaluation_metadata.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpg_data(root: Path) -> Path:
    folder = root / "prompts"
    folder.mkdir(parents=True)
    for name, text in (("partiprompts12", "a red circle on blue"), ("countbench3", "two green squares")):
        (folder / f"{name}.txt").write_text(text + "\n")
    return folder


def unigenbench_data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "test_prompts_en.csv"
    path.write_text('index,prompt_en,sub_dims_en\n0,"a panda, in ink",{}\n7,a gardener with a sunflower,{}\n')
    return path


def wise_data(root: Path) -> Path:
    _json(root / "data" / "cultural_common_sense.json", [{"Prompt": "a lantern festival", "Explanation": "x", "prompt_id": 1}])
    _json(root / "data" / "natural_science.json", [{"Prompt": "a birch tree in autumn", "Category": "Biology", "prompt_id": 641}])
    _json(root / "data" / "cultural_common_sense_rewrite.json", [{"Prompt": "lanterns", "prompt_id": 1}])  # legacy variant: skipped
    return root / "data"


def corebench_data(root: Path) -> Path:
    _json(root / "data" / "C-MI.json", {"C-MI-001": {"Prompt": "a kitchen with five objects", "Checklist": []}})
    _json(root / "data" / "R-LR.json", {"R-LR-002": {"Prompt": "a logic puzzle scene", "Checklist": []}})
    return root / "data"


def imgedit_data(root: Path) -> Path:
    folder = root / "Benchmark" / "singleturn"
    _source(folder / "animal" / "000342021.jpg", "red")
    _source(folder / "style" / "000278574.jpg", "blue")
    _json(folder / "singleturn.json", {
        "1082": {"id": "animal/000342021.jpg", "prompt": "Make the shell smooth.", "edit_type": "adjust"},
        "673": {"id": "style/000278574.jpg", "prompt": "Turn it into ukiyo-e.", "edit_type": "style"},
    })
    return folder


def gedit_data(root: Path) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def png(colour, size):
        buf = io.BytesIO()
        Image.new("RGB", size, colour).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = [("k1", "color_alter", "make it blue", "en", "red"), ("k2", "color_alter", "变成绿色", "cn", "white"), ("k3", "subject-add", "add a cat", "en", "gray")]
    table = pa.table({
        "task_type": [r[1] for r in rows], "key": [r[0] for r in rows], "instruction": [r[2] for r in rows],
        "instruction_language": [r[3] for r in rows], "input_image": [png(r[4], (96, 64)) for r in rows],
        "input_image_raw": [png(r[4], (192, 128)) for r in rows], "Intersection_exist": [True, False, True],
    })
    (root / "GEdit-Bench" / "data").mkdir(parents=True)
    pq.write_table(table, root / "GEdit-Bench" / "data" / "train-00000-of-00001.parquet")
    return root / "GEdit-Bench"


def rise_data(root: Path) -> Path:
    folder = root / "RISEBench-full"
    _source(folder / "temporal_reasoning_images" / "1.png", "yellow")
    _source(folder / "logical_reasoning_images" / "2.png", "white")
    return _json(folder / "datav2_total_w_subtask.json", [
        {"index": "temporal_reasoning_1", "category": "temporal_reasoning", "instruction": "Draw it a year later.", "image": "temporal_reasoning_images/1.png", "reference": "x"},
        {"index": "logical_reasoning_2", "category": "logical_reasoning", "instruction": "Solve the maze.", "image": "logical_reasoning_images/2.png", "reference": "y"},
    ])


def uniredit_data(root: Path) -> Path:
    folder = root / "UniREditBench"
    _source(folder / "original_image" / "a.png", "green")
    _source(folder / "original_image" / "b.png", "purple")
    return _json(folder / "data.json", [
        {"original_image_path": "original_image/a.png", "reference_image_path": "r.png", "instruction": "Melt the ice.", "name": "real_world", "idx": 1, "reference_effect": "x"},
        {"original_image_path": "original_image/b.png", "reference_image_path": "r.png", "instruction": "Make the next move.", "rules": "Sokoban rules.", "name": "sokoban", "idx": 4, "reference_effect": "y"},
    ])


def cvtg_data(root: Path) -> Path:
    folder = root / "CVTG-2K"
    _json(folder / "CVTG" / "2.json", {"data_list": [
        {"index": 0, "prompt": 'A shop sign reading "OPEN" and a poster saying "SALE"', "carrier_list": ["sign", "poster"], "sentence_list": ["OPEN", "SALE"]},
        {"index": 1, "prompt": 'A door with "PUSH" and a mat with "WELCOME HOME"', "carrier_list": ["door", "mat"], "sentence_list": ["PUSH", "WELCOME HOME"]},
    ]})
    _json(folder / "CVTG-Style" / "3.json", {"data_list": [
        {"index": 5, "prompt": 'Signs "RED", "BLUE" and "GREEN"', "carrier_list": ["a", "b", "c"], "sentence_list": ["RED", "BLUE", "GREEN"]},
    ]})
    return folder


DATA = {"geneval": geneval_data, "dpg": dpg_data, "unigenbench": unigenbench_data, "wise": wise_data, "corebench": corebench_data,
        "imgedit": imgedit_data, "gedit": gedit_data, "rise": rise_data, "uniredit": uniredit_data, "cvtg": cvtg_data}

# What each official scorer reads (paths relative to --out) and the image side (DPG: a 2x2 grid of 64 px images).
LAYOUTS = {
    "geneval": ({f"0000{i}/metadata.jsonl" for i in range(3)} | {f"0000{i}/samples/000{j}.png" for i in range(3) for j in range(4)}, 64),
    "dpg": ({"partiprompts12.png", "countbench3.png"}, 128),
    "unigenbench": ({f"{i}_{j}.png" for i in (0, 7) for j in range(4)}, 64),
    "wise": ({"1.png", "641.png"}, 64),
    "corebench": ({f"C-MI/C-MI-001-{j}.png" for j in range(4)} | {f"R-LR/R-LR-002-{j}.png" for j in range(4)}, 64),
    "imgedit": ({"1082.png", "673.png"}, 64),
    "gedit": ({"fullset/color_alter/en/k1.png", "fullset/color_alter/en/k1_SRCIMG.png", "fullset/color_alter/cn/k2.png",
               "fullset/color_alter/cn/k2_SRCIMG.png", "fullset/subject-add/en/k3.png", "fullset/subject-add/en/k3_SRCIMG.png"}, 64),
    "rise": ({"images/temporal_reasoning/temporal_reasoning_1.png", "images/logical_reasoning/logical_reasoning_2.png"}, 64),
    "uniredit": ({"real_world/1.png", "sokoban/4.png"}, 64),
    "cvtg": ({"CVTG/2/0.png", "CVTG/2/1.png", "CVTG-Style/3/5.png"}, 64),
}


def written(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}


def pixels(out: Path) -> dict[str, np.ndarray]:
    return {name: np.asarray(Image.open(out / name)) for name in sorted(written(out)) if name.endswith(".png")}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_benchmark_writes_its_scorers_layout(name, pipe, tmp_path):
    data = DATA[name](tmp_path / "data")
    out = tmp_path / "out"
    result = run_eval(name, data, out, pipe, TINY, progress=False)
    files, side = LAYOUTS[name]
    assert written(out) == files
    for path in files:
        if path.endswith(".png") and not path.endswith("_SRCIMG.png"):
            assert Image.open(out / path).size == (side, side), path
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["benchmark"] == name and manifest["complete"] and manifest["samples_done"] == result.total
    assert manifest["generation"]["steps"] == 2 and manifest["generation"]["seed"] == 42
    assert {"torch", "transformers", "diffusers", "accelerate"} <= set(manifest["versions"])
    assert manifest["paper"] == BENCHMARKS[name].paper and len(manifest["data_sha256"]) == 64
    assert out.name in result.scorer_command  # the printed official scorer command names the written folder


def test_written_metadata_and_sources_are_what_the_scorers_read(pipe, tmp_path):
    data = geneval_data(tmp_path / "g")
    run_eval("geneval", data, tmp_path / "geneval", pipe, TINY, progress=False)
    lines = data.read_text().splitlines()
    for i, line in enumerate(lines):
        with open(tmp_path / "geneval" / f"{i:05d}" / "metadata.jsonl") as f:
            assert json.load(f) == json.loads(line)  # GenEval json.load()s the file: one object, the prompt's line
    data = gedit_data(tmp_path / "e")
    run_eval("gedit", data, tmp_path / "gedit", pipe, TINY, progress=False)
    source = Image.open(tmp_path / "gedit" / "fullset/color_alter/en/k1_SRCIMG.png")
    assert source.size == (96, 64) and source.getpixel((0, 0)) == (255, 0, 0)  # the dataset's input_image as given
    # the DPG grid holds the 4 images of a prompt, row-major, as the scorer crops it
    data = dpg_data(tmp_path / "d")
    assert run_eval("dpg", data, tmp_path / "dpg", pipe, TINY, progress=False).scorer_command.startswith(f"PIC_NUM=4 bash dpg_bench/dist_eval.sh {tmp_path / 'dpg'} 64")
    run_eval("dpg", data, tmp_path / "dpg1", pipe, EvalSettings(height=64, width=64, steps=2, batch_size=2, images_per_prompt=1), progress=False)
    grid, single = np.asarray(Image.open(tmp_path / "dpg" / "countbench3.png")), np.asarray(Image.open(tmp_path / "dpg1" / "countbench3.png"))
    assert np.array_equal(grid[:64, :64], single)  # image 0 (same seed) sits top left


def test_uniredit_prepends_rules_and_defaults_follow_the_paper(pipe, tmp_path):
    samples = get_benchmark("uniredit").read(uniredit_data(tmp_path), None)
    assert [s.prompt for s in samples] == ["Melt the ice.", "Sokoban rules. Make the next move."]
    assert BENCHMARKS["dpg"].guidance_scale == 7.5 and BENCHMARKS["geneval"].images_per_prompt == 4
    from deepgen_core.eval.runner import resolve_settings

    cfg = resolve_settings(BENCHMARKS["imgedit"], EvalSettings(), pipe)
    assert (cfg["height"], cfg["steps"], cfg["guidance_scale"], cfg["batch_size"]) == (pipe.encoder.config.default_image_size, 50, 4.0, 4)
    assert cfg["negative_prompt"] == pipe.encoder.config.default_edit_negative


class Interrupted(Exception):
    pass


def test_resume_skips_finished_samples_and_matches_an_uninterrupted_run(pipe, tmp_path):
    data = geneval_data(tmp_path / "data", n=5)
    full = tmp_path / "full"
    run_eval("geneval", data, full, pipe, TINY, progress=False)

    def stop_after_first_batch(keys):
        raise Interrupted(keys)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        run_eval("geneval", data, out, pipe, TINY, progress=False, on_batch=stop_after_first_batch)
    first = {p.parent.parent.name for p in out.rglob("0003.png")}
    assert first == {"00000", "00001"} and not json.loads((out / "manifest.json").read_text())["complete"]
    result = run_eval("geneval", data, out, pipe, TINY, progress=False)
    assert sorted(result.generated) == ["00002", "00003", "00004"] and result.skipped == 2  # nothing generated twice
    assert written(out) == written(full)
    a, b = pixels(out), pixels(full)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((out / "manifest.json").read_text())["complete"]
    (out / "00003" / "samples" / "0002.png").unlink()  # a run killed while writing a sample's files
    assert run_eval("geneval", data, out, pipe, TINY, progress=False).generated == ["00003"]
    assert np.array_equal(pixels(out)["00003/samples/0002.png"], b["00003/samples/0002.png"])


def _done_samples(out: Path) -> set[str]:
    return {p.parent.name for p in out.glob("*/metadata.jsonl")}  # GenEval writes a sample's metadata.jsonl last


def _kill_midway(cmd: list[str], env: dict, out: Path, total: int, timeout: float = 240.0) -> None:
    """Start `cmd`, SIGKILL it once some but not all samples are on disk (bounded wait), and reap it."""
    log = out.with_name(out.name + ".log")
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        try:
            while len(_done_samples(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            state = (proc.poll(), len(_done_samples(out)))
        finally:
            proc.send_signal(signal.SIGKILL)  # no handler runs, as when a node is lost or the OOM killer strikes
            proc.wait(timeout=60)
    assert state[0] is None and 2 <= state[1] < total, f"not killed midway (exit code, samples done) = {state}: {log.read_text()[-2000:]}"


@pytest.mark.slow
def test_a_killed_cli_run_resumes_without_regenerating_and_matches_an_uninterrupted_run(pipe, tmp_path):
    total = 8
    data = geneval_data(tmp_path / "data", n=total)
    full = tmp_path / "full"
    run_eval("geneval", data, full, pipe, EvalSettings(height=64, width=64, steps=2, batch_size=1), progress=False)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deepgen_core.cli", "eval", "geneval", "--data", str(data), "--out", str(out), "--height", "64",
           "--width", "64", "--steps", "2", "--batch-size", "1", "--no-progress"]
    _kill_midway(cmd, env, out, total)
    done = _done_samples(out)
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for key in done for p in (out / key).rglob("*")}
    # what a kill during a write leaves (a process that wrote a temporary file and died before its rename)
    unfinished = out / f"{len(done):05d}" / "samples"
    unfinished.mkdir(parents=True, exist_ok=True)
    (unfinished / ".0001.png.999999.tmp").write_bytes(b"\x89PNG half")
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # nothing generated twice: the rerun made only the missing samples and left the finished files untouched
    assert f"generated {total - len(done)}, found {len(done)} done" in rerun.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before
    assert not list(out.rglob("*.tmp"))  # no partial file survives
    assert written(out) == written(full)
    assert all((out / name).read_bytes() == (full / name).read_bytes() for name in written(full))  # byte for byte
    assert json.loads((out / "manifest.json").read_text())["complete"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_disjoint_shards_equal_to_one_process(pipe, tmp_path):
    data = geneval_data(tmp_path / "data", n=5)
    single = tmp_path / "single"
    run_eval("geneval", data, single, pipe, TINY, progress=False)
    out = tmp_path / "sharded"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "eval_entry.py"), "geneval", str(data), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = [set(json.loads(Path(f"{out}.rank{r}.json").read_text())) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {f"{i:05d}" for i in range(5)}
    assert written(out) == written(single)
    a, b = pixels(out), pixels(single)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _render(texts: list[str]) -> Image.Image:
    image = Image.new("RGB", (360, 60 * len(texts) + 20), "white")
    draw = ImageDraw.Draw(image)
    for row, text in enumerate(texts):
        draw.text((15, 15 + 60 * row), text, fill="black", font=ImageFont.load_default(size=40))
    return image


def test_cvtg_scores_rendered_ground_truth_as_one_and_reports_tiny_numbers(pipe, tmp_path):
    pytest.importorskip("rapidocr")
    from deepgen_core.rewards import OCRReward

    bench = get_benchmark("cvtg")
    data = cvtg_data(tmp_path / "data")
    samples = bench.read(data, None)
    truth = tmp_path / "truth"
    for sample in samples:
        path = truth / bench.files(sample, 1)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        _render(sample.meta["targets"]).save(path)
    ocr = OCRReward(detection_side=320)
    from deepgen_core.eval.scoring import ocr_scores

    scores = score_folder(bench, truth, samples, 1, ocr=ocr, chunk=2)
    assert scores["word_accuracy"] == 1.0 and scores["ned"] == pytest.approx(1.0) and scores["images"] == 3
    wrong = ocr_scores([_render(["CLOSED"])], [["OPEN"]], ocr)
    assert wrong["word_accuracy"] == 0.0 and wrong["ned"] < 0.6
    run_eval("cvtg", data, tmp_path / "tiny", pipe, TINY, progress=False)
    tiny = score_folder(bench, tmp_path / "tiny", samples, 1, ocr=ocr)
    assert 0.0 <= tiny["word_accuracy"] <= 1.0 and 0.0 <= tiny["ned"] <= 1.0 and tiny["missing"] == 0


def test_clip_score_is_the_weighted_clipped_cosine(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from deepgen_core.eval.scoring import clip_score
    from deepgen_core.loading import load_tokenizer
    from deepgen_core.presets import TINY_TOKENIZER_DIR
    from deepgen_core.rewards import CLIPReward

    tokenizer = load_tokenizer(TINY_TOKENIZER_DIR)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)) for i in range(4)]
    prompts = ["a red cube", "a blue sphere", "two cats", "a sign"]
    cos = CLIPReward(tmp_path).similarities(images, prompts)
    expected = float((2.5 * cos.clamp(min=0)).mean())
    assert clip_score(images, prompts, tmp_path) == pytest.approx(expected, abs=1e-6)
    bench = get_benchmark("wise")
    samples = [Sample(str(i), p) for i, p in enumerate(prompts)]
    for sample, image in zip(samples, images):
        image.save(tmp_path / f"{sample.key}.png")
    scores = score_folder(bench, tmp_path, samples, 1, clip_path=tmp_path, chunk=3)
    assert scores["clip_score"] == pytest.approx(expected, abs=1e-6) and scores["images"] == 4 and "word_accuracy" not in scores


# --------------------------------------------------------------------------------------------------- bad input


def _cli(capsys, *argv) -> str:
    from deepgen_core.cli import main

    assert main(["eval", *map(str, argv)]) == 2
    return capsys.readouterr().err


def test_bad_inputs_fail_early_with_the_fix(capsys, tmp_path):
    out = tmp_path / "out"
    err = _cli(capsys, "genevl", "--data", tmp_path, "--out", out)
    assert "did you mean 'geneval'" in err
    err = _cli(capsys, "geneval", "--data", tmp_path / "missing.jsonl", "--out", out)
    assert "missing.jsonl" in err and "no such file" in err and "evaluation_metadata.jsonl" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a cat"}\n{"prompt": "a dog"\n')
    assert "line 2 is not valid JSON" in _cli(capsys, "geneval", "--data", bad, "--out", out)
    bad.write_text('{"tag": "x"}\n')
    assert "lacks the field(s) ['prompt']" in _cli(capsys, "geneval", "--data", bad, "--out", out)
    assert "the folder holds none of" in _cli(capsys, "rise", "--data", tmp_path, "--out", out)
    (tmp_path / "latin1.csv").write_bytes("index,prompt_en\n0,caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in _cli(capsys, "unigenbench", "--data", tmp_path / "latin1.csv", "--out", out)
    assert "is a file" in _cli(capsys, "geneval", "--data", geneval_data(tmp_path / "g"), "--out", tmp_path / "latin1.csv")
    data = imgedit_data(tmp_path / "imgedit")
    (data / "animal" / "000342021.jpg").unlink()
    err = _cli(capsys, "imgedit", "--data", data, "--out", out)
    assert "000342021.jpg" in err and "--image-root" in err
    assert not out.exists()  # nothing was written before the errors


def test_another_benchmarks_folder_or_other_settings_are_refused(capsys, pipe, tmp_path):
    out = tmp_path / "out"
    run_eval("dpg", dpg_data(tmp_path / "d"), out, pipe, TINY, progress=False)
    err = _cli(capsys, "geneval", "--data", geneval_data(tmp_path / "g"), "--out", out)
    assert "holds 'dpg' results" in err and "own --out" in err
    with pytest.raises(DeepGenInputError, match="other settings.*steps: 2 -> 3"):
        run_eval("dpg", tmp_path / "d" / "prompts", out, pipe, EvalSettings(height=64, width=64, steps=3, batch_size=2), progress=False)
    with pytest.raises(DeepGenInputError, match="images-per-prompt 4"):
        run_eval("wise", wise_data(tmp_path / "w"), tmp_path / "w-out", pipe, EvalSettings(images_per_prompt=4), progress=False)
    with pytest.raises(DeepGenInputError, match="multiple of 32"):
        run_eval("rise", rise_data(tmp_path / "r"), tmp_path / "r-out", pipe, EvalSettings(height=48, width=64), progress=False)


def test_cli_runs_and_scores_cvtg(capsys, tmp_path):
    pytest.importorskip("rapidocr")
    from deepgen_core.cli import main

    out = tmp_path / "out"
    argv = ["eval", "cvtg", "--data", str(cvtg_data(tmp_path)), "--out", str(out), "--height", "64", "--width", "64", "--steps", "2", "--score", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "score it with:" in printed and "generated 3" in printed
    scores = json.loads((out / "scores.json").read_text())
    assert scores["images"] == 3 and 0.0 <= scores["word_accuracy"] <= 1.0
    assert main(argv) == 0 and "found 3 done" in capsys.readouterr().out  # a rerun resumes: nothing left to do
