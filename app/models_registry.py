"""Imports every domain's tables so `Base.metadata` is complete (for Alembic)."""

from app.assistants import models as assistants_models
from app.auth import models as auth_models
from app.db import Base
from app.files import models as files_models
from app.runs import models as runs_models
from app.threads import models as threads_models
from app.vector_stores import models as vector_stores_models

__all__ = [
    "Base",
    "assistants_models",
    "auth_models",
    "files_models",
    "runs_models",
    "threads_models",
    "vector_stores_models",
]
