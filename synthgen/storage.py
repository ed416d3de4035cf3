"""Where job outputs go: a local folder or a cloud URI (s3://, gs://, abfs://, file://), via pyarrow.

    from synthgen.storage import exists, upload_dir
    upload_dir("/tmp/stage/run", "s3://bucket/synthgen/run")   # or "/mnt/shared/run"

Jobs build their outputs in a local folder on the driver node, then `upload_dir` copies them to the
destination. Local destinations get a rename (atomic on one filesystem); object stores have no rename,
so files are uploaded with `manifest.json` / `summary.json` last: a reader that finds the manifest finds
a complete output.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from synthgen.config import ConfigError

_LAST = ("manifest.json", "summary.json")


class StorageError(ConfigError):
    """A storage path is unusable; the message names it."""


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or URI."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (OSError, ValueError) as e:  # pyarrow.lib.ArrowInvalid is a ValueError
        raise StorageError(f"{path}: not a usable storage URI ({e})") from None


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def upload_dir(local_dir: str, dest: str, overwrite: bool = False, merge: bool = False) -> str:
    """Copy a finished local output folder to `dest`; refuses an existing `dest` unless `overwrite`
    (which replaces it) or `merge` (which adds the files beside what is there, e.g. checkpoints)."""
    if merge and is_uri(dest):
        return _upload_files(local_dir, dest)
    if exists(dest) and not overwrite and not merge:
        raise StorageError(f"{dest}: already exists; pass --overwrite to replace it")
    if not is_uri(dest):
        dest = os.path.abspath(dest)
        if os.path.abspath(local_dir) == dest:
            return dest
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        if merge and os.path.isdir(dest):
            shutil.copytree(local_dir, dest, dirs_exist_ok=True)
            return dest
        shutil.copytree(local_dir, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        return dest
    fs, inner = filesystem(dest)
    if overwrite and exists(dest):
        fs.delete_dir(inner)
    return _upload_files(local_dir, dest)


def _upload_files(local_dir: str, dest: str) -> str:
    fs, inner = filesystem(dest)
    fs.create_dir(inner, recursive=True)
    files = sorted(os.path.relpath(os.path.join(root, f), local_dir)
                   for root, _, names in os.walk(local_dir) for f in names)
    for rel in sorted(files, key=lambda r: os.path.basename(r) in _LAST):  # manifest last
        target = f"{inner.rstrip('/')}/{rel.replace(os.sep, '/')}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(os.path.join(local_dir, rel), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    return dest


def pack_dir(directory: str) -> dict[str, bytes]:
    """A flat directory's files as {name: bytes}: ship a checkpoint through Ray's object store to
    nodes that cannot see the driver's disk."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    return {p.name: p.read_bytes() for p in files}


def unpack_dir(files: dict[str, bytes], directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        (Path(directory) / os.path.basename(name)).write_bytes(data)
    return directory


def download_dir(uri: str, directory: str) -> str:
    """Copy a directory tree at `uri` (e.g. a checkpoint a cluster job wrote) into a local folder."""
    fs, inner = filesystem(uri)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise StorageError(f"{uri}: not found (or not a directory)")
    pafs.copy_files(inner, directory, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return directory
