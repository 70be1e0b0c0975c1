"""Files that readers can trust: written under a temporary name, then renamed into place."""

import contextlib
import hashlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def replaced_atomically(path: pathlib.Path, mode: int = 0o644):
    """Yield a temporary path beside ``path`` (same suffix) to write; on success it becomes
    ``path`` by a rename, on failure it is removed. The rename gives the path a new inode, so a
    process that loaded the old file (a shared library) keeps its pages intact."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # readable by whichever account serves it, like an installed file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomically(path: pathlib.Path, text: str) -> None:
    with replaced_atomically(path) as tmp:
        pathlib.Path(tmp).write_text(text)


def sha256_of(file) -> str:
    """Hex sha256 of a path or of an open binary file."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return hashlib.file_digest(file, "sha256").hexdigest()
