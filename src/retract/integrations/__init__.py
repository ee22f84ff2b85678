"""Entry points for web frameworks and task runners: a session per request or job.

Each framework module is an optional extra and imports its framework only itself:
``retract.integrations.fastapi``, ``.starlette``, ``.aiohttp``, ``.arq`` and ``.taskiq``.
They share :class:`ResponseFailed` and :func:`current_session`.
"""

from ._core import ResponseFailed as ResponseFailed
from ._core import current_session as current_session

__all__ = ("ResponseFailed", "current_session")
