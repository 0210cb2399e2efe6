"""Editors of a saved bundle, shared by the malformed-bundle tests (v1 and v2).

Each returns a function of the bundle directory that changes one thing in
place: ``edit_json(change)`` rewrites network.json, ``edit_array(key,
change)`` one array of params.npz (``None`` deletes it); ``set_field`` and
``delete_field`` build the JSON changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def edit_json(change):
    def apply(path: Path) -> None:
        document = json.loads((path / "network.json").read_text())
        change(document)
        (path / "network.json").write_text(json.dumps(document))

    return apply


def edit_array(key, change):
    def apply(path: Path) -> None:
        with np.load(path / "params.npz", allow_pickle=False) as params:
            arrays = {name: params[name] for name in params.files}
        replacement = change(arrays[key]) if key in arrays else None
        if replacement is None:
            arrays.pop(key, None)
        else:
            arrays[key] = replacement
        np.savez(path / "params.npz", **arrays)

    return apply


def set_field(*keys_and_value):
    *keys, value = keys_and_value

    def change(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def delete_field(*keys):
    def change(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change
