"""The gateware: the event-driven TTFS core in Amaranth, its cycle model, resources and boards."""
