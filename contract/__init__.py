"""The contract layer: bundle format and validation, $readmemh, the event-stream and pixel-beat
codec, datasets as numpy arrays, bounded npz reading, the board table, the host link's wire format,
packaged files, JSON reports and the one error type.  Numpy only."""
