"""model_server: a forked worker's /dev/null links in place of MMS's FIFOs, and the template's removal of the
ones it listed, which a model's own code could have rewritten."""

from __future__ import annotations

import os
import threading

from torch_mme.runtime import model_server


def remove_in_time(listing: str, tmp_dir: str, seconds: float = 5.0) -> None:
    done = threading.Event()
    threading.Thread(target=lambda: (model_server.remove_links(listing, tmp_dir), done.set()), daemon=True).start()
    assert done.wait(seconds), "remove_links blocked"


def test_only_listed_links_to_dev_null_named_as_mms_names_them_in_the_tmp_folder_go(tmp_path):
    tmp_dir, elsewhere = tmp_path / "tmp", tmp_path / "elsewhere"
    tmp_dir.mkdir()
    elsewhere.mkdir()
    ours = [tmp_dir / "abc-stdout", tmp_dir / "abc-stderr"]
    for link in ours:
        link.symlink_to(os.devnull)
    kept = {
        "a regular file": tmp_dir / "file-stdout",
        "a link elsewhere": tmp_dir / "other-stdout",
        "another folder": elsewhere / "abc-stdout",
        "another name": tmp_dir / "abc-stdin",
    }
    kept["a regular file"].write_text("keep me")
    kept["a link elsewhere"].symlink_to(tmp_path / "elsewhere")
    kept["another folder"].symlink_to(os.devnull)
    kept["another name"].symlink_to(os.devnull)
    listing = tmp_path / "1.links"
    lines = [*map(str, ours), *map(str, kept.values()), "\x00-stdout", str(tmp_dir / "missing-stdout")]
    listing.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe-stdout\n")
    remove_in_time(str(listing), str(tmp_dir))
    assert not any(os.path.lexists(link) for link in ours)
    assert all(os.path.lexists(path) for path in kept.values()), [k for k, p in kept.items() if not os.path.lexists(p)]
    assert not listing.exists()


def test_a_listing_that_is_a_fifo_or_a_device_is_not_read(tmp_path):
    fifo = tmp_path / "1.links"
    os.mkfifo(fifo)
    remove_in_time(str(fifo), str(tmp_path))  # opening a FIFO to read would wait for a writer forever
    device = tmp_path / "2.links"
    device.symlink_to("/dev/zero")  # reading it would never end
    remove_in_time(str(device), str(tmp_path))
    assert device.is_symlink()  # left: not followed
