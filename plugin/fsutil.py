"""Writing outputs safely: whole files (or whole folders) or nothing.

Every command stages what it writes beside its final place and renames it into place at the end;
the renames run with Ctrl-C deferred (:func:`sigint_deferred`), so an interrupted or failed run
leaves the previous output as it was and no temporary files (docs/errors.md, "Outputs").
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bnncube.errors import BnnError


@contextmanager
def atomic_output_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place on success.

    On any exception (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise BnnError(f"{path}: folder {path.parent} does not exist or is not a folder")
    tmp: Path | None = None
    try:
        with sigint_deferred():  # no Ctrl-C between creating the file and knowing its name
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent
            )
            os.close(fd)
            tmp = Path(tmp_name)
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


@contextmanager
def stderr_fd_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (for C++ libraries that log there directly)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def write_text_files(files: Mapping[Path, str]) -> None:
    """Write several text files so that either all of them land or none does.

    Each file is staged under a temporary name beside its place; the renames into place run with
    Ctrl-C deferred, so an interruption never leaves a mix of old and new files.
    """
    staged: list[tuple[Path, Path]] = []
    for folder in {Path(path).parent for path in files}:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BnnError(f"cannot create output folder {folder}: {exc.strerror}") from None
    try:
        for path, text in files.items():
            path = Path(path)
            with sigint_deferred():
                fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
                staged.append((Path(tmp_name), path))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            os.chmod(tmp_name, _file_mode())
        with sigint_deferred():
            for tmp, path in staged:
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def _umask() -> int:
    # reading the umask means setting it for a moment: to a strict value, so that a file another
    # thread creates meanwhile is private rather than open to all
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """Mode of a new file under the current umask (mkstemp's files are 0600)."""
    return 0o666 & ~_umask()


def _folder_mode() -> int:
    """Mode of a new folder under the current umask (mkdtemp's folders are 0700)."""
    return 0o777 & ~_umask()


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the body runs; it takes effect (KeyboardInterrupt, or
    whatever the handler in place does) right after. For the few renames that put an output in
    place: they finish together or not at all.

    Python runs signal handlers in the main thread, between bytecodes, whichever thread the
    signal hit (TensorFlow's threads included): a handler that only notes the signal covers the
    body. Outside the main thread this does nothing (there, signal handlers cannot be set).
    A Ctrl-C caught in the body is passed on to the previous handler (KeyboardInterrupt for
    Python's default one) once the body is done.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # a handler not set from Python: leave it
    ):
        yield
        return
    caught: list[tuple[int, Any]] = []

    def note(signum: int, frame: Any) -> None:
        caught.append((signum, frame))

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(*caught[0])
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


def _output_parent(dest: Path, option: str) -> Path:
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.exists() and not dest.is_dir():
        raise BnnError(f"option {option}: {dest} exists and is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnnError(f"option {option}: cannot create {dest}: {exc.strerror}") from None
    if not parent.is_dir():
        raise BnnError(f"option {option}: cannot create {dest}: {parent} is not a folder")
    return parent


def _move_aside(dest: Path, parent: Path) -> Path | None:
    """Rename an existing ``dest`` to a new hidden sibling (``.NAME.old.*``) and return that path;
    None when there is no ``dest``."""
    if not dest.exists():
        return None
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=parent))
    os.rmdir(old)
    os.replace(dest, old)
    return old


def swap_folder_into_place(stage: Path, dest: Path) -> None:
    """Put the folder ``stage`` at ``dest``, replacing a previous ``dest`` folder as a whole.

    The two renames run with Ctrl-C deferred; if the second one fails, the previous folder is put
    back. The previous folder is then deleted.
    """
    parent = dest.parent if str(dest.parent) else Path(".")
    old: Path | None = None
    try:
        with sigint_deferred():
            old = _move_aside(dest, parent)
            os.replace(stage, dest)
    except BaseException:
        if old is not None and not dest.exists():  # failed between the renames: put it back
            os.replace(old, dest)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(dest: str | Path, option: str = "-o") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the body returns, the folder
    replaces ``dest`` as a whole (:func:`swap_folder_into_place`).

    On any exception (or Ctrl-C) the temporary folder is removed and ``dest`` is left as it was.
    ``option`` names the command-line option of ``dest`` in error messages.
    """
    dest = Path(dest)
    parent = _output_parent(dest, option)
    stage: Path | None = None
    try:
        with sigint_deferred():  # no Ctrl-C between creating the folder and knowing its name
            try:
                stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
            except OSError as exc:
                raise BnnError(f"option {option}: cannot create {dest}: {exc.strerror}") from None
        os.chmod(stage, _folder_mode())
        yield stage
        swap_folder_into_place(stage, dest)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def write_folder(
    dest: str | Path, files: Mapping[str, str | bytes], option: str = "-o"
) -> list[Path]:
    """Write ``{relative name: text or bytes}`` as the folder ``dest`` (replaced as a whole, or
    left as it was on failure); names with ``/`` go to subfolders. Returns the paths, sorted."""
    dest = Path(dest)
    with staged_folder(dest, option) as stage:
        for name in sorted(files):
            path = stage / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = files[name]
            if isinstance(data, str):
                data = data.encode("utf-8")
            path.write_bytes(data)
    return [dest / name for name in sorted(files)]


@contextmanager
def folder_set_aside(dest: str | Path, option: str = "-o") -> Iterator[Path]:
    """For a pipeline whose outputs name their own paths (the demo): move a previous ``dest``
    aside, yield ``dest`` (new and empty) for the run to fill, and on success delete the previous
    one; on any exception (or Ctrl-C) remove what the run wrote and put the previous one back."""
    dest = Path(dest)
    parent = _output_parent(dest, option)
    old: Path | None = None
    created = False
    try:
        with sigint_deferred():
            old = _move_aside(dest, parent)
            try:
                dest.mkdir()
            except OSError as exc:
                raise BnnError(f"option {option}: cannot create {dest}: {exc.strerror}") from None
            created = True
        yield dest
    except BaseException:
        with sigint_deferred():
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            if old is not None and not dest.exists():
                os.replace(old, dest)
                old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
