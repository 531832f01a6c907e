"""The documentation agrees with the command line, and its links lead somewhere.

Convention for docs/cli.md (the parser below relies on it):

- each command has a level-2 heading of exactly the form  ## `resnet-classify COMMAND`
  and its section runs to the next level-2 heading (### subsections belong to it);
- in a command's section, every table whose first header cell is "option" lists that command's options,
  one option per row, the first backticked `--name` in the row's first cell being the option's long name,
  e.g. | `--topk`, `-k` | meaning | default |. Other tables (such as the inputs table) are ignored.

An option added to the CLI (or one removed from it) fails test_cli_md_lists_every_option until docs/cli.md
has (or loses) its row; a new command fails until it has its section.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from resnet_cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"
README_MAX_LINES = 150

COMMAND_HEADING = re.compile(r"^## `resnet-classify (?P<command>[\w-]+)`\s*$")
LONG_OPTION = re.compile(r"`(--[A-Za-z0-9][\w-]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


# Duck-typed on purpose: typer may bring its own copy of click, whose classes are not `click.Group`/`click.Option`.
def _click_group():
    group = typer.main.get_command(cli.app)
    assert hasattr(group, "commands"), f"the app is a single command, not a group: {group!r}"
    return group


def _cli_options(command) -> set[str]:
    """The long name of each option of the command (`--resume`, not its `--no-resume` secondary), but --help."""
    names = set()
    for param in command.params:
        if getattr(param, "param_type_name", None) != "option":
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        if longs and longs[0] != "--help":
            names.add(longs[0])
    return names


def _outside_code_fences(text: str):
    """The lines of a markdown text that are not inside ``` or ~~~ fenced blocks."""
    fence = None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and (stripped.startswith("```") or stripped.startswith("~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        yield line


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _documented_options(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """{command: [long option of each row of its option tables]}, and the problems found while parsing."""
    sections: dict[str, list[str]] = {}
    problems: list[str] = []
    command = None
    header_seen = False  # inside a table, past its header row
    options_table = False
    for line in _outside_code_fences(text):
        if line.startswith("## "):
            match = COMMAND_HEADING.match(line)
            command = match.group("command") if match else None
            if command is not None:
                if command in sections:
                    problems.append(f"two sections for {command!r}")
                sections.setdefault(command, [])
            header_seen = False
            continue
        if not line.lstrip().startswith("|"):
            header_seen = False
            continue
        if command is None:
            continue
        cells = _cells(line)
        if not header_seen:
            header_seen = True
            options_table = cells[0].lower() == "option"
            continue
        if not options_table or re.fullmatch(r":?-+:?", cells[0]):
            continue  # not an option table, or its |---| separator row
        match = LONG_OPTION.search(cells[0])
        if match is None:
            problems.append(f"{command}: option-table row with no `--long-name` in its first cell: {line.strip()!r}")
            continue
        sections[command].append(match.group(1))
    return sections, problems


def test_cli_md_has_one_section_per_command():
    sections, problems = _documented_options(CLI_MD.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)
    commands = set(_click_group().commands)
    assert set(sections) == commands, (
        f"docs/cli.md sections (## `resnet-classify COMMAND`) do not match the CLI's commands: "
        f"missing in docs: {sorted(commands - set(sections))}; not in the CLI: {sorted(set(sections) - commands)}"
    )


@pytest.mark.parametrize("name", sorted(_click_group().commands))
def test_cli_md_lists_every_option(name):
    sections, problems = _documented_options(CLI_MD.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)
    assert name in sections, f"docs/cli.md has no section headed ## `resnet-classify {name}`"
    rows = sections[name]
    duplicates = sorted({o for o in rows if rows.count(o) > 1})
    assert not duplicates, f"docs/cli.md, {name}: options listed twice: {duplicates}"

    in_cli = _cli_options(_click_group().commands[name])
    in_docs = set(rows)
    assert in_docs == in_cli, (
        f"docs/cli.md and `resnet-classify {name} --help` disagree.\n"
        f"  in the CLI, missing from docs/cli.md: {sorted(in_cli - in_docs)}\n"
        f"  in docs/cli.md, not in the CLI:       {sorted(in_docs - in_cli)}"
    )


def test_parser_reads_the_convention():
    """The parser itself: sections, option tables only, first backticked long name, fences skipped."""
    text = "\n".join([
        "## `resnet-classify classify`",
        "| input | meaning |",
        "|---|---|",
        "| `photos/` | `--recursive` descends |",
        "",
        "| option | meaning | default |",
        "|---|---|---|",
        "| `--topk`, `-k` | how many, see `--format` | `5` |",
        "| `--null`, `-0` | NUL | off |",
        "```",
        "## `resnet-classify fenced`",
        "```",
        "## `resnet-classify` global options",
        "| option | meaning | default |",
        "|---|---|---|",
        "| `--version` | version | |",
        "## `resnet-classify arch`",
        "| option | meaning | default |",
        "|:---|---|---|",
        "| `-s`, `--input-size` | N | `224` |",
    ])
    sections, problems = _documented_options(text)
    assert sections == {"classify": ["--topk", "--null"], "arch": ["--input-size"]}
    assert problems == []


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", lambda m: "_" if m.group() == "_" else "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    for line in _outside_code_fences(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = _slug(match.group(1))
            slug, n = base, 0
            while slug in anchors:
                n += 1
                slug = f"{base}-{n}"
            anchors.add(slug)
    return anchors


def _links(path: Path) -> list[str]:
    return [m.group("target") for line in _outside_code_fences(path.read_text(encoding="utf-8"))
            for m in LINK.finditer(line)]


def test_readme_is_a_quickstart():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES}"
    # .ci/run runs the first line matching this: it must stay a line of its own, and install the browser the
    # report's tests drive.
    test_lines = [line for line in lines if re.search(r"python3 -m venv .* pytest", line)]
    assert test_lines and "apt-get install -y chromium" in test_lines[0]


def test_readme_links_every_docs_page():
    linked = {t.split("#")[0] for t in _links(README) if t.startswith("docs/")}
    missing = [f"docs/{p.name}" for p in sorted(DOCS.glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, f"README.md does not link to {missing}"
    broken = sorted(t for t in linked if not (ROOT / t).is_file())
    assert not broken, f"README.md links to docs pages that do not exist: {broken}"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading for #{anchor})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"
