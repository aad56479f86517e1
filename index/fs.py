"""The one place index code touches storage.

Shards and manifests read and write through :func:`filesystem_for`, which picks a
:class:`FileSystem` by the path's scheme. Local paths work out of the box; the
Beam layer registers a FileSystem backed by ``apache_beam.io.filesystems`` for
gs://, s3:// and the like, without the shard code changing.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator


class FileSystem(abc.ABC):
    """Minimal storage operations the index needs."""

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """The whole content of a file."""

    @abc.abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a file, replacing it atomically where the store allows (temp + rename)."""

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names of the files directly in a directory, sorted."""

    @abc.abstractmethod
    def makedirs(self, path: str) -> None:
        """Create a directory and its parents (no-op if it exists)."""

    @abc.abstractmethod
    def listdirs(self, path: str) -> list[str]:
        """Names of the directories directly in a directory, sorted."""

    @abc.abstractmethod
    def delete_tree(self, path: str) -> None:
        """Remove a directory and everything under it (no-op if it does not exist)."""

    @abc.abstractmethod
    def copy_tree(self, source: str, destination: str) -> None:
        """Copy a directory's files (recursively) to ``destination``; the copy may share storage
        with the source (hard links) as files are never modified in place."""

    def copy_file(self, source: str, destination: str) -> None:
        """Copy one file."""
        self.write_bytes(destination, self.read_bytes(source))

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """Hold an exclusive lock named by ``path`` for the block, where the store has locks (a
        local disk); elsewhere, no lock."""
        yield

    def join(self, base: str, *parts: str) -> str:
        """Join path components with '/'."""
        return "/".join([base.rstrip("/"), *parts])

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        """A local directory holding the files of directory ``path`` (for libraries that need one)."""
        with tempfile.TemporaryDirectory(prefix="beamvec-") as tmp:
            for name in self.listdir(path):
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(self.read_bytes(self.join(path, name)))
            yield tmp

    def upload(self, local_dir: str, path: str) -> None:
        """Copy the files of a local directory into directory ``path``."""
        self.makedirs(path)
        for name in sorted(os.listdir(local_dir)):
            with open(os.path.join(local_dir, name), "rb") as f:
                self.write_bytes(self.join(path, name), f.read())


class LocalFileSystem(FileSystem):
    """Local disk; writes go to a temporary file in the same directory, then rename."""

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdirs(self, path: str) -> list[str]:
        return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))

    def delete_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def copy_tree(self, source: str, destination: str) -> None:
        shutil.copytree(source, destination, copy_function=_link_or_copy, dirs_exist_ok=True)

    def copy_file(self, source: str, destination: str) -> None:
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        if os.path.exists(destination):
            os.remove(destination)
        _link_or_copy(source, destination)

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        import fcntl

        with open(path, "a") as f:  # released by the OS if this process dies
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *parts)

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        yield path

    def upload(self, local_dir: str, path: str) -> None:
        if os.path.abspath(local_dir) == os.path.abspath(path):
            return
        self.makedirs(path)
        for name in sorted(os.listdir(local_dir)):
            shutil.copyfile(os.path.join(local_dir, name), os.path.join(path, name))


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link where the disk allows one, else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


_REGISTRY: dict[str, FileSystem] = {}
_LOCAL = LocalFileSystem()


def register(scheme: str, filesystem: FileSystem) -> None:
    """Use ``filesystem`` for paths starting with ``scheme://``."""
    _REGISTRY[scheme] = filesystem


def scheme_of(path: str) -> str | None:
    """The scheme of ``path`` ('gs' for 'gs://b/x'), None for a local path."""
    head, sep, _ = path.partition("://")
    return head if sep and head.isidentifier() else None


def filesystem_for(path: str) -> FileSystem:
    """The FileSystem for ``path``; paths without a scheme use the local disk."""
    scheme = scheme_of(path)
    if scheme is None:
        return _LOCAL
    if scheme not in _REGISTRY:
        raise ValueError(
            f"no filesystem registered for {scheme}:// (path {path!r}); "
            "use beamvec.transforms, which registers Beam's FileSystems, or fs.register()"
        )
    return _REGISTRY[scheme]

