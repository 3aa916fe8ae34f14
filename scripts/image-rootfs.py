"""Lay out in DEST the sidecar image's whole root: what it keeps of its base image, and the virtualenv.

    python3 image-rootfs.py VENV DEST

Runs in the Dockerfile's rootfs stages, on the base image itself (its own python3, standard library only),
so it finds the base's files where that base keeps them (python:3.11-slim under /usr/local, the Debian
stand-in the tests use under /usr). Kept:

- the interpreter (the venv's python and the links to it), the standard library without what the sidecar
  never runs (DROP: pip, setuptools and their bundled wheels, IDLE, Tk, turtle, 2to3, pydoc's topics, tests,
  C headers and build files) and its extension modules without the test ones, Tk's and the deprecated
  dbm and nis ones (they pull in Berkeley DB and Kerberos);
- the shared libraries that the interpreter, those modules, the venv's extension modules and /bin/sh load
  (ldd; a library ldd cannot find fails the build), libgcc_s (glibc loads it itself to unwind threads), and
  the loader's cache for them;
- /bin/sh (dash, for ``kubectl exec``), CA certificates, /etc files for users, names and services, the
  C.UTF-8 locale, os-release and dpkg's status (so image scanners know the Debian libraries' versions).

Left out: the package manager (apt, dpkg, debconf), perl, coreutils, bash, docs, man pages, locales, timezone
data (TZ is UTC), and pip: the image cannot install packages; build a derived image from the Dockerfile's
stages instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

DROP = {
    "ensurepip", "idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3", "pydoc_data", "test", "tests",
    "idle_test", "site-packages", "dist-packages", "distutils", "__phello__",
}  # fmt: skip
DROP_DYNLOAD = re.compile(r"^(_test|_ctypes_test|_xxtestfuzz|xxlimited|_tkinter|_dbm|_gdbm|nis)")
ETC = [
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/services", "/etc/protocols",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ssl", "/usr/lib/ssl", "/usr/share/ca-certificates",
    "/usr/lib/locale/C.utf8", "/etc/os-release", "/usr/lib/os-release", "/var/lib/dpkg/status",
]  # fmt: skip


def chain(path: str) -> list[str]:
    """``path`` and every symbolic link met on the way to it, each with its parents resolved."""
    found, cur, parts = [], "/", list(Path(path).parts[1:])
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            found.append(nxt)
            link = os.readlink(nxt)
            if os.path.isabs(link):
                cur = "/"
            parts = [p for p in Path(link).parts if p != "/"] + parts
        else:
            cur = nxt
    return [*found, cur]


def libraries(files: list[str]) -> set[str]:
    """The shared libraries the ELF ``files`` load, as ldd names them."""
    libs: set[str] = set()
    for f in files:
        res = subprocess.run(["ldd", f], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            if "not found" in line:
                sys.exit(f"{f}: {line.strip()}")
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(m.group(1))
    return libs


def elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def main(venv: str, dest: str) -> None:
    stdlib = sysconfig.get_path("stdlib")
    # lib-dynload is laid out with keep; config-3.11-*: the build's Makefile and static library.
    top = {"lib-dynload", *(n for n in os.listdir(stdlib) if n.startswith("config-"))}
    dynload = os.path.join(stdlib, "lib-dynload")
    modules = [os.path.join(dynload, n) for n in os.listdir(dynload) if not DROP_DYNLOAD.match(n)]
    venv_elves = [
        str(p) for p in Path(venv).rglob("*") if p.is_file() and not p.is_symlink() and ".so" in p.name and elf(str(p))
    ]
    python = os.path.join(venv, "bin", "python")
    sh = chain("/bin/sh")[-1]
    libs = libraries([chain(python)[-1], sh, *modules, *venv_elves])
    libc = next(lib for lib in libs if os.path.basename(lib).startswith("libc.so"))
    libgcc = os.path.join(os.path.dirname(chain(libc)[-1]), "libgcc_s.so.1")
    keep = [python, "/bin/sh", *modules, *sorted(libs), libgcc, *(e for e in ETC if os.path.lexists(e))]

    root = Path(dest)
    # The venv and the standard library (its lib-dynload is in keep), then what keep names.
    shutil.copytree(
        stdlib,
        root / stdlib.lstrip("/"),
        symlinks=True,
        dirs_exist_ok=True,
        ignore=lambda d, names: [n for n in names if n in DROP or (d == stdlib and n in top)],
    )
    shutil.copytree(venv, root / venv.lstrip("/"), symlinks=True, dirs_exist_ok=True)
    for path in dict.fromkeys(p for k in keep for p in chain(k)):
        target = root / path.lstrip("/")
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
        elif os.path.isdir(path):
            shutil.copytree(path, target, symlinks=True)
        else:
            shutil.copy2(path, target)
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    # The loader's cache, for the libraries kept (the base's lists the ones left out).
    subprocess.run(["ldconfig", "-r", dest], check=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
