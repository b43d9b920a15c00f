"""Neighbour search over the reference set with faiss: flat L2 index, on the GPU when present."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

# faiss searches batches of at least this many queries through BLAS. One thread, 1,749-200,000
# references of 384 dims: BLAS is 2-7x faster from 16 queries up, as fast at 8, and ~5x slower
# for a lone query (faiss' default, 20, left 8-19 on the slow path; docs/experiments.md §32).
faiss.cvar.distance_compute_blas_threshold = 8
# Queries whose neighbour distances are recomputed at once: a block's float64 differences stay
# in cache (256 ran 2.7x slower a row than 32 at batches of 256-1024, same results).
EXACT_BLOCK = 32
GPU_MAX_K = 2048  # the most neighbours faiss' GPU search returns
TIE_MARGIN = 8  # extra neighbours fetched so that faiss' rounding cannot change the k nearest
TIE_TOLERANCE = 1e-5  # of |q|^2 + |x|^2: well beyond faiss' float32 rounding


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def search_in_one_thread() -> None:
    """Make faiss search with one OpenMP thread in the calling thread (OpenMP keeps the setting
    per thread). Batches refined side by side call it: each batch's search then stays on its own
    core instead of two OpenMP teams waiting on each other's descheduled threads (chunks of 37
    rows on 2 cores: 1.14 -> 0.36 ms a row, docs/experiments.md §21)."""
    faiss.omp_set_num_threads(1)


@contextlib.contextmanager
def one_search_thread() -> Iterator[None]:
    """:func:`search_in_one_thread` for a block of the calling thread's work, then the thread's
    own setting back. A lone batch that side-by-side refining runs in the caller (a chunk of a
    few rows, a chunk's close calls) would otherwise start a two-thread OpenMP team whose idle
    thread spins on the core the other batches need (42% of refine's CPU at chunks of one row,
    docs/experiments.md §32)."""
    before = faiss.omp_get_max_threads()
    search_in_one_thread()
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class NeighborIndex:
    """Exact L2 kNN over reference embeddings, returning real distances and reference labels."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, use_gpu: bool | None = None):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        index: faiss.Index = faiss.IndexFlatL2(embeddings.shape[1])
        self._max_fetch = len(embeddings)
        # Batches refined side by side search from several threads: faiss' CPU indexes allow
        # concurrent searches, its GPU resources do not.
        self._lock: Any = contextlib.nullcontext()
        if (gpu_available() if use_gpu is None else use_gpu) and len(embeddings):
            self._max_fetch = min(len(embeddings), GPU_MAX_K)
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
            self._lock = threading.Lock()
        index.add(embeddings)
        squared_norms = (embeddings.astype(np.float64) ** 2).sum(axis=1)
        self._max_squared_norm = float(squared_norms.max(initial=0.0))
        self.index = index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) L2 distances and neighbour labels; missing neighbours have label -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k_eff = min(k, len(self))
        if k_eff == 0:
            return np.full((len(queries), k), np.inf), np.full((len(queries), k), -1)
        distances, ids = self._nearest(queries, k_eff)
        labels = np.where(ids >= 0, self.labels[np.maximum(ids, 0)], -1)
        if k_eff < k:
            pad = k - k_eff
            distances = np.pad(distances, ((0, 0), (0, pad)), constant_values=np.inf)
            labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
        return distances, labels

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, k') L2 distances and reference ids of the k' = min(k, len) nearest."""
        k_eff = min(k, len(self))
        if k_eff == 0:
            return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), dtype=np.int64)
        return self._nearest(np.ascontiguousarray(queries, dtype=np.float32), k_eff)

    def _nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest by exact distance, ties broken by the lower id: the same neighbours
        whatever the query batch. faiss ranks by its own rounded distances and picks among
        equally distant references (duplicate texts) by its heap's order, so it is asked for
        a margin of extra neighbours, more until the k-th's distance is clear of the last
        fetched one, and the k nearest are chosen here."""
        fetch = min(k + TIE_MARGIN, self._max_fetch)
        # faiss' error in a squared distance grows with |q|^2 + |x|^2 (float32 arithmetic)
        rounding = TIE_TOLERANCE * ((queries.astype(np.float64) ** 2).sum(axis=1)
                                    + self._max_squared_norm)
        while True:
            with self._lock:
                _, ids = self.index.search(queries, fetch)
            distances, ids = self._exact_distances(queries, ids)
            gap = distances[:, fetch - 1] ** 2 - distances[:, k - 1] ** 2
            if fetch == self._max_fetch or not np.any(gap <= rounding):
                return distances[:, :k], ids[:, :k]
            fetch = min(2 * fetch, self._max_fetch)

    def _exact_distances(
        self, queries: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances to the found neighbours recomputed row by row, nearest first (ties by id).

        faiss computes them through BLAS as |q|^2 + |x|^2 - 2 q.x, whose rounding depends on the
        query batch and the thread count on some CPUs; the kNN vote must not, or a resumed or
        differently chunked run would write different bytes.
        """
        distances = np.empty(ids.shape, dtype=np.float64)
        for start in range(0, len(ids), EXACT_BLOCK):  # bounded memory: block x k x dim floats
            block = ids[start : start + EXACT_BLOCK]
            with self._lock:
                vectors = self.index.reconstruct_batch(np.maximum(block, 0).reshape(-1))
            diff = vectors.reshape(*block.shape, -1).astype(np.float64) - queries[
                start : start + EXACT_BLOCK, None, :
            ].astype(np.float64)
            distances[start : start + EXACT_BLOCK] = np.sqrt((diff * diff).sum(axis=-1))
        distances[ids < 0] = np.inf
        order = np.lexsort((ids, distances), axis=-1)
        return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)
