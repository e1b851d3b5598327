"""Cached folders are published whole: a private temporary folder, then one rename (workbench/stores.py)."""

from __future__ import annotations

from workbench.stores import partial_dir, publish_once


def _folder(path, weights: bytes | None):
    path.mkdir(parents=True)
    if weights is not None:
        (path / "model.safetensors").write_bytes(weights)
    return path


def test_partial_dir_is_private_and_empty(tmp_path):
    target = tmp_path / "cache" / "base"
    first = partial_dir(target)
    _folder(first, b"stale")
    again = partial_dir(target)
    assert again == first and not again.exists()  # a leftover of this process is cleared
    assert again.parent == target.parent and again.name.startswith("base.partial-")


def test_publish_moves_the_folder_into_place(tmp_path):
    target = tmp_path / "cache" / "models" / "base"
    tmp = _folder(partial_dir(target), b"ours")
    publish_once(tmp, target)
    assert (target / "model.safetensors").read_bytes() == b"ours" and not tmp.exists()


def test_a_complete_folder_published_first_wins(tmp_path):
    target = _folder(tmp_path / "base", b"theirs")
    tmp = _folder(partial_dir(target), b"ours")
    publish_once(tmp, target)
    assert (target / "model.safetensors").read_bytes() == b"theirs" and not tmp.exists()


def test_an_incomplete_leftover_is_replaced(tmp_path):
    target = _folder(tmp_path / "base", None)  # a killed job's folder without weights
    (target / "config.json").write_text("{}")
    tmp = _folder(partial_dir(target), b"ours")
    publish_once(tmp, target)
    assert (target / "model.safetensors").read_bytes() == b"ours" and not (target / "config.json").exists()


def test_completeness_is_the_callers_rule(tmp_path):
    # a GGUF cache also needs config.json: weights alone are not a usable model folder
    target = _folder(tmp_path / "base", b"weights only")
    tmp = _folder(partial_dir(target), b"ours")
    (tmp / "config.json").write_text("{}")
    publish_once(tmp, target, complete=lambda p: (p / "config.json").is_file())
    assert (target / "config.json").is_file() and (target / "model.safetensors").read_bytes() == b"ours"
