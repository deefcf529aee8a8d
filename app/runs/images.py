"""The images of a run's prompt, made data URLs before the prompt goes to any provider.

`build_prompt` leaves each image of a user message as a part tagged with where it came from
(`SOURCE`); `PromptImages.inline` replaces it with an `image_url` part holding a
`data:<mime>;base64,…` URL: `image_url` URLs downloaded by `app.llm.images.ImageFetcher`
(OPENGROVE_IMAGE_URLS=inline, the default; `pass` hands http(s) URLs to the provider as they
are), `image_file` parts read from the run's project's files. The `detail` is kept. A failure
fails the run with `invalid_prompt` and a message naming the part; the raw cause goes to the
log. Nothing is cached beyond the run (its own cache spares a multi-turn run the downloads).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.db import Database
from app.errors import NotFound
from app.files.service import file_path, get_file
from app.llm.adapter import LLMError
from app.llm.images import SUPPORTED, Image, ImageFetcher, ImageFetchError, data_url, sniff
from app.runs.outcomes import RunCancelled

logger = logging.getLogger("opengrove.runs")

SOURCE = "_source"  # on an image part of a built prompt: where it is ("content[0]… of msg_…")
MAX_IMAGES = 500  # per model call, as OpenAI
MAX_TOTAL_BYTES = 50 * 1024 * 1024  # per model call (OpenAI: 50 MB of payload)
DOWNLOADS_PER_RUN = 4  # at once


@dataclass(frozen=True)
class Inlined:
    url: str  # data:<mime>;base64,…
    size: int  # bytes of the image


# One run's images: cache key ("url:…" / "file:…") → the image, or None for a deleted file.
ImageCache = dict[str, Inlined | None]


class _Failed(Exception):
    def __init__(self, order: int, message: str) -> None:
        super().__init__(message)
        self.order = order
        self.message = message


@dataclass(frozen=True)
class _Wanted:
    order: int  # position in the prompt: the first failure in prompt order is reported
    where: str
    url: str | None = None
    file_id: str | None = None


def has_images(messages: list[dict[str, Any]]) -> bool:
    """Whether a built prompt has image parts to inline."""
    return any(
        isinstance(m.get("content"), list) and any(SOURCE in p for p in m["content"])
        for m in messages
    )


class PromptImages:
    def __init__(
        self, db: Database, files_dir: Path, fetcher: ImageFetcher | None, max_bytes: int
    ) -> None:
        self.db = db
        self.files_dir = files_dir
        self.fetcher = fetcher  # None: image URLs go to the provider as they are
        self.max_bytes = max_bytes
        self.max_total = max(MAX_TOTAL_BYTES, max_bytes)

    def _key(self, part: dict[str, Any]) -> str | None:
        """The cache key of an image part, or None when it goes out as it is."""
        if part["type"] == "image_file":
            return f"file:{part['image_file']['file_id']}"
        url = part["image_url"]["url"]
        if self.fetcher is None or url.startswith("data:"):
            return None
        return f"url:{url}"

    async def inline_unless_cancelled(
        self,
        messages: list[dict[str, Any]],
        project_id: str,
        cache: ImageCache,
        cancel: asyncio.Event,
    ) -> list[dict[str, Any]]:
        """`inline`, ended early (`RunCancelled`) when the run is cancelled meanwhile."""
        if not has_images(messages):
            return messages
        inlining = asyncio.ensure_future(self.inline(messages, project_id, cache))
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({inlining, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if not inlining.done():
                raise RunCancelled()
            return inlining.result()
        finally:
            cancelled.cancel()
            if not inlining.done():
                inlining.cancel()
                await asyncio.wait({inlining})

    async def inline(
        self, messages: list[dict[str, Any]], project_id: str, cache: ImageCache
    ) -> list[dict[str, Any]]:
        """`messages` with every tagged image part made a data URL (or passed on)."""
        tagged = [
            m
            for m in messages
            if isinstance(m.get("content"), list) and any(SOURCE in p for p in m["content"])
        ]
        if not tagged:
            return messages
        wanted: dict[str, _Wanted] = {}
        count = 0
        for message in tagged:
            for part in message["content"]:
                if SOURCE not in part:
                    continue
                count += 1
                key = self._key(part)
                if key is not None and key not in cache and key not in wanted:
                    wanted[key] = _Wanted(
                        len(wanted),
                        part[SOURCE],
                        url=part["image_url"]["url"] if part["type"] == "image_url" else None,
                        file_id=part["image_file"]["file_id"]
                        if part["type"] == "image_file"
                        else None,
                    )
        if count > MAX_IMAGES:
            raise LLMError("invalid_prompt", f"The prompt has more than {MAX_IMAGES} images.")
        if wanted:
            await self._load(wanted, project_id, cache)
        total = 0
        inlined: list[dict[str, Any]] = []
        tagged_ids = {id(m) for m in tagged}
        for message in messages:
            if id(message) not in tagged_ids:
                inlined.append(message)
                continue
            parts = []
            for part in message["content"]:
                if SOURCE not in part:
                    parts.append(part)
                    continue
                key = self._key(part)
                if key is None:
                    parts.append({k: v for k, v in part.items() if k != SOURCE})
                    continue
                image = cache[key]
                details = part[part["type"]]
                if image is None:
                    parts.append(
                        {"type": "text", "text": f"[image file {details['file_id']}: deleted]"}
                    )
                    continue
                total += image.size
                image_url = {"url": image.url}
                if details.get("detail"):
                    image_url["detail"] = details["detail"]
                parts.append({"type": "image_url", "image_url": image_url})
            inlined.append({**message, "content": parts})
        if total > self.max_total:
            raise LLMError("invalid_prompt", self._too_much())
        return inlined

    def _too_much(self) -> str:
        return f"The prompt's images add up to more than {self.max_total} bytes."

    async def _load(self, wanted: dict[str, _Wanted], project_id: str, cache: ImageCache) -> None:
        """Download or read every wanted image, a few at once; the first failure (in prompt
        order) fails the lot."""
        slots = asyncio.Semaphore(DOWNLOADS_PER_RUN)
        loaded = 0

        async def load(key: str, item: _Wanted) -> None:
            nonlocal loaded
            async with slots:
                image = await self._image(item, project_id)
            if image is not None:
                loaded += image.size
                if loaded > self.max_total:
                    raise _Failed(-1, self._too_much())
            cache[key] = image

        try:
            async with asyncio.TaskGroup() as group:
                for key, item in wanted.items():
                    group.create_task(load(key, item))
        except* _Failed as failures:
            first = min(failures.exceptions, key=lambda e: e.order if isinstance(e, _Failed) else 0)
            assert isinstance(first, _Failed)
            raise LLMError("invalid_prompt", first.message) from None

    async def _image(self, item: _Wanted, project_id: str) -> Inlined | None:
        try:
            if item.url is not None:
                assert self.fetcher is not None
                image = await self.fetcher.fetch(item.url)
            else:
                assert item.file_id is not None
                found = await self._file(item.file_id, project_id)
                if found is None:
                    return None
                image = found
        except ImageFetchError as exc:
            logger.warning(
                "image at %s (%s) refused: %s (%r)",
                item.where,
                f"host {urlsplit(item.url).hostname}" if item.url else "uploaded file",
                exc.reason,
                exc.__cause__ or exc,
            )
            if item.url is not None:
                message = f"Could not download the image at {item.where}: {exc.reason}."
            else:
                message = f"Could not use the image file {item.file_id} at {item.where}: " + (
                    f"{exc.reason}."
                )
            raise _Failed(item.order, message) from None
        return Inlined(await data_url(image), len(image.data))

    async def _file(self, file_id: str, project_id: str) -> Image | None:
        """An uploaded file of the run's project (None when it was deleted or expired)."""
        async with self.db.sessionmaker() as session:
            try:
                row = await get_file(session, project_id, file_id)
            except NotFound:
                return None
        if row.bytes > self.max_bytes:
            raise ImageFetchError(f"it is larger than {self.max_bytes} bytes")
        path = file_path(self.files_dir, file_id)
        try:
            data = await asyncio.to_thread(_read_at_most, path, self.max_bytes + 1)
        except OSError as exc:
            raise ImageFetchError("its bytes could not be read") from exc
        if len(data) > self.max_bytes:
            raise ImageFetchError(f"it is larger than {self.max_bytes} bytes")
        mime = sniff(data[:16])
        if mime is None:
            raise ImageFetchError(f"it is not {SUPPORTED}")
        return Image(mime, data)


def _read_at_most(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        return f.read(limit)
