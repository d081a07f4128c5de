"""Where drray reads and writes: local paths or URIs (s3://, gs://, abfs://) through pyarrow's filesystems.

Every command takes a local path or a URI for each path argument, so the same run works on a
laptop and against object storage. This module is the one place that turns a location into a
(pyarrow FileSystem, path) pair, writes files atomically (a reader never sees half a file, on
local disk by rename, on object storage because an object appears whole when its upload
completes) and turns values into strict JSON. A URI is never quietly read as a local path.

S3 credentials and the endpoint come from the standard AWS environment variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), read by pyarrow; none of them is ever logged.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import uuid
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pyarrow import fs as pafs


def is_uri(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations (s3://, gs://, file://); False for plain local paths."""
    return "://" in str(location)


def filesystem(location: str | os.PathLike) -> tuple["pafs.FileSystem", str]:
    """(pyarrow FileSystem, path inside it) for a local path or a URI such as s3://bucket/run."""
    from pyarrow import fs as pafs

    location = str(location)
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for unknown schemes and bad buckets
            raise ValueError(f"cannot open {location!r}: {e}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def join(location: str | os.PathLike, *parts: str) -> str:
    """`location/part/...`, keeping a URI a URI (os.path.join would mangle `s3://`)."""
    location = str(location)
    if is_uri(location):
        return posixpath.join(location, *parts)
    return os.path.join(location, *parts)


def resolve_path(path: str, base: str | os.PathLike | None) -> str:
    """`path` as written in a manifest: absolute (local or a URI) as it is, else relative to `base` (local or a URI)."""
    if base is None or os.path.isabs(path) or is_uri(path):
        return path
    return join(base, path)


def exists(location: str | os.PathLike) -> bool:
    from pyarrow import fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    from pyarrow import fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    from pyarrow import fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def make_dirs(location: str | os.PathLike) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def read_bytes(location: str | os.PathLike) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def write_atomic(location: str | os.PathLike, write: Callable[["pafs.FileSystem", str], None]) -> None:
    """Call `write(fs, tmp_path)` and move the result to `location`: readers see the old file or the new one."""
    from pyarrow import fs as pafs

    fs, path = filesystem(location)
    parent = posixpath.dirname(path) if is_uri(location) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(fs, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        # An object store makes an upload visible only once it completes: writing in place is atomic.
        write(fs, path)


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    def write(fs: "pafs.FileSystem", path: str) -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    write_atomic(location, write)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def write_parquet(location: str | os.PathLike, table) -> None:
    import pyarrow.parquet as pq

    write_atomic(location, lambda fs, path: pq.write_table(table, path, filesystem=fs))


def read_parquet(location: str | os.PathLike, **kwargs):
    import pyarrow.parquet as pq

    fs, path = filesystem(location)
    return pq.read_table(path, filesystem=fs, **kwargs)


# --------------------------------------------------------------------------------------- JSON
def finite_or_none(x: Any) -> float | None:
    """A float, or None for None, NaN and infinities (strict JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_ready(obj: Any) -> Any:
    """numpy scalars and arrays to Python, non-finite floats to None, recursively; anything else un-JSON-able raises."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return finite_or_none(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise ValueError(f"value {obj!r} of type {type(obj).__name__} cannot be stored as JSON")


def dumps(obj: Any) -> str:
    """Strict, indented JSON of `json_ready(obj)`."""
    return json.dumps(json_ready(obj), indent=2, allow_nan=False)


def write_json(location: str | os.PathLike, obj: Any) -> str:
    """Write strict JSON atomically; returns the location."""
    write_text(location, dumps(obj) + "\n")
    return str(location)


def read_json(location: str | os.PathLike) -> Any:
    return json.loads(read_text(location))


# --------------------------------------------------------------------------- paths in object storage
class RemotePath:
    """A location in object storage with the part of pathlib's API dataset adapters use.

    `RemotePath("s3://bucket/aptos2019") / "train.csv"`, `.is_file()`, `.iterdir()`, `.open()`,
    `.stem` ... work as on a local `Path`, so one adapter reads a dataset root on local disk or in a
    bucket. It deliberately has no `__fspath__`: code that would treat it as a local file fails
    instead of reading a same-named local path.
    """

    def __init__(self, uri: str | "RemotePath"):
        uri = str(uri)
        if not is_uri(uri):
            raise ValueError(f"RemotePath takes a URI such as s3://bucket/key, got {uri!r}")
        scheme, _, rest = uri.partition("://")
        self.scheme = scheme
        self.path = posixpath.normpath(rest).lstrip("/") if rest else ""
        self._type = None  # FileType when a listing already told it: no request per file

    # pure path operations (no I/O)
    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "RemotePath") -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str) -> "RemotePath":
        part = str(part)
        if is_uri(part):
            return RemotePath(part)
        return RemotePath(f"{self.scheme}://{posixpath.join(self.path, part)}")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0] if self.suffix else self.name

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(f"{self.scheme}://{posixpath.dirname(self.path)}")

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.path.split("/") if p)

    def with_suffix(self, suffix: str) -> "RemotePath":
        return self.parent / (self.stem + suffix)

    def is_absolute(self) -> bool:
        return True

    def is_relative_to(self, other: "RemotePath | str") -> bool:
        base = RemotePath(other)
        return base.scheme == self.scheme and (self.path == base.path or self.path.startswith(base.path + "/"))

    def relative_to(self, other: "RemotePath | str") -> PurePosixPath:
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not inside {other}")
        return PurePosixPath(posixpath.relpath(self.path, RemotePath(other).path))

    def as_posix(self) -> str:
        return str(self)

    # I/O through pyarrow
    def _info(self):
        fs, path = filesystem(str(self))
        return fs, path, fs.get_file_info(path)

    def exists(self) -> bool:
        return self._type is not None or exists(str(self))

    def is_file(self) -> bool:
        from pyarrow import fs as pafs

        return self._type == pafs.FileType.File if self._type is not None else is_file(str(self))

    def is_dir(self) -> bool:
        from pyarrow import fs as pafs

        return self._type == pafs.FileType.Directory if self._type is not None else is_dir(str(self))

    def _listing(self, recursive: bool):
        from pyarrow import fs as pafs

        fs, path = filesystem(str(self))
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
        out = []
        for info in infos:
            child = RemotePath(f"{self.scheme}://{info.path}")
            child._type = info.type
            out.append(child)
        return sorted(out)

    def iterdir(self):
        return iter(self._listing(recursive=False))

    def rglob(self, pattern: str = "*"):
        import fnmatch

        return iter(p for p in self._listing(recursive=True) if fnmatch.fnmatch(p.name, pattern))

    def read_bytes(self) -> bytes:
        return read_bytes(str(self))

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "r", newline: str | None = None, encoding: str = "utf-8"):
        import io

        if mode not in ("r", "rb"):
            raise ValueError(f"RemotePath opens for reading only, got mode {mode!r}")
        data = io.BytesIO(self.read_bytes())
        return data if mode == "rb" else io.TextIOWrapper(data, encoding=encoding, newline=newline)


def as_path(location: str | os.PathLike) -> "RemotePath | os.PathLike":
    """A `RemotePath` for a URI, a `pathlib.Path` for a local path: what code walking folders takes."""
    from pathlib import Path

    return RemotePath(str(location)) if is_uri(location) else Path(location)
