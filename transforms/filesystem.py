"""The index's storage layer on Beam's FileSystems, for gs://, s3://, hdfs:// and azfs:// paths."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from beamvec.index import fs

SCHEMES = ("gs", "s3", "hdfs", "azfs")


class BeamFileSystem(fs.FileSystem):
    """:class:`beamvec.index.fs.FileSystem` over ``apache_beam.io.filesystems.FileSystems``.

    Object stores have no rename that is atomic for readers; a write there is a
    single object upload, which readers see whole or not at all.
    """

    def read_bytes(self, path: str) -> bytes:
        with FileSystems.open(path) as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        with FileSystems.create(path) as f:
            f.write(data)

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        matches = FileSystems.match([prefix + "*"])[0].metadata_list
        return sorted(m.path[len(prefix):] for m in matches if "/" not in m.path[len(prefix):])

    def makedirs(self, path: str) -> None:
        if not FileSystems.exists(path):
            FileSystems.mkdirs(path)

    def _under(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list]

    def listdirs(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self._under(path) if "/" in p[len(prefix):]})

    def delete_tree(self, path: str) -> None:
        files = self._under(path)
        if files:
            FileSystems.delete(files)

    def copy_tree(self, source: str, destination: str) -> None:
        prefix = source.rstrip("/") + "/"
        files = self._under(source)
        if files:  # server-side copies, object by object
            FileSystems.copy(files, [destination.rstrip("/") + "/" + f[len(prefix):] for f in files])

    def copy_file(self, source: str, destination: str) -> None:
        FileSystems.copy([source], [destination])


def register() -> None:
    """Route the index's remote paths through Beam's FileSystems."""
    for scheme in SCHEMES:
        fs.register(scheme, BeamFileSystem())
