"""Checks a built ferroquant wheel: name and WHEEL tags (cp39-abi3, the manylinux policy asked for),
metadata, contents against the source tree, the extension's ELF machine, its needed libraries and
that no symbol needs a newer glibc than the tag allows (readelf -V, which reads any architecture).

    python scripts/check-wheel.py WHEEL --arch x86_64|aarch64 --glibc 2.28

Exit status 0 and one line per check when the wheel is good; the failed checks otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib


TOP = Path(__file__).resolve().parent.parent
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
# what manylinux lets an extension link to (PEP 600's policy list, the libraries we can need)
ALLOWED_NEEDED = re.compile(
    r"^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|"
    r"libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$"
)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def source_files() -> set[str]:
    """Files the wheel must carry: every module, stub and marker of python/ferroquant."""
    root = TOP / "python"
    files = set()
    for path in (root / "ferroquant").rglob("*"):
        if path.suffix in (".py", ".pyi") or path.name == "py.typed":
            if "__pycache__" not in path.parts:
                files.add(path.relative_to(root).as_posix())
    return files


def glibc_needed(so: Path) -> tuple[list[str], set[tuple[int, ...]]]:
    """NEEDED libraries (readelf -d) and GLIBC_x.y versions referenced (readelf -V)."""
    dyn = subprocess.run(["readelf", "-d", "-W", str(so)], check=True, capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    ver = subprocess.run(["readelf", "-V", "-W", str(so)], check=True, capture_output=True, text=True).stdout
    versions = {version_tuple(v) for v in re.findall(r"Name: GLIBC_([0-9.]+)", ver)}
    return needed, versions


def check(wheel: Path, arch: str, glibc: str) -> list[str]:
    problems: list[str] = []
    ok: list[str] = []
    cargo = tomllib.loads((TOP / "Cargo.toml").read_text())
    version = cargo["workspace"]["package"]["version"]
    policy = f"manylinux_{glibc.replace('.', '_')}_{arch}"
    expected_name = f"ferroquant-{version}-cp39-abi3-{policy}.whl"
    (ok if wheel.name == expected_name else problems).append(f"file name {wheel.name} (expected {expected_name})")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist = f"ferroquant-{version}.dist-info"
        wheel_meta = zf.read(f"{dist}/WHEEL").decode()
        tags = re.findall(r"^Tag: (.+)$", wheel_meta, re.M)
        (ok if tags == [f"cp39-abi3-{policy}"] else problems).append(f"WHEEL tags {tags}")
        (ok if "Root-Is-Purelib: false" in wheel_meta else problems).append("WHEEL Root-Is-Purelib: false")
        meta = zf.read(f"{dist}/METADATA").decode()
        for field in (
            f"Version: {version}",
            "Requires-Python: >=3.9",
            "Requires-Dist: torch",
            "Classifier: Operating System :: POSIX :: Linux",
            "Project-URL: ",
        ):
            (ok if field in meta else problems).append(f"METADATA has {field!r}")
        missing = sorted(source_files() - names)
        (ok if not missing else problems).append(f"Python sources and stubs present (missing: {missing})")
        so_name = "ferroquant/_core.abi3.so"
        if so_name not in names:
            problems.append(f"{so_name} missing")
            return ok_and(ok, problems)
        with tempfile.TemporaryDirectory() as tmp:
            so = Path(zf.extract(so_name, tmp))
            header = so.read_bytes()[:20]
            machine = int.from_bytes(header[18:20], "little")
            (ok if header[:4] == b"\x7fELF" and machine == ELF_MACHINE[arch] else problems).append(
                f"ELF machine {machine} ({arch} is {ELF_MACHINE[arch]})"
            )
            needed, versions = glibc_needed(so)
            bad = [n for n in needed if not ALLOWED_NEEDED.match(n)]
            (ok if not bad else problems).append(f"needed libraries {needed} (outside manylinux: {bad})")
            newest = max(versions) if versions else ()
            newest_s = ".".join(map(str, newest))
            (ok if newest and newest <= version_tuple(glibc) else problems).append(
                f"newest glibc symbol version GLIBC_{newest_s} <= {glibc}"
            )
            stripped = (
                ".debug_info"
                not in subprocess.run(
                    ["readelf", "-S", "-W", str(so)], check=True, capture_output=True, text=True
                ).stdout
            )
            (ok if stripped else problems).append("extension stripped of debug info")
    # auditwheel's own verdict, when it is installed (pip install auditwheel; it reads any arch):
    # the most compatible tag it allows must be at least as old as the wheel's
    if importlib.util.find_spec("auditwheel") is None:
        print("note auditwheel not installed: its check skipped (pip install auditwheel)")
    else:
        shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
        verdict = " ".join(shown.stdout.split())
        m = re.search(r'consistent with the following platform tag: "manylinux_(\d+)_(\d+)_(\w+)"', verdict)
        good = shown.returncode == 0 and m is not None and m.group(3) == arch
        good = good and (int(m.group(1)), int(m.group(2))) <= version_tuple(glibc)
        detail = verdict[:160] if shown.returncode == 0 else f"failed: {shown.stderr.strip()[-300:]}"
        (ok if good else problems).append(f"auditwheel show: {detail}")
    return ok_and(ok, problems)


def ok_and(ok: list[str], problems: list[str]) -> list[str]:
    for line in ok:
        print(f"ok   {line}")
    for line in problems:
        print(f"FAIL {line}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--arch", choices=sorted(ELF_MACHINE), required=True)
    parser.add_argument("--glibc", default="2.28", help="the manylinux policy's glibc, e.g. 2.28")
    args = parser.parse_args()
    print(f"checking {args.wheel}")
    return 1 if check(args.wheel, args.arch, args.glibc) else 0


if __name__ == "__main__":
    sys.exit(main())
