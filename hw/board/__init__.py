"""Boards: the UART link's gateware, the board top, the board table, bitstream builds and the host client."""
