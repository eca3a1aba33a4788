"""How our HTTP APIs run under uvicorn: the same log lines as every other process."""

from __future__ import annotations

from typing import Any

from workers.config import Settings


def serve(app: Any, host: str, port: int, settings: Settings, *, workers: int = 1) -> None:
    """Run ``app`` until stopped. One handler for every line (ours and uvicorn's): JSON unless on a
    terminal (LOG_FORMAT), at LOG_LEVEL, set only now that the server runs; log_config None sends
    uvicorn's own lines through it. No uvicorn access lines: they print query strings, and an API
    that wants access lines logs them itself (the audit API names the auditor). With ``workers``
    above 1, ``app`` is the import string of a factory that each process calls (uvicorn spawns
    them and shares the listening socket), and that sets up the process's logging itself."""
    import uvicorn

    from workers.logs import setup_process

    setup_process(settings.log_format, settings.log_level)
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=workers if workers > 1 else None,
        factory=workers > 1,
        log_config=None,
        log_level="info",
        proxy_headers=False,
        server_header=False,
        access_log=False,
    )
