"""Every `deepgen ...` / `python -m deepgen_core ...` command in the README's and docs/'s ```bash blocks parses with
the real CLI parser, and the ones that run on the embedded DeepGen-Tiny in seconds (generation without `--model`,
`--help`, `--print-config`) run.

Commands are found in ```bash / ```sh / ```shell blocks only, line continuations joined, `&&`/`;`/`|` chains split,
leading `VAR=value` assignments dropped; `accelerate launch ... -m deepgen_core.cli ...`, `torchrun ... -m ...` and
`deepspeed ... --module ...` count as the `deepgen` command after the module name. A command whose comment says
it fails on purpose (`# error: ...`, `# refused`) must exit with the CLI's bad-input code, 2.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepgen_core import cli

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)  # list items may indent fences
SHELL_LANGS = {"bash", "sh", "shell"}
OPERATORS = {"&&", "||", ";", "|", "&"}
BARE_REDIRECT = re.compile(r"^\d*(>>?|<)$")  # `> log`: the operator, then its target
ATTACHED_REDIRECT = re.compile(r"^\d*>>?\S+$")  # `>log`, `2>/dev/null`
MODULES = {"deepgen_core", "deepgen_core.cli"}
LAUNCHERS = {"accelerate", "torchrun", "deepspeed"}
EXPECTS_ERROR = re.compile(r"#.*\b(error|fails?|refused|rejected)\b", re.I)
CHEAP_FLAGS = {"--help", "-h", "--help-config", "--print-config"}
GENERATE_STEPS = "4"  # the docs test runs, not judges, the pictures; quality has its own tests


@dataclass(frozen=True)
class DocCommand:
    page: str
    line: int
    argv: tuple[str, ...]  # after `deepgen`
    expects_error: bool = False  # its comment says it fails on purpose (`# error: ...`)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def _logical_lines(block: str, first_line: int):
    """(line number, text) per shell line, backslash continuations joined."""
    pending, start = "", first_line
    for offset, raw in enumerate(block.splitlines()):
        if not pending:
            start = first_line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        yield start, pending + raw
        pending = ""
    if pending:
        yield start, pending


def _segments(text: str) -> list[list[str]]:
    """The simple commands of a shell line, without redirections and a leading `$ ` prompt. Only `;&|` are
    operators, so placeholders such as `<folder>` stay words."""
    lexer = shlex.shlex(text.strip().removeprefix("$ "), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if token in OPERATORS:
            segments.append([])
        elif skip_next:
            skip_next = False
        elif BARE_REDIRECT.match(token):
            skip_next = True
        elif not ATTACHED_REDIRECT.match(token):
            segments[-1].append(token)
    return [s for s in segments if s]


def _deepgen_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after `deepgen` when this shell segment runs the deepgen CLI, else None."""
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "deepgen":
        return tokens[1:]
    if tokens[0] in LAUNCHERS or re.fullmatch(r"python3?(\.\d+)?", tokens[0]):
        for i, token in enumerate(tokens[:-1]):
            if token in ("-m", "--module") and tokens[i + 1] in MODULES:
                return tokens[i + 2:]
    return None


def doc_commands(pages: list[Path] = PAGES) -> list[DocCommand]:
    found = []
    for page in pages:
        text = page.read_text()
        for fence in FENCE.finditer(text):
            if fence.group(1).lower() not in SHELL_LANGS:
                continue
            first_line = text.count("\n", 0, fence.start(2)) + 1
            for line, logical in _logical_lines(fence.group(2), first_line):
                for segment in _segments(logical):
                    argv = _deepgen_argv(segment)
                    if argv is not None:
                        name = page.relative_to(REPO).as_posix() if page.is_relative_to(REPO) else page.name
                        found.append(DocCommand(name, line, tuple(argv), bool(EXPECTS_ERROR.search(logical))))
    return found


COMMANDS = doc_commands()


def _parse(argv) -> int:
    """Parse as the CLI does; 0 when it parses (or prints help), argparse's exit code otherwise."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        try:
            cli.build_parser().parse_args(list(argv))
        except SystemExit as exc:
            return 0 if exc.code in (0, None) else int(exc.code)
    return 0


def test_the_scanner_finds_the_readme_commands_and_their_forms(tmp_path):
    readme = [c for c in COMMANDS if c.page == "README.md"]
    assert any(c.argv[:1] == ("generate",) for c in readme), "README: no `deepgen generate` in a ```bash block"
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nDS_BUILD_OPS=0 deepgen train sft --config a.yaml \\\n    optim.lr=1  # note\n"
        "pip x && python -m deepgen_core generate --prompt 'a b' | tee log\n"
        "torchrun --nproc_per_node 8 -m deepgen_core.cli train sft\ndeepgen-tiny --x\n```\n"
        "```python\ndeepgen generate\n```\n"
        "- a list item:\n\n  ```bash\n  $ deepgen convert --model <folder> --out out 2>&1 > log.txt\n"
        "  deepgen generate --prompt x --steps 0   # error: steps must be positive\n  ```\n")
    commands = doc_commands([page])
    assert [c.argv for c in commands] == [
        ("train", "sft", "--config", "a.yaml", "optim.lr=1"), ("generate", "--prompt", "a b"), ("train", "sft"),
        ("convert", "--model", "<folder>", "--out", "out"), ("generate", "--prompt", "x", "--steps", "0")]
    assert [c.line for c in commands] == [2, 4, 5, 14, 15]
    assert [c.expects_error for c in commands] == [False] * 4 + [True]
    assert _exit_code(["generate", "--prompt", "x", "--dtype", "fp64"]) == 2  # how a documented failure is judged


@pytest.mark.parametrize("command", [c for c in COMMANDS if not c.expects_error], ids=str)
def test_doc_command_parses(command):
    assert _parse(command.argv) == 0, f"{command}: `deepgen {shlex.join(command.argv)}` does not parse with the real CLI"


def _runnable(command: DocCommand) -> bool:
    argv = command.argv
    if CHEAP_FLAGS & set(argv):
        return True
    return argv[:1] == ("generate",) and "--model" not in argv


def _prepared(argv: tuple[str, ...], workdir: Path, fast: bool = True) -> list[str] | None:
    """The command as the test runs it: outputs go to `workdir`, inputs come from there (None when an input was not
    written by an earlier command of the page), a few steps (`fast`), on the CPU."""
    argv = list(argv)
    if argv[:1] != ["generate"] or CHEAP_FLAGS & set(argv):
        return argv
    if not fast:
        return [*argv, "--device", "cpu"] if "--device" not in argv else argv
    for i, token in enumerate(argv[:-1]):
        if token in ("--out", "--image"):
            argv[i + 1] = str(workdir / Path(argv[i + 1]).name)
            if token == "--image" and not Path(argv[i + 1]).is_file():
                return None
    if "--out" not in argv:
        argv += ["--out", str(workdir / "deepgen.png")]
    if "--steps" in argv:
        argv[argv.index("--steps") + 1] = GENERATE_STEPS
    else:
        argv += ["--steps", GENERATE_STEPS]
    return [*argv, "--device", "cpu"]


@pytest.mark.parametrize("page", sorted({c.page for c in COMMANDS if _runnable(c) and not c.expects_error}))
def test_doc_commands_run_on_deepgen_tiny(page, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes and paths in the docs are relative to the checkout
    ran = 0
    for command in (c for c in COMMANDS if c.page == page and _runnable(c) and not c.expects_error):
        argv = _prepared(command.argv, tmp_path)
        if argv is None:  # edits a picture of the user's: parsed above, not run
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # --help
                code = exc.code or 0
        assert code == 0, f"{command}: `deepgen {shlex.join(argv)}` exited {code}"
        if argv[0] == "generate" and "--out" in argv:
            out = Path(argv[argv.index("--out") + 1])
            assert out.is_file() or any(out.parent.glob(f"{out.stem}_*.png")), f"{command}: wrote no {out.name}"
        ran += 1
    assert ran, f"{page}: none of its runnable commands could run"


def _exit_code(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return cli.main(argv)
        except SystemExit as exc:  # argparse
            return 0 if exc.code is None else int(exc.code)


def test_documented_failures_fail_as_bad_input(tmp_path, monkeypatch):
    # Commands a page shows failing on purpose (`# error: ...`) exit with the CLI's bad-input code, whether argparse or
    # the library refuses them; none of them may succeed or crash.
    monkeypatch.chdir(tmp_path)
    for command in (c for c in COMMANDS if c.expects_error):
        argv = _prepared(command.argv, tmp_path, fast=False) or list(command.argv)
        code = _exit_code(argv)
        assert code == 2, f"{command}: `deepgen {shlex.join(argv)}` is documented to fail but exited {code}"


def test_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    unlinked = [page.name for page in sorted((REPO / "docs").glob("*.md")) if f"](docs/{page.name}" not in readme]
    assert not unlinked, f"README.md links no docs/ page named {unlinked}"


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300, "README.md: put the depth in docs/"


def test_readme_python_api_runs_on_deepgen_tiny():
    # The README's Python block, pointed at the embedded model on the CPU. Its fast-path line is left out: it needs
    # CUDA, and tests/test_fast_path.py and tests/test_inference_graphs.py cover it.
    blocks = [m.group(2) for m in FENCE.finditer((REPO / "README.md").read_text()) if m.group(1) == "python"]
    assert blocks, "README.md: no ```python block"
    code = blocks[0]
    for real, tiny in (('"deepgen-1.0"', "str(deepgen_tiny_dir())"), ('device="cuda"', 'device="cpu"'),
                       ("torch.bfloat16", "torch.float32"), ("num_inference_steps=50", "num_inference_steps=4")):
        assert real in code, f"README.md's Python block changed: update this test's substitution of {real}"
        code = code.replace(real, tiny)
    code = "\n".join(line for line in code.splitlines() if "enable_fast_path" not in line)
    scope: dict = {}
    exec(compile("from deepgen_core.presets import deepgen_tiny_dir\n" + code, "README.md", "exec"), scope)
    assert scope["image"].size == scope["edited"].size == (128, 128)
    assert hasattr(scope["pipe"], "enable_fast_path") and hasattr(scope["pipe"], "set_offload")


# template file names are titles with spaces (example_workflows/); other paths have none
REPO_PATH = re.compile(r"`((?:benchmarks|deepgen_core|locales|nodes|tests|train|web|workflows)/[\w./-]*\w|example_workflows/[\w./ -]*\w)`")


def test_paths_the_docs_name_exist():
    # A moved script or recipe must take its mentions along: every repository path written in backticks in the
    # README, docs/ and the results READMEs exists (placeholders such as `<run>` are not paths and are not matched).
    pages = [*PAGES, *sorted((REPO / "benchmarks" / "results").glob("*/README.md"))]
    missing = [f"{page.relative_to(REPO)}: {path}" for page in pages for path in REPO_PATH.findall(page.read_text())
               if not (REPO / path).exists()]
    assert not missing, missing
