"""Capture ingest: uploads (images, folders, zips, videos, captures with poses) -> clean images."""

from core.ingest.archive import ZipLimits, safe_extract_zip
from core.ingest.exif import CameraPrior
from core.ingest.pipeline import ingest
from core.ingest.types import IngestConfig, IngestResult

__all__ = ["CameraPrior", "IngestConfig", "IngestResult", "ZipLimits", "ingest", "safe_extract_zip"]
