"""Verification: the cocotb flow and testbenches, the scoreboard, spike rasters and cycle measurements.

The testbench modules (``tb_*``) run inside the simulator, never under pytest."""
