"""When the C-level batch lookups release the GIL: one threshold for the modules that cimport this file."""

# Smaller batches (a unary call is a batch of one) keep the GIL: releasing it costs a thread switch, and up to
# the 5 ms switch interval to get it back, whenever another thread waits for it; far more than their work.
cdef enum:
    RELEASE_GIL_MIN_ITEMS = 64
