"""Capture ingest: uploads (images, folders, zips, videos, captures with poses) -> clean images."""

from core.dataparsers.ingest.archive import ZipLimits, safe_extract_zip
from core.dataparsers.ingest.exif import CameraPrior
from core.dataparsers.ingest.pipeline import ingest
from core.dataparsers.ingest.types import IngestConfig, IngestResult

__all__ = ["CameraPrior", "IngestConfig", "IngestResult", "ZipLimits", "ingest", "safe_extract_zip"]
