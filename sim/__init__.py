"""Reference models: the golden model and the event-by-event model (numpy only), and :mod:`ttfs.sim.verify`."""
