"""One line for the operating system's refusals (a full disk, no permission, a link loop).

They reach the CLI from anywhere a run writes or reads: a Parquet writer, torch, safetensors
(whose Rust errors are not `OSError`s and carry only the message "No space left on device
(os error 28)"), DuckDB. Each is found in the exception's chain and said once with the path and
the fix; finished work is kept by the atomic writes, so the fix is always "then run again".
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator

_NO_SPACE = re.compile(r"No space left on device|os error 28|\bENOSPC\b|Disk quota exceeded")
_RESUME = "then run again (finished work is kept)"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # `raise ... from None` hides the context: the error it raised says all.
        hidden = current.__suppress_context__
        current = current.__cause__ or (None if hidden else current.__context__)


def describe_os_failure(exc: BaseException, storage_root: str | None = None) -> str | None:
    """The line to print for an operating-system failure in `exc`'s chain, or None.

    Args:
        exc: What the run raised (possibly wrapped by Dagster).
        storage_root: Where the run writes, named in the full-disk fix.
    """
    where = f" ({storage_root})" if storage_root else ""
    for e in _chain(exc):
        path = getattr(e, "filename", None) if isinstance(e, OSError) else None
        at = f" writing {path}" if path else ""
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or _NO_SPACE.search(
            str(e)
        ):
            return (
                f"no space left on the device{at}: free space under storage.root{where} or "
                f"point storage.root at a larger disk, {_RESUME}"
            )
        if not isinstance(e, OSError) or path is None:
            continue
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (
                f"{e.strerror or 'permission denied'}: {path}; give this user access to it (or "
                f"point the profile's path elsewhere), {_RESUME}"
            )
        if e.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop; fix or remove the link, {_RESUME}"
    return None
