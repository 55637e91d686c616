"""How a sandboxed program is started: the bubblewrap command line and the interpreter it runs.

`bwrap_argv` builds the bubblewrap invocation (see `engines.sandbox` for what it guarantees): every
namespace unshared (a user namespace per run, mapping only uid/gid 65534), nested user namespaces
disabled, all capabilities dropped, a new session, ``--die-with-parent``; the filesystem is an empty
read-only root holding read-only binds of the interpreter's own prefix (its site-packages hidden under
empty read-only tmpfs mounts), the system library directories and ``/etc/ld.so.cache``, a read-only
private ``/proc``, a minimal read-only ``/dev`` (no host device node; ``null`` is an empty read-only
file), and size-capped private tmpfs mounts for ``/tmp``, ``/var/tmp``, ``/dev/shm`` and the work dir.
Nothing else of the host (``/home``, ``/etc``, the project, the store, the virtualenv, Prefect's
database, anything of ``/root`` but a bound interpreter prefix under it) exists inside.

The interpreter is the evaluator's own: the real binary behind ``sys.executable`` (a virtualenv's
``python`` is a link to it), run with ``-I -S`` so neither the virtualenv nor any site-packages is
needed. `probe_program` checks inside the sandbox that it is the same Python with the same stdlib.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
import sysconfig

WORK = "/sandbox"
UID = 65534
_SYSTEM_LIB_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")
_TOP_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32")
INSTALL_HINT = "install it with `apt-get install bubblewrap`"


def interpreter() -> str:
    """The real interpreter binary the evaluator runs on (through any virtualenv links)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def bwrap_path() -> str | None:
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.access(p, os.X_OK)),
                                         None)


def bwrap_version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    return out.stdout.strip() or out.stderr.strip() or "unknown"


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _bind_paths() -> tuple[list[str], list[str]]:
    """(read-only binds, parents before children; the symlink args for /lib* links)."""
    prefix = os.path.realpath(sys.base_prefix)
    binds: list[str] = [prefix]
    for d in _SYSTEM_LIB_DIRS:
        if os.path.isdir(d) and not os.path.islink(d) and not _inside(d, binds):
            binds.append(d)
    extra = [interpreter()]
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib:
        extra.append(os.path.realpath(os.path.join(libdir, ldlib)))
    binds += [p for p in extra if os.path.exists(p) and not _inside(p, binds)]
    links: list[str] = []
    for top in _TOP_LIB_DIRS:
        if os.path.islink(top):
            links += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top) and not _inside(top, binds):
            binds.append(top)
    if os.path.isfile("/etc/ld.so.cache"):
        binds.append("/etc/ld.so.cache")
    return sorted(binds, key=len), links


@functools.cache
def _mounts() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """bwrap mount args (and descriptors they use: none at present)."""
    paths, links = _bind_paths()
    args = list(links)
    for path in paths:
        args += ["--ro-bind", path, path]
    prefix = os.path.realpath(sys.base_prefix)
    for packages in sorted(set(site.getsitepackages([prefix]))):  # hide the base interpreter's packages
        real = os.path.realpath(packages)
        if os.path.isdir(real) and _inside(real, paths):
            args += ["--size", "65536", "--tmpfs", real, "--remount-ro", real]
    return tuple(args), ()


def popen_user(drop: bool) -> dict[str, object]:
    """`subprocess.Popen` arguments that start bwrap as uid/gid 65534 (``drop``, only as root)."""
    return {"user": UID, "group": UID, "extra_groups": []} if drop else {}


@functools.cache
def _empty_fd() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _dev_args() -> tuple[list[str], int]:
    """A minimal /dev without any host device node (as the caller's uid, the sandbox would own them):
    ``fd``/``stdin``/``stdout``/``stderr`` links and ``null`` as an empty read-only file."""
    args = ["--size", "65536", "--tmpfs", "/dev", "--symlink", "/proc/self/fd", "/dev/fd"]
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        args += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
    fd = _empty_fd()
    return [*args, "--ro-bind-data", str(fd), "/dev/null"], fd


def bwrap_argv(bwrap: str, disk_bytes: int, info_fd: int) -> tuple[list[str], tuple[int, ...]]:
    """The bubblewrap command up to (not including) the interpreter's argv, and the fds it needs."""
    mounts, fds = _mounts()
    dev, null_fd = _dev_args()
    size = str(disk_bytes)
    private = []
    for path in ("/tmp", "/var/tmp", "/dev/shm", WORK):
        private += ["--size", size, "--tmpfs", path]
    read_only = []  # nothing but the private tmpfs mounts stays writable
    for path in ("/", "/proc", "/dev"):
        read_only += ["--remount-ro", path]
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", str(UID), "--gid", str(UID), "--hostname", "sandbox",
            *mounts, "--proc", "/proc", *dev, *private, "--chdir", WORK,
            *read_only, "--info-fd", str(info_fd), "--"]
    return argv, (*fds, null_fd)


def probe_program() -> str:
    """Passes inside the sandbox only if it runs the evaluator's interpreter and stdlib, confined."""
    import json

    stdlib = os.path.dirname(os.path.realpath(json.__file__))
    return (
        "import json, os, sys\n"
        f"assert sys.version == {sys.version!r}, 'another Python: ' + sys.version\n"
        f"assert os.path.dirname(os.path.realpath(json.__file__)) == {stdlib!r}, json.__file__\n"
        f"assert os.getuid() == os.geteuid() == {UID}, os.getuid()\n"
        "caps = [ln for ln in open('/proc/self/status') if ln.startswith(('CapEff', 'CapPrm', 'CapBnd'))]\n"
        "assert all(int(ln.split()[1], 16) == 0 for ln in caps), caps\n"
        f"assert os.getcwd() == {WORK!r} and '' not in sys.path, sys.path\n"
        "assert not any(os.path.exists(p) for p in ('/etc/passwd', '/home')), 'host files visible'\n"
    )
