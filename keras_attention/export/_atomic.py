"""Files and folders written whole or not at all (saving never leaves a half-written
file where a good one was)."""

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_file(path, suffix=".tmp"):
    """Write a file at `path` through a temporary file in the same folder.

    Yields the temporary path to write; when the block succeeds it replaces `path`
    with `os.replace` (atomic within one file system), with the permissions a new
    file gets. On any error (KeyboardInterrupt included) the temporary file is
    removed and a previous file at `path` stays as it was: never half-written.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp made it private (0600)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


@contextlib.contextmanager
def atomic_folder(path):
    """:func:`atomic_file` for a folder (a SavedModel): a previous folder at `path`
    is moved aside, replaced by the new one, and put back if the swap fails."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    old_dir = None
    try:
        yield tmp_dir
        os.chmod(tmp_dir, 0o777 & ~umask())  # mkdtemp made it private (0700)
        if os.path.isdir(path):
            old_dir = tempfile.mkdtemp(
                prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent
            )
            os.rmdir(old_dir)  # only the unique name is wanted; rename needs it free
            os.rename(path, old_dir)
        try:
            os.rename(tmp_dir, path)
        except BaseException:
            if old_dir is not None:
                os.rename(old_dir, path)  # put the previous export back
                old_dir = None
            raise
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)


def umask():
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
