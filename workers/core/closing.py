"""The one way a resource of ours closes at the end of a ``with`` block."""

from __future__ import annotations

from typing import Self


class Closing:
    """A mixin: ``with resource:`` gives the resource itself and calls its ``close()`` on leaving."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
