"""`ctl data fetch`: download a dataset's images into the content-addressed cache, politely and resumably.

Reads the ``image_url`` column of DIR/scenes.parquet and DIR/products.parquet, fetches what the
cache (:mod:`jobs.data.image_cache`) does not hold yet, then writes ``DIR/images.parquet`` (every
cached URL -> its local file, relative to DIR when the cache is inside it), ``DIR/fetch_report.json``
(the counts and every failure with its reason) and rewrites ``DIR/catalog.parquet`` to the
products that now have a local image. URLs that failed for good on an earlier run (a 404, a page
that is not an image) are not asked again unless ``--retry-failed``.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import click
import pyarrow.parquet as pq

from common.errors import ArtifactError, CtlError, NothingProducedError
from common.files import write_json_atomic
from jobs.data.catalog_manifest import write_catalog
from jobs.data.fetcher import FetchConfig, Fetcher, FetchResult
from jobs.data.image_cache import ImageCache
from jobs.data.image_map import write_image_map
from jobs.data.layouts import FETCH_REPORT, IMAGE_CACHE, IMAGES, PRODUCTS, SCENES


class IncompleteFetchError(CtlError):
    """--strict was asked for and some images could not be fetched."""


def manifest_urls(root: Path, column: str = "image_url") -> list[str]:
    """The distinct non-empty URLs of `column` in DIR/scenes.parquet and DIR/products.parquet."""
    urls: dict[str, None] = {}
    found = False
    for name in (SCENES, PRODUCTS):
        path = root / name
        if path.exists() and column in pq.read_schema(path).names:
            found = True
            for u in pq.read_table(path, columns=[column]).column(column).to_pylist():
                if u:
                    urls[u] = None
    if not found:
        raise ArtifactError(f"{root}: no {SCENES} or {PRODUCTS} with a {column!r} column "
                            "(write them with `ctl data stl` or `ctl data catalog`)")
    return list(urls)


def fetch_dataset(root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  config: FetchConfig | None = None, url_column: str = "image_url",
                  progress: bool | None = None) -> FetchResult:
    """Fetch every image URL of DIR's manifests; write images.parquet, fetch_report.json, catalog.parquet.

    NothingProducedError (after writing the report) when there were URLs and not one image is usable.
    """
    root, config = Path(root), config or FetchConfig()
    urls = manifest_urls(root, url_column)
    cache = ImageCache(cache_dir if cache_dir is not None else root / IMAGE_CACHE)
    result = Fetcher(cache, config).run(urls, progress=progress)
    write_image_map(root, [result.entries[u] for u in urls if u in result.entries])
    write_json_atomic(root / FETCH_REPORT, {
        "urls": len(urls), "cached": result.cached, "fetched": result.fetched, "failed": len(result.failures),
        "remembered": result.remembered,
        "requests": result.requests, "bytes": result.bytes, "seconds": round(result.seconds, 3),
        "bytes_per_s": round(result.bytes / max(result.seconds, 1e-9)), "cache": str(cache.root),
        "base_url": config.base_url, "reasons": result.reasons,
        "failures": [asdict(f) for f in result.failures],
    })
    if (root / PRODUCTS).exists():
        write_catalog(root)
    if urls and not result.entries:
        raise NothingProducedError(f"none of the {len(urls)} images could be fetched ({_by_reason(result)}); "
                                   f"details in {root / FETCH_REPORT}")
    return result


def _by_reason(result: FetchResult) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(result.reasons.items(), key=lambda kv: -kv[1]))


class HttpUrl(click.ParamType):
    """A click parameter type: an http:// or https:// URL with a host."""

    name = "URL"

    def convert(self, value, param, ctx):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc:
            return value
        self.fail(f"must be an http(s) URL, got {value!r}", param, ctx)


@click.command()
@click.argument("root", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base-url", type=HttpUrl(), default=None,
              help="Mirror to fetch from instead: replaces scheme://host of each URL.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Content-addressed image cache [default: DIR/{IMAGE_CACHE}].")
@click.option("--workers", default=FetchConfig.workers, show_default=True, type=click.IntRange(1, 256))
@click.option("--rate", default=FetchConfig.rate, show_default=True, type=click.FloatRange(0),
              help="Requests per second over all workers (0: unlimited).")
@click.option("--timeout", default=FetchConfig.timeout, show_default=True, type=click.FloatRange(0.01),
              help="Seconds to connect and between bytes.")
@click.option("--retries", default=FetchConfig.retries, show_default=True, type=click.IntRange(0))
@click.option("--backoff", default=FetchConfig.backoff, show_default=True, type=click.FloatRange(0),
              help="Base of the exponential backoff, seconds.")
@click.option("--url-column", default="image_url", show_default=True)
@click.option("--retry-failed", is_flag=True,
              help="Ask again for URLs an earlier run found failing for good (404s, pages that are not images).")
@click.option("--strict", is_flag=True, help="Exit non-zero when any image failed.")
def fetch_command(root: Path, base_url: str | None, cache_dir: Path | None, workers: int, rate: float,
                  timeout: float, retries: int, backoff: float, url_column: str, retry_failed: bool,
                  strict: bool) -> None:
    """Download the images of DIR's manifests into a cache; write DIR/images.parquet and a report."""
    config = FetchConfig(workers=workers, rate=rate, burst=max(1, workers), timeout=timeout, retries=retries,
                         backoff=backoff, base_url=base_url, retry_failed=retry_failed)
    result = fetch_dataset(root, cache_dir=cache_dir, config=config, url_column=url_column)
    total = result.cached + result.fetched + len(result.failures)
    remembered = (f" ({result.remembered} known from an earlier run, not asked again; --retry-failed asks again)"
                  if result.remembered else "")
    click.echo(f"{total} images: {result.cached} already cached, {result.fetched} fetched "
               f"({result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s, {result.requests} requests), "
               f"{len(result.failures)} failed{remembered}")
    if result.failures:
        click.echo(f"failures by reason: {_by_reason(result)}; details in {root / FETCH_REPORT}", err=True)
        if strict:
            raise IncompleteFetchError(f"{len(result.failures)} of {total} images could not be fetched")
    click.echo(f"wrote {root / IMAGES}")
