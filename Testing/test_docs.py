"""The documentation cannot drift from the code.

- every ``lkm-segment`` option the pages name exists for that command, and every option of
  every command is documented in docs/command-line.md under its command's heading (read from
  the real argparse parser, in-process);
- every relative link and picture in README.md and docs/ resolves (anchors included), and every
  repository path the pages name in code (``lkm_core/inputs/images.py``) exists;
- every message docs/troubleshooting.md quotes still exists in the engine's or the module's code;
- the examples marked ``<!-- docs-test: run -->`` run, from the pages' own text.

Each failure names the page, the line and exactly what is missing.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "LKMSegment" / "README-module.md"]
COMMAND_LINE_PAGE = DOCS / "command-line.md"
TROUBLESHOOTING_PAGE = DOCS / "troubleshooting.md"
MESSAGE_SOURCES = [REPO / "lkm_core", REPO / "LKMSegment"]
HELP = {"-h", "--help"}

# Options the pages show for other programs (nnU-Net, SLURM, Slicer, pip, the benchmarks): an
# inline `--option` that is neither one of these nor an lkm-segment option is a drifted name.
FOREIGN_OPTIONS = {
    "-d": "nnUNetv2_*", "-c": "nnUNetv2_*", "-p": "nnUNetv2_train", "-tr": "nnUNetv2_train",
    "-pl": "nnUNetv2_plan_and_preprocess", "--c": "nnUNetv2_train", "-device": "nnUNetv2_train",
    "-num_gpus": "nnUNetv2_train", "--no_pp": "nnUNetv2_plan_and_preprocess",
    "--verify_dataset_integrity": "nnUNetv2_plan_and_preprocess",
    "-plans_name": "nnUNetv2_preprocess", "-pretrained_weights": "nnUNetv2_train",
    "--array": "sbatch", "--additional-module-paths": "Slicer",
    "--baseline": "Testing/benchmarks/predict.py", "--epochs": "lkm_core.training.short_run",
    "--iterations": "lkm_core.training.short_run", "-m": "pytest",
}


# -- the parser -----------------------------------------------------------------------------------
def _commands() -> dict[str, set[str]]:
    """{"predict": {"--quick", ...}, "bundle init": {...}, "": {"--version"}}, from the parser."""
    from lkm_core.cli.root import _parser

    out: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        out[" ".join(path)] = {o for a in parser._actions for o in a.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))

    walk(_parser(), ())
    return out


COMMANDS = _commands()
ALL_OPTIONS = set().union(*COMMANDS.values())


# -- reading the pages ----------------------------------------------------------------------------
@dataclass
class Code:
    page: Path
    line: int
    text: str
    block: bool          # a fenced block's line (True) or an inline code span (False)

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _split(page: Path):
    """(prose lines with their numbers, code blocks as (first line, info string, lines))."""
    prose, blocks, block = [], [], None
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            if block is None:
                block = (n + 1, line.strip()[3:].strip(), [])
            else:
                blocks.append(block)
                block = None
            continue
        (block[2].append(line) if block is not None else prose.append((n, line)))
    return prose, blocks


def code_of(page: Path) -> list[Code]:
    prose, blocks = _split(page)
    out = [Code(page, n, span, False) for n, line in prose for span in re.findall(r"`([^`]+)`", line)]
    for first, _, lines in blocks:
        # a statement continues on the next line after a backslash, or on indented lines (the
        # synopsis style: `lkm-segment predict ...` then `    [--quick] [--tta]`)
        statements: list[list] = []
        for k, line in enumerate(lines):
            continued = statements and (statements[-1][1].rstrip().endswith("\\")
                                        or (line[:1].isspace() and line.strip()))
            if continued:
                statements[-1][1] = statements[-1][1].rstrip().rstrip("\\") + " " + line.strip()
            else:
                statements.append([first + k, line])
        out += [Code(page, n, text, True) for n, text in statements]
    return out


INVOCATION = re.compile(r"(?:^|[\s;&|($`])(?:lkm-segment|python -m lkm_core)(?=\s|$)(.*)")


def _tokens(text: str) -> list[str]:
    text = text.split(" #")[0]
    text = re.split(r"\s(?:&&|\|\||;|\||>|2>)\s", text)[0]
    text = text.replace("[", " ").replace("]", " ")
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def invocations(code: Code):
    """(command, [options]) for every lkm-segment command line in a piece of code."""
    for match in INVOCATION.finditer(code.text):
        tokens = _tokens(match.group(1))
        path: list[str] = []
        while tokens and " ".join([*path, tokens[0]]) in COMMANDS:
            path.append(tokens.pop(0))
        if not path and tokens and re.fullmatch(r"[a-z][a-z-]*", tokens[0]):
            yield tokens[0], None       # names a command that does not exist
            continue
        options = [t.split("=")[0] for t in tokens if re.match(r"--?[A-Za-z]", t)]
        yield " ".join(path), [o for part in options for o in part.split("/")]


def test_every_lkm_segment_command_line_in_the_docs_uses_existing_commands_and_options():
    wrong = []
    for page in PAGES:
        for code in code_of(page):
            for command, options in invocations(code):
                if options is None:
                    wrong.append(f"{code.where()}: `lkm-segment {command}` is not a command "
                                 f"(commands: {', '.join(sorted(c for c in COMMANDS if c))})")
                    continue
                for option in options:
                    if option not in COMMANDS[command]:
                        wrong.append(f"{code.where()}: `lkm-segment {command}` has no option {option}")
    assert not wrong, "the docs name options or commands the CLI lacks:\n" + "\n".join(wrong)


def test_every_option_the_docs_name_exists():
    """An inline `--option` on any page is an lkm-segment option or a listed foreign one."""
    wrong = []
    for page in PAGES:
        for code in code_of(page):
            if code.block or not code.text.startswith("-"):
                continue
            first = (_tokens(code.text) or [""])[0].split("=")[0]
            for option in first.split("/"):
                if option and option not in ALL_OPTIONS and option not in FOREIGN_OPTIONS:
                    wrong.append(f"{code.where()}: {option} is no option of any lkm-segment command")
    assert not wrong, "\n".join(wrong)


def command_sections() -> dict[str, tuple[int, set[str]]]:
    """docs/command-line.md: '### `lkm-segment CMD`' -> (line, the options its section names)."""
    sections: dict[str, tuple[int, set[str]]] = {}
    current = None
    prose, _ = _split(COMMAND_LINE_PAGE)
    for n, line in prose:
        heading = re.match(r"#+ ", line)
        if heading:
            m = re.fullmatch(r"### `lkm-segment ([a-z -]+)`", line.strip())
            current = m.group(1) if m else None
            if current is not None:
                sections[current] = (n, set())
            continue
        if current is not None:
            for span in re.findall(r"`([^`]+)`", line):
                sections[current][1].update(
                    o.split("=")[0] for o in re.split(r"[\s/,]+", span) if re.match(r"--?[A-Za-z]", o))
    return sections


def test_every_command_and_option_of_the_cli_is_documented_under_its_command():
    sections = command_sections()
    page = COMMAND_LINE_PAGE.relative_to(REPO)
    problems = []
    for command, options in sorted(COMMANDS.items()):
        if not command:  # the top level: --version
            text = COMMAND_LINE_PAGE.read_text(encoding="utf-8")
            problems += [f"{page}: `lkm-segment {o}` is not documented"
                         for o in sorted(options - HELP) if f"`lkm-segment {o}`" not in text]
            continue
        is_group = any(c.startswith(command + " ") for c in COMMANDS)
        if is_group:
            continue  # `lkm-segment bundle` only holds subcommands, documented one by one
        if command not in sections:
            problems.append(f"{page}: no section '### `lkm-segment {command}`'")
            continue
        line, named = sections[command]
        problems += [f"{page}:{line}: `lkm-segment {command}` option {o} is not documented"
                     for o in sorted(options - HELP - named)]
        problems += [f"{page}:{line}: `lkm-segment {command}` has no option {o} (documented there)"
                     for o in sorted(named - options)]
    problems += [f"{page}:{sections[c][0]}: section for `lkm-segment {c}`, which is no command"
                 for c in sorted(set(sections) - set(COMMANDS))]
    assert not problems, "\n".join(problems)


# -- links, pictures and paths -------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def github_anchor(heading: str) -> str:
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = _split(page)
    return {github_anchor(line.lstrip("#")) for _, line in prose if re.match(r"#{1,6} ", line)}


def test_every_relative_link_and_picture_resolves():
    broken = []
    for page in PAGES:
        prose, _ = _split(page)
        for n, line in prose:
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"[a-z]+:", target):
                    continue  # http(s), mailto: not ours to check offline
                path, _, anchor = target.partition("#")
                resolved = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(REPO)}:{n}"
                if not resolved.exists():
                    broken.append(f"{where}: {target} -> {path} does not exist")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    broken.append(f"{where}: {target} -> no heading #{anchor} in {path or page.name}")
    assert not broken, "broken links or pictures:\n" + "\n".join(broken)


REPO_PATH = re.compile(r"(?:lkm_core|LKMSegment|Testing|Resources|docs)/[\w./*-]*")


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for code in code_of(page):
            if code.block:
                continue
            for path in REPO_PATH.findall(code.text):
                if not any(REPO.glob(path.rstrip("/"))):
                    missing.append(f"{code.where()}: {path} is not in the repository")
    assert not missing, "\n".join(missing)


def test_readme_is_a_front_page_under_10_kb_that_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    size = len(readme.encode("utf-8"))
    assert size < 10 * 1024, f"README.md is {size} bytes; keep the front page under 10 KB"
    unlinked = [p.name for p in DOCS.glob("*.md")
                if p.name != "README.md" and f"docs/{p.name}" not in readme]
    assert not unlinked, f"README.md does not link {', '.join(unlinked)}"


# -- troubleshooting messages --------------------------------------------------------------------
PLACEHOLDER = "\0"


def _module_constants(trees) -> dict[str, object]:
    """Module-level NAME = "text"/number assignments (f-strings often interpolate them)."""
    seen: dict[str, set] = {}
    for tree in trees:
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, (str, int, float))):
                seen.setdefault(node.targets[0].id, set()).add(node.value.value)
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}


def _template(node, constants) -> str | None:
    """A string expression as text with PLACEHOLDER where a value is filled in at run time."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v.value, ast.Name) and v.value.id in constants and v.format_spec is None:
                parts.append(str(constants[v.value.id]))
            else:
                parts.append(PLACEHOLDER)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left, constants), _template(node.right, constants)
        if left is None and right is None:
            return None
        return (left if left is not None else PLACEHOLDER) + (right if right is not None else PLACEHOLDER)
    return None


def code_strings() -> list[str]:
    files = [f for root in MESSAGE_SOURCES for f in root.rglob("*.py")]
    trees = [ast.parse(f.read_text(encoding="utf-8")) for f in files]
    constants = _module_constants(trees)
    out = []
    for tree in trees:
        for node in ast.walk(tree):
            text = _template(node, constants)
            if text:
                out.append(text)
    return out


def documented_messages() -> list[tuple[int, str]]:
    prose, _ = _split(TROUBLESHOOTING_PAGE)
    return [(n, m) for n, line in prose for m in re.findall(r"“([^”]+)”", line)]


def occurs(message: str, strings: list[str]) -> bool:
    """Every fixed piece of the message (between the '…' placeholders), in order, in one string."""
    pieces = [p.strip() for p in message.split("…") if p.strip()]
    for text in strings:
        at = 0
        for piece in pieces:
            at = text.find(piece, at)
            if at < 0:
                break
            at += len(piece)
        else:
            return True
    return False


def test_every_documented_message_still_exists_in_the_code():
    messages = documented_messages()
    assert len(messages) >= 40, "docs/troubleshooting.md quotes too few messages to be the list"
    strings = code_strings()
    gone = [f"docs/troubleshooting.md:{n}: “{m}”" for n, m in messages if not occurs(m, strings)]
    assert not gone, ("these documented messages no longer exist in lkm_core/ or LKMSegment/ "
                      "(reword the page or the code):\n" + "\n".join(gone))


def test_message_check_reads_f_strings_concatenations_and_constants():
    source = ('STEM = "batch_report"\n'
              'def f(path, names):\n'
              '    raise ValueError(f"No {STEM}*.csv under {path}.")\n'
              '    raise ValueError("None of (" + ", ".join(names) + ") is known")\n')
    tree = ast.parse(source)
    constants = _module_constants([tree])
    strings = [t for node in ast.walk(tree) if (t := _template(node, constants))]
    assert occurs("No batch_report*.csv under …", strings)
    assert occurs("None of (…) is known", strings)
    assert not occurs("No batch_report*.csv in …", strings)
    assert not occurs("is known … None of", strings)  # the pieces must come in order


# -- runnable examples ----------------------------------------------------------------------------
MARK = re.compile(r"<!-- docs-test: run( slow)? -->")


def runnable_blocks():
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            mark = MARK.fullmatch(line.strip())
            if not mark:
                continue
            assert lines[n + 1].startswith("```"), f"{page}:{n + 1}: the mark must precede a code block"
            end = next(k for k in range(n + 2, len(lines)) if lines[k].startswith("```"))
            marks = [pytest.mark.slow] if mark.group(1) else []
            found.append(pytest.param(page, n + 3, "\n".join(lines[n + 2:end]), marks=marks,
                                      id=f"{page.relative_to(REPO)}:{n + 3}"))
    return found


RUNNABLE = runnable_blocks()


def test_the_runnable_examples_cover_predict_bundle_init_info_and_review():
    text = "\n".join(p.values[2] for p in RUNNABLE if not p.marks)
    for command in ("lkm-segment predict", "lkm-segment bundle init", "lkm-segment info",
                    "lkm-segment review"):
        assert command in text, f"no quick runnable example runs `{command}`"


@pytest.mark.parametrize("page,line,script", RUNNABLE)
def test_runnable_example(page, line, script, tmp_path):
    """The block runs as written, in an empty folder, with this checkout's engine."""
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, target in (("lkm-segment", f'"{sys.executable}" -m lkm_core'),
                         ("python", f'"{sys.executable}"')):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n', encoding="utf-8")
        shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (f"{page.relative_to(REPO)}:{line}: the example failed "
                                  f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
