"""FolderListings: one listing per bucket folder answers "is this key there?" for every file."""

from __future__ import annotations

import threading

from chunkd.errors import RetryableError
from chunkd.s3.listing import FolderListings


class FakeUploader:
    def __init__(self, folders: dict[str, set[str] | None], *, fail: bool = False) -> None:
        self.folders = folders
        self.fail = fail
        self.calls: list[tuple[str, str, int]] = []

    def list_folder(self, bucket: str, folder: str, *, max_pages: int) -> set[str] | None:
        self.calls.append((bucket, folder, max_pages))
        if self.fail:
            raise RetryableError("connection refused", code="ConnectionError")
        return self.folders.get(folder, set())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_listing_answers_for_every_key_in_the_folder() -> None:
    uploader = FakeUploader({"cam/": {"cam/a.mp4.manifest.json", "cam/a.mp4"}})
    listings = FolderListings(uploader)  # type: ignore[arg-type]
    assert listings.may_hold("b", "cam/a.mp4.manifest.json")
    assert not listings.may_hold("b", "cam/b.mp4.manifest.json")
    assert not listings.may_hold("b", "cam/c.mp4.manifest.json")
    assert uploader.calls == [("b", "cam/", 10)]


def test_folders_and_buckets_are_listed_separately() -> None:
    uploader = FakeUploader({"": {"top.manifest.json"}, "a/b/": set()})
    listings = FolderListings(uploader)  # type: ignore[arg-type]
    assert listings.may_hold("b", "top.manifest.json")
    assert not listings.may_hold("b", "a/b/x.manifest.json")
    assert not listings.may_hold("other", "a/b/x.manifest.json")
    assert [(bucket, folder) for bucket, folder, _ in uploader.calls] == [("b", ""), ("b", "a/b/"), ("other", "a/b/")]


def test_a_folder_too_big_to_list_or_a_failed_listing_answers_maybe() -> None:
    assert FolderListings(FakeUploader({"big/": None})).may_hold("b", "big/x")  # type: ignore[arg-type]
    assert FolderListings(FakeUploader({}, fail=True)).may_hold("b", "any/x")  # type: ignore[arg-type]


def test_a_listing_is_made_again_after_its_ttl() -> None:
    uploader = FakeUploader({"f/": set()})
    clock = Clock()
    listings = FolderListings(uploader, ttl=60, clock=clock)  # type: ignore[arg-type]
    listings.may_hold("b", "f/x")
    clock.now = 59
    listings.may_hold("b", "f/y")
    assert len(uploader.calls) == 1
    uploader.folders["f/"] = {"f/x"}
    clock.now = 61
    assert listings.may_hold("b", "f/x")
    assert len(uploader.calls) == 2


def test_workers_asking_at_once_share_one_listing() -> None:
    uploader = FakeUploader({"f/": set()})
    listings = FolderListings(uploader)  # type: ignore[arg-type]
    barrier = threading.Barrier(16)

    def ask(n: int) -> None:
        barrier.wait()
        listings.may_hold("b", f"f/{n}")

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(uploader.calls) == 1
