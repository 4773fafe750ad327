"""The manual's commands, imports and links are checked against the code.

Sources: ``README.md``, every ``docs/**/*.md`` and ``benchmarks/RESULTS.md``.

- Every ``python ...`` command line in a fenced shell block names a script or module that
  exists, passes only long options that the script's ``--help`` lists, and names repository
  files (``tests/...``, ``benchmarks/...``, ``opt/...``) that exist.
- The cheap commands run, as subprocesses from the repository root, and must exit with
  status 0: every ``--help``, every ``train.py ... --summary`` and the ``python -m
  loader.stats`` commands over ``../shared/data`` (these skip, with the reason, when the data
  folder is absent).
- Every ``bash X`` command names a file that exists.
- Every ``from X import a, b`` / ``import X`` of the project in a fenced ``python`` block
  imports, and the names exist.
- Every relative link resolves to a file, and an ``#anchor`` to a heading of that file.
- ``README.md`` has at most 300 lines and its first two fenced blocks are CI's commands
  (``.ci/run`` runs them).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, shared_data_root

README = REPO_ROOT / "README.md"
DOC_FILES = [README, *sorted((REPO_ROOT / "docs").rglob("*.md")), REPO_ROOT / "benchmarks" / "RESULTS.md"]
README_MAX_LINES = 300
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
REPO_PATH_PREFIXES = ("tests/", "benchmarks/", "opt/", "docs/")
SHARED_DATA = "../shared/data"
COMMAND_TIMEOUT_S = 300
FENCE = re.compile(r"^```(\S*)\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
HELP_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
SCRIPTS = ["train.py", "infer.py", "process.py", "extract_patches.py", "demo.py"]


@dataclass(frozen=True)
class Block:
    """A fenced block: the file it is in, its first line number (1-based), language and text."""

    path: Path
    line: int
    lang: str
    text: str


@dataclass(frozen=True)
class Command:
    """One ``python ...`` command: its argv after ``python`` and where it was printed."""

    args: tuple[str, ...]
    where: str

    @property
    def text(self) -> str:
        return "python " + shlex.join(self.args)


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line.strip())
        if lang is None and match:
            lang, start, body = match.group(1).lower(), number + 1, []
        elif lang is not None and line.strip() == "```":
            blocks.append(Block(path, start, lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced blocks (fenced lines become empty)."""
    out, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            inside = not inside
            out.append("")
        else:
            out.append("" if inside else line)
    return out


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
        else:
            lines.append(pending + raw)
            pending = ""
    if pending:
        lines.append(pending)
    return lines


def shell_segments(line: str) -> list[list[str]]:
    """A shell line split into simple commands at ``&&``, ``;``, ``|``, ...; comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        tokens = line.split("#", 1)[0].split()
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return [segment for segment in segments if segment]


def strip_env(segment: list[str]) -> list[str]:
    """Drop leading ``NAME=value`` assignments of a simple command."""
    index = 0
    while index < len(segment) and ENV_ASSIGNMENT.match(segment[index]):
        index += 1
    return segment[index:]


def documented_segments() -> list[tuple[list[str], str]]:
    """Every simple shell command in the fenced shell blocks, with ``file:line``."""
    found = []
    for path in DOC_FILES:
        for block in fenced_blocks(path):
            if block.lang not in SHELL_LANGS:
                continue
            for offset, line in enumerate(logical_lines(block.text)):
                for segment in shell_segments(line):
                    words = strip_env(segment)
                    if words:
                        found.append((words, f"{path.relative_to(REPO_ROOT)}:{block.line + offset}"))
    return found


def unbracket(word: str) -> str:
    """A usage word without the brackets that mark it optional: ``[--seconds]`` -> ``--seconds``,
    ``N]`` -> ``N``; brackets inside a value stay (``units=[1,1,1,1]``)."""
    word = word[1:] if word.startswith("[") else word
    while word.endswith("]") and word.count("]") > word.count("["):
        word = word[:-1]
    return word


def command_args(words: list[str]) -> tuple[str, ...]:
    """The arguments after ``python``, usage brackets and ``...`` dropped."""
    return tuple(arg for arg in map(unbracket, words[1:]) if arg and arg != "...")


def documented_commands() -> list[Command]:
    """Every distinct ``python ...`` command of the manual (first place it is printed)."""
    seen: dict[tuple[str, ...], Command] = {}
    for words, where in documented_segments():
        if words[0] == "python" and len(words) > 1:
            args = command_args(words)
            seen.setdefault(args, Command(args, where))
    return list(seen.values())


def entry_point(command: Command) -> tuple[str, ...]:
    """The argv prefix that names what runs: ``('train.py',)`` or ``('-m', 'loader.stats')``."""
    return command.args[:2] if command.args[0] == "-m" else command.args[:1]


def entry_exists(entry: tuple[str, ...]) -> bool:
    """Whether a script of the repository, or a module (ours or installed), exists."""
    if entry[0] != "-m":
        return (REPO_ROOT / entry[0]).is_file()
    module = entry[1]
    local = REPO_ROOT.joinpath(*module.split("."))
    if local.with_suffix(".py").is_file() or (local / "__main__.py").is_file():
        return True
    if (REPO_ROOT / module.split(".")[0]).exists():
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package does not exist
        return False


def child_env() -> dict[str, str]:
    """The environment of a documented command: one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def run_python(args: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repository root under a timeout."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)


def needs_shared_data(command: Command) -> bool:
    """Whether the command reads the shared datasets (an argument under ``../shared/data``)."""
    return any(arg.startswith(SHARED_DATA) for arg in command.args)


def is_cheap(command: Command) -> bool:
    """The commands this test runs: ``--help``, ``train.py ... --summary``, ``loader.stats`` on the shared data."""
    if "--help" in command.args:
        return True
    if command.args[0] == "train.py" and "--summary" in command.args:
        return True
    return entry_point(command) == ("-m", "loader.stats") and needs_shared_data(command)


def with_data_root(command: Command, root: Path) -> tuple[str, ...]:
    """The command's arguments with ``../shared/data`` replaced by the resolved data root."""
    return tuple(str(root) + arg[len(SHARED_DATA):] if arg.startswith(SHARED_DATA) else arg for arg in command.args)


COMMANDS = documented_commands()
CHEAP = [command for command in COMMANDS if is_cheap(command)]
ENTRIES = sorted({entry_point(command) for command in COMMANDS})


@functools.cache
def help_results() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """``--help`` of every documented entry point that exists, run two at a time."""
    entries = [entry for entry in ENTRIES if entry_exists(entry)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(entries, pool.map(lambda entry: run_python((*entry, "--help")), entries)))


@functools.cache
def cheap_results() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Exit status and output of every cheap command that is not a ``--help`` (two at a time)."""
    root = shared_data_root()
    todo = [command for command in CHEAP if "--help" not in command.args
            and entry_exists(entry_point(command)) and (root is not None or not needs_shared_data(command))]
    runs = [with_data_root(command, root) if root is not None else command.args for command in todo]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((command.args for command in todo), pool.map(run_python, runs)))


def documented_options(command: Command) -> list[str]:
    """The long options a command passes (``--set``, ``--tta``, ``--durations`` from ``--durations=15``)."""
    return sorted({arg.split("=", 1)[0] for arg in command.args if arg.startswith("--") and len(arg) > 2})


def repo_paths(command: Command) -> list[str]:
    """Repository files a command names (``tests/...``, ``benchmarks/...``, ``opt/...``), without placeholders."""
    paths = []
    for arg in command.args:
        value = arg.split("=", 1)[-1] if arg.startswith("--") else arg
        value = value.split("::", 1)[0].split(":", 1)[0]
        if value.startswith(REPO_PATH_PREFIXES) and "$" not in value and not value.isupper():
            paths.append(value)
    return paths


def test_the_manual_prints_commands():
    assert len(COMMANDS) >= 20, [command.text for command in COMMANDS]
    assert any("--help" in command.args for command in CHEAP)
    assert any("--summary" in command.args for command in CHEAP)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.text[:80])
def test_documented_command_names_what_exists(command: Command):
    """The script or module exists, it accepts every long option, and named repository files exist."""
    entry = entry_point(command)
    assert entry_exists(entry), f"{command.where}: {' '.join(entry)} does not exist ({command.text})"
    missing_paths = [path for path in repo_paths(command) if not (REPO_ROOT / path).exists()]
    assert not missing_paths, f"{command.where}: {missing_paths} do not exist ({command.text})"
    helped = help_results()[entry]
    assert helped.returncode == 0, f"{' '.join(entry)} --help exited {helped.returncode}: {helped.stderr[-1500:]}"
    accepted = set(HELP_OPTION.findall(helped.stdout))
    unknown = [option for option in documented_options(command) if option not in accepted]
    assert not unknown, f"{command.where}: {command.text}: {unknown} not in `{' '.join(entry)} --help`"


@pytest.mark.parametrize("command", CHEAP, ids=lambda command: command.text[:80])
def test_cheap_command_runs(command: Command):
    """``--help``, ``--summary`` and dataset statistics exit with status 0."""
    if needs_shared_data(command) and shared_data_root() is None:
        pytest.skip(f"{command.text} reads {SHARED_DATA}: set HISTOSEG_DATA or place ../shared/data beside the checkout")
    entry = entry_point(command)
    assert entry_exists(entry), f"{command.where}: {' '.join(entry)} does not exist"
    done = help_results()[entry] if "--help" in command.args else cheap_results()[command.args]
    assert done.returncode == 0, f"{command.where}: {command.text} exited {done.returncode}:\n{done.stderr[-2000:]}"
    if "--summary" in command.args:
        assert re.search(r"^params: \d+$", done.stdout, flags=re.M), done.stdout[-500:]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_option_is_documented(script: str):
    """Each option a script's ``--help`` lists appears, as ``--option``, in the manual."""
    helped = help_results().get((script,))
    assert helped is not None and helped.returncode == 0, f"{script} --help did not run"
    manual = "\n".join(path.read_text(encoding="utf-8") for path in DOC_FILES)
    undocumented = sorted(option for option in set(HELP_OPTION.findall(helped.stdout)) - {"--help"}
                          if not re.search(re.escape(option) + r"(?![\w-])", manual))
    assert not undocumented, f"{script}: {undocumented} are not in README.md or docs/"


def test_documented_summaries_print_the_documented_counts():
    """A ``--summary`` line whose comment names ``params: N`` prints exactly that count."""
    for path in DOC_FILES:
        for block in fenced_blocks(path):
            for line in logical_lines(block.text):
                stated = re.search(r"#.*params: (\d+)", line)
                if not stated or "--summary" not in line:
                    continue
                done = cheap_results().get(command_args(strip_env(shell_segments(line)[0])))
                assert done is not None, f"{path.name}: {line}: the command did not run (its script is missing)"
                assert f"params: {stated.group(1)}" in done.stdout, f"{path.name}: {line}\n{done.stdout[-300:]}"


@pytest.mark.parametrize("words, where", [(words, where) for words, where in documented_segments()
                                          if words[0] == "bash"], ids=lambda value: str(value)[:60])
def test_documented_bash_scripts_exist(words: list[str], where: str):
    assert len(words) > 1 and (REPO_ROOT / words[1]).is_file(), f"{where}: {' '.join(words)}"


def python_imports() -> list[tuple[str, tuple[str, ...], str]]:
    """``(module, names, where)`` of every import in the manual's Python examples."""
    found = []
    for path in DOC_FILES:
        for block in fenced_blocks(path):
            if block.lang != "python":
                continue
            where = f"{path.relative_to(REPO_ROOT)}:{block.line}"
            try:
                tree = ast.parse(textwrap.dedent(block.text))
            except SyntaxError as err:
                found.append(("", (), f"{where}: the example is not valid Python ({err})"))
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.append((node.module, tuple(alias.name for alias in node.names), where))
                elif isinstance(node, ast.Import):
                    found += [(alias.name, (), where) for alias in node.names]
    return found


@pytest.mark.parametrize("module, names, where", python_imports(), ids=lambda value: str(value)[:60])
def test_python_examples_import(module: str, names: tuple[str, ...], where: str):
    assert module, where
    imported = importlib.import_module(module)
    missing = [name for name in names if not hasattr(imported, name)
               and importlib.util.find_spec(f"{module}.{name}") is None]
    assert not missing, f"{where}: `from {module} import ...`: {missing} not found"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, -N for repeats)."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchors.add(slug if slug not in counts else f"{slug}-{counts[slug]}")
        counts[slug] = counts.get(slug, 0) + 1
    return anchors


def relative_links() -> list[tuple[Path, str]]:
    """``(file, target)`` of every relative link outside fenced blocks."""
    links = []
    for path in DOC_FILES:
        for line in prose_lines(path):
            links += [(path, target) for target in LINK.findall(line)
                      if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]
    return links


@pytest.mark.parametrize("source, target", relative_links(), ids=lambda value: str(value)[-50:])
def test_relative_link_resolves(source: Path, target: str):
    file_part, _, anchor = target.partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    where = f"{source.relative_to(REPO_ROOT)}: ({target})"
    assert resolved.exists(), f"{where}: {resolved} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in heading_anchors(resolved), f"{where}: no heading '#{anchor}' in {resolved.name}"


def test_readme_is_short_and_starts_with_the_ci_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    install, tests = (block.text.strip() for block in fenced_blocks(README)[:2])
    assert install.startswith("python3 -m venv .venv") and "pip install -r requirements.txt" in install
    assert install.endswith("python demo.py")
    assert "python -m pytest" in tests
    first_screen = "\n".join(lines[:40])
    assert install in first_screen and tests in first_screen


def test_readme_links_the_manual_and_results():
    text = README.read_text(encoding="utf-8")
    targets = {target.partition("#")[0] for _, target in relative_links() if _ == README}
    for page in ["docs/index.md", "docs/configuration.md", "docs/data.md", "docs/training.md", "docs/inference.md",
                 "docs/metrics.md", "docs/development.md", "benchmarks/RESULTS.md"]:
        assert page in targets, f"README.md does not link {page}"
    for family in ["hovernet", "fullnet", "unet", "chrnet", "histosegnet", "h2gnet"]:
        assert f"`{family}`" in text, f"README.md's family table lacks {family}"
