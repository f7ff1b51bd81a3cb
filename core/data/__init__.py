"""Training data on the host: every pixel as uint8 colour, streamed to the device in batches.

PixelStore (core.data.pixels) holds the pixels; RayBatchStream / PatchStream (core.data.stream)
plan, gather and copy batches in a background thread; core.data.selective steers part of each
batch towards image tiles with a high running loss.
"""

from core.data.pixels import PixelStore
from core.data.selective import SelectiveConfig
from core.data.stream import PatchBatch, PatchStream, PixelBatch, RayBatchStream

__all__ = ["PatchBatch", "PatchStream", "PixelBatch", "PixelStore", "RayBatchStream", "SelectiveConfig"]
