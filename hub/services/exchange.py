"""The hub's two file paths, export to media and import from it: one name for callers.

The work is split by concept (STYLE.md §11):

- :mod:`hub.services.export` — write a signed bundle for every queued deployment;
- :mod:`hub.services.result_import` — import result files in batches;
- :mod:`hub.services.import_files` — the per-file pieces of an import (rows, copying
  reader, claims, fsyncs);
- :mod:`hub.services.enrollment_import` — offline enrollment requests found on the media.

This module only re-exports their public names, so views, the CLI and the live server keep
importing ``hub.services.exchange``. It holds no code of its own.
"""

from __future__ import annotations

from hub.services.export import (
    DEFAULT_EXPIRY,
    ExportedBundle,
    ExportReport,
    ProgressFn,
    export_environment,
)
from hub.services.import_files import ImportReport, ImportRow
from hub.services.result_import import (
    DEFAULT_IMPORT_BATCH,
    MAX_IMPORT_BATCH,
    RESULT_STATES,
    import_directory,
    import_result,
)

__all__ = [
    "DEFAULT_EXPIRY",
    "DEFAULT_IMPORT_BATCH",
    "MAX_IMPORT_BATCH",
    "RESULT_STATES",
    "ExportReport",
    "ExportedBundle",
    "ImportReport",
    "ImportRow",
    "ProgressFn",
    "export_environment",
    "import_directory",
    "import_result",
]
