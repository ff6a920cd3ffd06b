"""Names of the files a save leaves behind while it runs, and where a save lands (``envkit.atomic``)."""

from __future__ import annotations

from envkit.atomic import TEMP_MARK, is_temp_name, temp_path_for, write_target

__all__ = ["TEMP_MARK", "is_temp_name", "temp_path_for", "write_target"]
