"""Training data on the host: every pixel as uint8 colour, streamed to the device in batches.

PixelStore (core.engine.data.pixels) holds the pixels; RayBatchStream / PatchStream (core.engine.data.stream)
plan, gather and copy batches in a background thread; core.engine.data.selective steers part of each
batch towards image tiles with a high running loss.
"""

from core.engine.data.pixels import PixelStore
from core.engine.data.selective import SelectiveConfig
from core.engine.data.stream import PatchBatch, PatchStream, PixelBatch, RayBatchStream

__all__ = ["PatchBatch", "PatchStream", "PixelBatch", "PixelStore", "RayBatchStream", "SelectiveConfig"]
