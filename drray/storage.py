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
