"""What went wrong inside an exception group: nurseries nest groups in groups, and a report wants
the failures themselves."""

from __future__ import annotations

from collections.abc import Iterator


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions in `error` that are not groups, depth first in the order they were raised
    (`error` itself when it is not a group)."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error
