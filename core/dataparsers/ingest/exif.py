"""EXIF camera priors (make, model, focal length) and GPS position of one photo."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image
from PIL.ExifTags import IFD

_MAKE, _MODEL = 0x010F, 0x0110
_FOCAL_MM, _FOCAL_35MM = 0x920A, 0xA405
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT = 1, 2, 3, 4, 5, 6
# A 35 mm film frame is 36 mm wide; like COLMAP, we map the equivalent focal length onto the
# image's longer side.
_FILM_WIDTH_MM = 36.0


@dataclass(frozen=True)
class CameraPrior:
    """What one image says about its camera and position.

    width, height: pixels, after the EXIF orientation has been applied.
    focal_px: focal length in pixels at (width, height), from `FocalLengthIn35mmFilm`, or None.
    focal_mm, focal_35mm: the raw EXIF values (mm), or None.
    gps: (latitude_deg, longitude_deg, altitude_m) WGS84, or None. Altitude 0 when not recorded.
    sharpness: Laplacian variance at 512 px (see core.dataparsers.ingest.sharpness); higher is sharper.
    """

    width: int
    height: int
    make: str | None = None
    model: str | None = None
    focal_mm: float | None = None
    focal_35mm: float | None = None
    focal_px: float | None = None
    gps: tuple[float, float, float] | None = None
    sharpness: float = 0.0

    def camera_key(self) -> tuple:
        """Images with equal keys come from one device and share one camera in SfM."""
        return (self.make, self.model, self.width, self.height)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "make": self.make, "model": self.model,
                "focal_mm": self.focal_mm, "focal_35mm": self.focal_35mm, "focal_px": self.focal_px,
                "gps": list(self.gps) if self.gps else None, "sharpness": self.sharpness}


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    s = str(value).replace("\x00", "").strip()
    return s or None


def _number(value: object) -> float | None:
    try:
        v = float(value)  # IFDRational and plain numbers
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _dms(value: object, ref: object, negative_ref: str) -> float | None:
    """(degrees, minutes, seconds) + hemisphere reference -> signed decimal degrees."""
    try:
        d, m, s = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    deg = d + m / 60.0 + s / 3600.0
    if not math.isfinite(deg):
        return None
    return -deg if _text(ref) == negative_ref else deg


def _gps(gps_ifd: dict) -> tuple[float, float, float] | None:
    lat = _dms(gps_ifd.get(_GPS_LAT), gps_ifd.get(_GPS_LAT_REF), "S")
    lon = _dms(gps_ifd.get(_GPS_LON), gps_ifd.get(_GPS_LON_REF), "W")
    if lat is None or lon is None or (lat == 0.0 and lon == 0.0) or abs(lat) > 90 or abs(lon) > 180:
        return None
    try:
        alt = float(gps_ifd.get(_GPS_ALT, 0.0))
    except (TypeError, ValueError, ZeroDivisionError):
        alt = 0.0
    ref = gps_ifd.get(_GPS_ALT_REF)
    if ref in (1, b"\x01"):
        alt = -alt
    return lat, lon, alt if math.isfinite(alt) else 0.0


def read_camera_prior(image: Image.Image, width: int, height: int, sharpness: float = 0.0) -> CameraPrior:
    """EXIF priors of an opened (not yet transposed) Pillow image.

    width, height: the image size after applying the EXIF orientation (pixels).
    """
    exif = image.getexif()
    sub = exif.get_ifd(IFD.Exif)
    focal_mm = _number(sub.get(_FOCAL_MM))
    focal_35 = _number(sub.get(_FOCAL_35MM))
    focal_px = focal_35 / _FILM_WIDTH_MM * max(width, height) if focal_35 else None
    return CameraPrior(width=width, height=height, make=_text(exif.get(_MAKE)), model=_text(exif.get(_MODEL)),
                       focal_mm=focal_mm, focal_35mm=focal_35, focal_px=focal_px,
                       gps=_gps(exif.get_ifd(IFD.GPSInfo)), sharpness=sharpness)
