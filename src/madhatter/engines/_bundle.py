"""What a container needs to run madhatter tasks, shipped to it on start-up.

The ``docker`` engine runs any image that has a compatible ``python3``, without madhatter being
installed in it: the container starts ``python3 -c BOOTSTRAP``, which reads a zip of madhatter's
own pure-Python package and cloudpickle's from standard input, writes it to the container's
private ``/tmp`` (a tmpfs), puts it on ``sys.path`` and serves tasks
(``_container_worker.main``). Nothing is mounted from the host, and the image's root file system
can stay read-only.

The zip carries compiled bytecode next to each source file, so the container does not compile
madhatter on every start (tracebacks still show source lines): the engine only runs images whose
Python matches the driver's major.minor, which is also what bytecode and pickled functions need.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import marshal
import pathlib
import zipfile

import cloudpickle

PACKAGE_ROOT = pathlib.Path(__file__).parent.parent
"""madhatter's own package directory (``engines``' parent), bundled whole: a task function may
reference any of its modules."""

RUNTIME_PATH = "/tmp/madhatter-runtime.zip"
"""Where the bootstrap writes the bundle inside the container (a tmpfs the engine mounts)."""

BOOTSTRAP = (
    "import struct, sys\n"
    "stdin = sys.stdin.buffer\n"
    "(size,) = struct.unpack('>Q', stdin.read(8))\n"
    f"with open({RUNTIME_PATH!r}, 'wb') as bundle:\n"
    "    bundle.write(stdin.read(size))\n"
    f"sys.path.insert(0, {RUNTIME_PATH!r})\n"
    "from madhatter.engines._container_worker import main\n"
    "main()\n"
)
"""The container's command, given to ``python3 -c``: small, and valid on any Python 3."""

_ZIP_TIMESTAMP = (2020, 1, 1, 0, 0, 0)  # fixed, so the bundle is the same bytes every time


@functools.cache
def runtime_bundle() -> bytes:
    """The zip of madhatter and cloudpickle, built once per driver process."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        for root in (PACKAGE_ROOT, pathlib.Path(cloudpickle.__file__ or "").parent):
            _add_package(bundle, root)
    return buffer.getvalue()


def _add_package(bundle: zipfile.ZipFile, root: pathlib.Path) -> None:
    """Every Python source file of the package at ``root``, with its bytecode, in ``bundle``."""
    for source in sorted(root.rglob("*.py")):
        if "__pycache__" in source.parts:
            continue
        name = source.relative_to(root.parent).as_posix()
        text = source.read_bytes()
        bundle.writestr(zipfile.ZipInfo(name, _ZIP_TIMESTAMP), text)
        # compiled under the path the module will have in the container, as a normal import
        # would, so tracebacks name it and madhatter can tell its own frames from the user's
        compiled = _bytecode(text, f"{RUNTIME_PATH}/{name}")
        bundle.writestr(zipfile.ZipInfo(name + "c", _ZIP_TIMESTAMP), compiled)


def _bytecode(source: bytes, name: str) -> bytes:
    """An unchecked hash-based ``.pyc`` of ``source`` (PEP 552): zipimport uses it as it is,
    whatever the clocks and time zones of driver and container."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = (0b01).to_bytes(4, "little")  # hash-based, not checked against the source
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)
