"""cocotb testbenches of the hardware core; run through :mod:`sim.cocotb_flow`, never imported by pytest."""
