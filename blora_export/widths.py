"""The bitwidths a quantizer can take (no torch: the command line reads these before anything heavy loads)."""

WIDTHS = (2, 4, 8, 16, 32)
FLOAT_BITS = 32  # 32 bits means "keep the float value": no grid, no clipping
