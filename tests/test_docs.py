"""Every code block of the documentation (README.md and docs/*.md) is checked here, so no claim in
the docs can rot:

- ```python blocks run, in page order, in one namespace per page (a page reads as one session),
  in a temporary working directory. A block meant to fail is preceded by
  ``<!-- docs-test: raises NameOfError: regex -->`` (the page's text says it fails): every
  statement but its last runs normally, and the last must raise that error, its message matching.
- ```bash blocks: each command is run when it is quick (the demo; ``--help`` of a benchmark or
  of mkdocs, checking every documented flag exists, optional ``[--flag]`` ones included), or else
  shown to be run by CI (the same command, whole, in .ci/run or scripts/test.sh) or to name things
  that exist (pip extras in pyproject.toml, the wheel's file name, cargo bench targets and
  examples, scripts and the flags they handle). Long runs (benchmarks, fuzzing, wheel builds)
  are not repeated here; CI runs their short forms.
- ```text blocks are formulas and outputs, not code. A fence without a language fails.

Plus (docs/coverage.md is checked cell by cell in test_coverage.py): every public name has a
docstring (the API reference is generated from them), and the site builds with mkdocs --strict.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import ferroquant as fq
import pytest
import torch

TOP = Path(__file__).resolve().parent.parent
PAGES = [TOP / "README.md", *sorted((TOP / "docs").rglob("*.md"))]
LANGS = {"python", "bash", "text"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    raises: tuple[str, str | None] | None  # (exception type name, regex its message must match)


def blocks(page: Path) -> list[Block]:
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while not lines[j].strip().startswith("```"):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = re.match(r"^\s*<!-- docs-test: raises (\w+)(?:: (.+?))? -->\s*$", lines[k]) if k >= 0 else None
        raises = (marker.group(1), marker.group(2)) if marker else None
        found.append(Block(page, i + 1, lang, "\n".join(body) + "\n", raises))
        i = j + 1
    return found


ALL = [b for p in PAGES for b in blocks(p)]
PY_PAGES = sorted({b.page for b in ALL if b.lang == "python"})
SHELL = [b for b in ALL if b.lang == "bash"]


def rel(page: Path) -> str:
    return page.relative_to(TOP).as_posix()


def test_every_fence_has_a_known_language() -> None:
    bad = [f"{rel(b.page)}:{b.line} ```{b.lang}" for b in ALL if b.lang not in LANGS]
    assert not bad, f"code fences need one of {sorted(LANGS)}: {bad}"
    assert len(ALL) > 20, "the docs' code blocks were not found"


@pytest.fixture
def restore_settings():
    threads = fq.get_num_threads()
    yield
    fq.backends.engine = "auto"
    fq.set_num_threads(threads)


def page_module(page: Path, tmp_path: Path, monkeypatch) -> types.ModuleType:
    """A real module for the page's session, backed by a file that holds each Python block at its
    line in the page (everything else blank): TorchScript and inspect need the classes' source."""
    lines = [""] * len(page.read_text().splitlines())
    for block in (b for b in ALL if b.page == page and b.lang == "python"):
        for k, ln in enumerate(block.code.splitlines()):
            lines[block.line + k] = ln
    path = tmp_path / (re.sub(r"\W", "_", rel(page)) + ".py")
    path.write_text("\n".join(lines) + "\n")
    mod = types.ModuleType(f"docs_page_{path.stem}")
    mod.__file__ = str(path)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


@pytest.mark.parametrize("page", PY_PAGES, ids=rel)
def test_python_blocks_run(page: Path, tmp_path, monkeypatch, restore_settings) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    mod = page_module(page, tmp_path, monkeypatch)
    namespace = mod.__dict__
    for block in (b for b in ALL if b.page == page and b.lang == "python"):
        where = f"{rel(page)}:{block.line + 1}"
        if block.raises:
            # every statement but the last runs normally; the last one must raise the error named
            tree = ast.parse("\n" * block.line + block.code, mod.__file__)
            *setup, last = tree.body
            exec(compile(ast.Module(body=setup, type_ignores=[]), mod.__file__, "exec"), namespace)
            name, pattern = block.raises
            with pytest.raises(Exception) as info:  # noqa: B017 (the type is checked by name below)
                exec(compile(ast.Module(body=[last], type_ignores=[]), mod.__file__, "exec"), namespace)
            assert type(info.value).__name__ == name, f"{where} raised {info.value!r}, not {name}"
            if pattern:
                assert re.search(pattern, str(info.value)), f"{where}: {info.value!r} does not match {pattern!r}"
        else:
            code = compile("\n" * block.line + block.code, mod.__file__, "exec")  # the page's line numbers
            try:
                exec(code, namespace)
            except Exception as e:
                raise AssertionError(f"the code block at {where} failed: {e!r}") from e


def commands(block: Block) -> list[str]:
    """The block's commands: comments dropped, `a && b` split, `[--opt N]` placeholders removed."""
    out = []
    for line in block.code.splitlines():
        line = re.sub(r"\s#\s.*$|^#.*$", "", line).strip()
        # optional parts, `[--threads N]`: the brackets go, the flags stay (and are checked)
        line = re.sub(r"\[(-[^\]]*)\]", r"\1", line).strip()
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def ci_commands() -> set[str]:
    """The commands CI runs (.ci/run and scripts/test.sh): lines joined across `\\`, split at `&&`."""
    found = set()
    for name in (".ci/run", "scripts/test.sh"):
        text = (TOP / name).read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"\s+", " ", line).strip()
            found |= {part.strip() for part in line.split("&&") if part.strip()}
    return found


CI_COMMANDS = ci_commands()
PYPROJECT = tomllib.loads((TOP / "pyproject.toml").read_text())
_help_cache: dict[str, str] = {}


def script_help(script: str) -> str:
    if script not in _help_cache:
        res = subprocess.run([sys.executable, script, "--help"], cwd=TOP, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{script} --help failed: {res.stderr[-2000:]}"
        _help_cache[script] = res.stdout
    return _help_cache[script]


def check_command(cmd: str) -> str:
    """Runs or verifies one documented shell command; returns how it was checked."""
    argv = shlex.split(cmd)
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv = argv[1:]
    if re.sub(r"\s+", " ", cmd) in CI_COMMANDS:
        return "run by CI"
    if argv[:2] == ["pip", "install"] and re.fullmatch(r"dist/ferroquant-[^/]+\.whl", argv[-1]):
        version = tomllib.loads((TOP / "Cargo.toml").read_text())["workspace"]["package"]["version"]
        assert argv[-1] == f"dist/ferroquant-{version}-cp39-abi3-manylinux_2_28_x86_64.whl", (
            f"{argv[-1]} is not the name scripts/build-wheels.sh gives the wheel (version {version})"
        )
        return "the wheel scripts/build-wheels.sh makes (CI installs it: scripts/test-wheel.sh)"
    if argv[:2] == ["pip", "install"]:
        for spec in argv[2:]:
            m = re.fullmatch(r"\.(?:\[(\w+(?:,\w+)*)\])?", spec)
            assert m or spec.startswith("-"), f"pip install of {spec!r}: only the project itself is documented"
            for extra in m.group(1).split(",") if m and m.group(1) else []:
                assert extra in PYPROJECT["project"]["optional-dependencies"], f"no pip extra {extra!r}"
        return "pip extras exist"
    if argv[:3] == ["python", "-m", "ferroquant"]:
        res = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{cmd} failed: {res.stderr[-2000:]}"
        return "ran"
    if argv and argv[0] == "python" and argv[1].startswith(("benches/", "scripts/")):
        assert (TOP / argv[1]).is_file(), f"{argv[1]} does not exist"
        text = script_help(argv[1])
        for flag in [a for a in argv[2:] if a.startswith("--")]:
            assert flag in text, f"{argv[1]} has no flag {flag} (its --help: {text[:400]})"
        return "--help lists the flags"
    if argv[:2] == ["cargo", "bench"] or argv[:2] == ["cargo", "run"]:
        manifest = (TOP / "rust" / "kernels" / "Cargo.toml").read_text()
        assert "-p" in argv and argv[argv.index("-p") + 1] == "ferroquant-kernels", cmd
        for kind, folder in (("--bench", "benches"), ("--example", "examples")):
            if kind in argv:
                name = argv[argv.index(kind) + 1]
                assert (TOP / "rust" / "kernels" / folder / f"{name}.rs").is_file(), f"no {kind} {name}"
                if kind == "--bench":
                    assert f'name = "{name}"' in manifest, f"bench {name} not declared in Cargo.toml"
        return "targets exist (CI builds them: cargo bench --no-run)"
    if argv and argv[0] == "bash" and argv[1].startswith("scripts/"):
        script = TOP / argv[1]
        assert script.is_file(), f"{argv[1]} does not exist"
        for flag in [a for a in argv[2:] if a.startswith("--")]:
            assert flag in script.read_text(), f"{argv[1]} does not handle {flag}"
        return "script and flags exist"
    if argv[:3] == ["python", "-m", "mkdocs"]:
        assert argv[3] in ("build", "serve"), cmd
        res = subprocess.run([sys.executable, "-m", "mkdocs", argv[3], "--help"], capture_output=True, text=True)
        for flag in [a for a in argv[4:] if a.startswith("--")]:
            assert flag in res.stdout, f"mkdocs {argv[3]} has no flag {flag}"
        return "mkdocs flags exist (test_site_builds builds the site)"
    raise AssertionError(f"no rule checks the documented command {cmd!r}: add one to tests/test_docs.py")


@pytest.mark.parametrize("block", SHELL, ids=lambda b: f"{rel(b.page)}:{b.line}")
def test_shell_blocks_are_real(block: Block) -> None:
    for cmd in commands(block):
        check_command(cmd)


def test_public_names_have_docstrings() -> None:
    import inspect

    import ferroquant.nn.intrinsic as nni
    import ferroquant.nn.intrinsic.quantized as nniq
    import ferroquant.nn.quantized as nnq
    import ferroquant.nn.quantized.dynamic as nnqd

    missing = []
    for mod in (fq, nnq, nnqd, nni, nniq):
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isclass(obj):
                doc = obj.__dict__.get("__doc__")
            elif inspect.isfunction(obj):
                doc = obj.__doc__
            else:
                continue
            if not doc or not doc.strip():
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, f"public names without a docstring (the API reference is built from them): {missing}"


def test_site_builds(tmp_path) -> None:
    pytest.importorskip("mkdocs", reason="pip install '.[test]' installs mkdocs")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=TOP,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stderr[-4000:]}"
    html = (tmp_path / "site" / "reference" / "ferroquant" / "index.html").read_text()
    for name in ("ferroquant.quantize.quantize_dynamic", "ferroquant.observer.MinMaxObserver"):
        assert f'id="{name}"' in html, f"the API reference lost {name}"
