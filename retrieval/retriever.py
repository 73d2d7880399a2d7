"""Two-stage retrieval: FAISS top-C by the hybrid distance's query, then an exact hybrid re-rank of those C.

Stage 1 searches the product index by inner product, per category c, with the scene's hybrid query
q_c = (1 - w_c) f_s + w_c sum_r a_r(s, c) f_i[r] (pipeline.distances.hybrid_queries): for unit product
vectors the inner-product order within a category is the d_h order, so the C candidates are the hybrid's
own nearest and, on an exact index, two-stage equals exhaustive ranking. A search over every category
searches each by its own query and keeps the C best. `stage1="global"` searches by the scene's global
embedding f_s instead (the paper's pipeline: for unit vectors d_g = 2 - 2 <f_s, f_p>), one search for
every category at once. Stage 2 computes global, local and hybrid distances of the C candidates with
:func:`pipeline.distances.all_distances_by_category` (the one definition of the distances, factored per
category; tested equal to the explicit all_distances), using each candidate's
row-aligned embedding from ``embeddings.f16.npy``, the checkpoint's embedding of its category and its
hybrid local weight w for that category, and keeps the k smallest hybrid distances.

Score: ``score = 1 - d_h / 2``. For unit vectors ``1 - d_g / 2`` is the cosine similarity, so the
score is the (w-weighted) mean of the global cosine and the attention-weighted regional cosine: in [-1, 1],
higher is better, and ordering by score is ordering by hybrid distance.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from common import defaults
from common.devices import resolve_device
from common.naming import match_category
from index.store import ProductIndex
from pipeline.backbones import traced_backbone
from pipeline.calibration import FILE as CALIBRATION_FILE
from pipeline.calibration import CalibrationError, Cohort, Platt, cohort_normalise, load_calibrations
from pipeline.checkpoint import Checkpoint, check_checkpoint, load_checkpoint
from pipeline.distances import all_distances_by_category, attention_weights, hybrid_queries
from pipeline.images import image_to_tensor, load_scene
from retrieval.candidate_count import CandidateCount, candidate_count
from retrieval.results import (
    CategoryLook,
    Compatibility,
    CompatibilityResult,
    Hit,
    LookResult,
    RetrievalError,
    RetrievalResult,
    Scene,
    attention_grid,
)


class Retriever:
    """Checkpoint and product index loaded once; answers one scene at a time."""

    def __init__(self, checkpoint: Checkpoint, index: ProductIndex, *, device: str | torch.device = "cpu",
                 stage1: str = defaults.STAGE1):
        embedder = checkpoint.embedder
        if embedder.backbone is None:
            raise RetrievalError("the checkpoint was loaded without a backbone; scenes cannot be encoded")
        if stage1 not in defaults.STAGE1_MODES:
            raise RetrievalError(f"unknown stage 1 {stage1!r}; known: {', '.join(defaults.STAGE1_MODES)}")
        self.stage1 = stage1
        index.require_checkpoint(checkpoint.sha256)
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.embedder = embedder.to(self.device).eval()
        self.input_size = int(getattr(embedder.backbone, "input_size", 224))
        # channels_last: measured 25-35% faster for one 224 px scene on 2 CPU cores (depthwise convolutions).
        self.embedder.backbone.to(memory_format=torch.channels_last)
        self._backbone = self.embedder.backbone   # what encode_scenes runs; trace_backbone swaps in a graph
        self._forward = None                      # use_forward: encode_pixels answered elsewhere
        self.forward_elsewhere: dict | None = None  # ... and what runs it there (for /readyz)
        with torch.inference_mode():
            all_idx = torch.arange(len(embedder.categories), device=self.device)
            self._category_table = embedder.category_embeddings(all_idx).float().contiguous()
            self._local_weight_table = embedder.local_weights(all_idx).float()   # stage 1's hybrid queries
        self._category_to_index = dict(embedder.category_to_index)
        self._bind(index)
        recorded = checkpoint.extra.get("presence", {}).get("threshold")
        self.presence_threshold = float(recorded) if isinstance(recorded, (int, float)) else defaults.PRESENCE_THRESHOLD
        # Per category, fitted on validation for precision of "present" (the head's buffer; 0.5 in older ones).
        head = embedder.presence
        self.presence_thresholds = dict.fromkeys(embedder.categories, self.presence_threshold) if head is None else \
            dict(zip(embedder.categories, head.threshold.tolist(), strict=True))
        self.calibration, cohort, notes = _hybrid_calibration(checkpoint)
        # category -> (its index in the checkpoint's vocabulary, the cohort's M x d vectors on the device)
        self._cohort = None if cohort is None else {
            name: (self._category_to_index[name], torch.from_numpy(cohort.vectors[name]).to(self.device).float())
            for name in cohort.categories if name in self._category_to_index}
        self.notes = [*checkpoint.notes, *notes]   # what this checkpoint's run lacks, in words

    def _bind(self, index: ProductIndex) -> None:
        """Make `index` the one searched; refuse one built by another checkpoint or in another space."""
        index.require_checkpoint(self.checkpoint.sha256)
        if index.dim != self.embedder.dim:
            raise RetrievalError(
                f"index embeddings have d={index.dim} but the checkpoint's space has d={self.embedder.dim}"
            )
        # Row -> index into the checkpoint's category vocabulary, -1 where the checkpoint does not know it.
        row_category = np.full(index.n, -1, dtype=np.int64)
        for name in index.categories:
            row_category[index.rows_for_category(name)] = self._category_to_index.get(name, -1)
        self.index = index
        self._row_category = row_category

    def with_index(self, index: ProductIndex) -> Retriever:
        """A retriever over another index that shares this one's checkpoint and model (nothing is reloaded).

        For swapping in a new build while this retriever keeps answering: this one is left untouched.
        Raises CheckpointMismatchError (built from another checkpoint) or RetrievalError (another d).
        """
        other = copy.copy(self)
        other._bind(index)
        return other

    def with_stage1(self, stage1: str) -> Retriever:
        """A retriever sharing this one's model and index whose stage 1 searches by `stage1` (hybrid | global)."""
        if stage1 not in defaults.STAGE1_MODES:
            raise RetrievalError(f"unknown stage 1 {stage1!r}; known: {', '.join(defaults.STAGE1_MODES)}")
        other = copy.copy(self)
        other.stage1 = stage1
        return other

    @classmethod
    def load(
        cls,
        *,
        checkpoint: str | os.PathLike = defaults.CHECKPOINT,
        index_dir: str | os.PathLike = defaults.INDEX_DIR,
        device: str | torch.device = "cpu",
        stage1: str = defaults.STAGE1,
    ) -> Retriever:
        """Load the index (memory-mapped where FAISS allows) and the checkpoint; refuse a mismatched pair.

        Raises IndexDirError (missing or broken index), CheckpointError (missing or unreadable checkpoint),
        CheckpointMismatchError (index built by another checkpoint) or RetrievalError.
        """
        device = resolve_device(device)
        index = ProductIndex.load(index_dir)
        index.require_checkpoint(check_checkpoint(checkpoint))  # refuse a wrong file or pair before the model
        return cls(load_checkpoint(checkpoint, device=device), index, device=device, stage1=stage1)

    # -- properties ---------------------------------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        """Categories present in the index."""
        return list(self.index.categories)

    def __len__(self) -> int:
        return self.index.n

    # -- the two stages -----------------------------------------------------------------------------
    def encode_scene(self, image: Image.Image | str | os.PathLike, *, timings: dict | None = None) -> Scene:
        """One backbone forward of a scene (a PIL image or a path): its global and regional embeddings.

        `timings`, when given, receives the seconds of the "forward" stage (backbone and heads).
        """
        return self.encode_scenes([image], timings=timings)[0]

    def encode_scenes(self, images: Sequence[Image.Image | str | os.PathLike], *,
                      timings: dict | None = None, pad_to: int | None = None) -> list[Scene]:
        """Several scenes in one batched backbone forward (micro-batching); one Scene per image, in order.

        The same maths as encode_scene one image at a time; the values agree to float rounding (a batch
        may take other convolution kernels than a single image). `pad_to` as in encode_pixels.
        """
        imgs = [self._rgb(image) for image in images]
        if not imgs:
            return []
        with _timed(timings, "forward"):
            pixels = torch.stack([image_to_tensor(img, self.input_size) for img in imgs])
            return self.scenes_from_pixels(pixels, imgs, pad_to=pad_to)

    def scenes_from_pixels(self, pixels: torch.Tensor, images: Sequence[Image.Image], *,
                           pad_to: int | None = None) -> list[Scene]:
        """Scenes of B resized uint8 scenes (`pixels`, B x 3 x S x S from image_to_tensor) and their RGB images."""
        f_s, f_i, presence = self.encode_pixels(pixels, pad_to=pad_to)
        return [Scene(image=img, f_s=f_s[j:j + 1], f_i=f_i[j:j + 1], presence=None if presence is None else presence[j])
                for j, img in enumerate(images)]

    def encode_pixels(self, pixels: torch.Tensor, *, pad_to: int | None = None):
        """(f_s B x d, f_i B x R x d, presence B x K or None) of B resized uint8 scenes in one forward.

        `pad_to` > B adds zero scenes up to that batch size, so that an accelerator only ever sees a few
        fixed shapes (each compiled and tuned once, at warm-up); the heads run on the padded batch too (one
        shape) and the padding rows are cut off before anything is returned. In eval mode no layer mixes
        rows, so the real rows' values do not depend on the padding (tested).
        """
        if self._forward is not None:
            return self._forward(pixels, pad_to=pad_to)
        n = int(pixels.shape[0])
        if pad_to is not None and pad_to > n:
            pixels = torch.cat([pixels, pixels.new_zeros((pad_to - n, *pixels.shape[1:]))])
        x = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            feature_map = self._backbone(x)  # the one backbone forward, on torch's thread pool
            with one_thread():
                f_s, f_i = self.embedder.scene_from_features(feature_map)
                presence = self.embedder.presence_probabilities(feature_map)
        return f_s[:n].float(), f_i[:n].float(), None if presence is None else presence[:n].float()

    def use_forward(self, forward, about: dict | None = None) -> None:
        """Answer encode_pixels with `forward` (same arguments and results) instead of this process's backbone.

        For a front-end process of `ctl serve --frontends N`: the forward runs in the model process
        (service.shared_forward.RemoteForward); stage 1, stage 2 and the heads' tables stay here. `about` says
        what runs it there (device, traced, padded shapes, ...), as `forward_elsewhere`. Retrievers made by
        with_index and with_stage1 keep both.
        """
        self._forward = forward
        self.forward_elsewhere = dict(about or {})

    def drop_backbone(self) -> None:
        """Free the backbone's weights in a process whose forwards run elsewhere (after use_forward).

        A front end of `ctl serve --frontends N` never runs the backbone: without this each front end would
        hold a copy of its weights (~100 MB for ResNet-50). The embedder is shared with every retriever made
        from this one by with_index or with_stage1, so they lose it too.
        """
        if self._forward is None:
            raise RetrievalError("the backbone can be dropped only once encode_pixels runs elsewhere (use_forward)")
        self.embedder.backbone = None
        self._backbone = None

    @property
    def scene_backbone(self) -> torch.nn.Module:
        """What encode_scenes runs on the input tensor: the backbone, or its traced graph."""
        return self._backbone

    @property
    def traced(self) -> bool:
        """Whether scenes go through a traced TorchScript graph of the backbone (see trace_backbone)."""
        return self._backbone is not self.embedder.backbone

    def trace_backbone(self) -> None:
        """Run the backbone's forward as a TorchScript graph, traced at this input size and frozen (idempotent).

        For a long-running service: the graph runs in C++ without taking the GIL between operators, so
        several worker threads forward in parallel instead of queueing on the GIL at every layer, and
        freezing folds the batch norms into the convolutions. Measured on 2 busy cores (load 10), batch 1,
        one torch thread each: two threads 12.6 img/s traced against 5.1 eager, CPU per image 37 against
        49-61 ms (docs/benchmarks-serve.md). The feature maps agree with eager to float rounding (~1e-5);
        any batch size works (the graph is traced at batch 1). Tracing takes a few seconds, once; retrievers
        made by with_index share the graph.
        """
        if self.traced:
            return
        self._backbone = traced_backbone(self.embedder.backbone, size=self.input_size, device=self.device)

    def _rgb(self, image: Image.Image | str | os.PathLike) -> Image.Image:
        img = image if isinstance(image, Image.Image) else load_scene(image, self.input_size)
        return img if img.mode == "RGB" else img.convert("RGB")

    def scene_tensor(self, img: Image.Image) -> torch.Tensor:
        """The backbone's input for one RGB scene: 1 x 3 x S x S uint8, channels_last, on the device."""
        x = image_to_tensor(img, self.input_size).unsqueeze(0).to(self.device)
        return x.contiguous(memory_format=torch.channels_last)

    def candidates(self, f_s: torch.Tensor, count: int, *, category: str | None = None) -> np.ndarray:
        """Stage 1 by global distance (`stage1="global"`): the rows of the `count` products nearest f_s (FAISS
        inner product)."""
        return self.candidates_batch(f_s.reshape(1, -1), count, category=category)[0]

    def candidates_batch(self, f_s: torch.Tensor, count: int, *, category: str | None = None) -> list[np.ndarray]:
        """Stage 1 for B scenes (f_s: B x d) in one FAISS search: each scene's `count` nearest rows."""
        xq = np.ascontiguousarray(f_s.detach().cpu().numpy().reshape(len(f_s), -1), dtype=np.float32)
        if count < 1:
            return [np.zeros(0, dtype=np.int64) for _ in range(len(xq))]
        _, found = self.index.search(xq, int(count), category=category)
        return [rows[rows >= 0] for rows in np.asarray(found, dtype=np.int64)]

    def stage1_batch(self, f_s: torch.Tensor, f_i: torch.Tensor, count: int, *,
                     category: str | None = None) -> list[np.ndarray]:
        """Stage 1 for B scenes (f_s: B x d, f_i: B x R x d): each scene's `count` rows, by `self.stage1`.

        hybrid: within `category`, the rows of the largest <q_c, f_p> (the smallest hybrid distances); over
        every category, each category's rows scored by its own query and the `count` best of them all kept
        (ProductIndex.search_categories). global: candidates_batch, the nearest by global distance.
        """
        if self.stage1 == "global":
            return self.candidates_batch(f_s, count, category=category)
        if count < 1:
            return [np.zeros(0, dtype=np.int64) for _ in range(len(f_s))]
        names = [category] if category is not None else \
            [c for c in self.index.categories if len(self.index.rows_for_category(c))]
        queries = self.hybrid_queries(f_s, f_i, names)                  # B x K x d
        if len(names) == 1:
            return self._category_rows(queries[:, 0], count, names[0])
        _, found = self.index.search_categories(queries, int(count), names)
        return _valid_rows(np.asarray(found, dtype=np.int64))

    def candidate_count(self, k: int, candidates: int | None = None, *,
                        category: str | None = None) -> CandidateCount:
        """Stage 1's C for a top-k query of `category` (of every category when None), by this retriever's stage 1
        and index (retrieval.candidate_count): `candidates` when given, else the smallest C that is exact."""
        if category is not None:
            available, exact = len(self.index.rows_for_category(category)), self.index.searches_exactly(category)
        else:
            available = self.index.n
            exact = all(self.index.searches_exactly(c) for c in self.index.categories)
        return candidate_count(k, candidates, available=available, stage1=self.stage1, exact=exact)

    def _category_rows(self, queries: np.ndarray, count: int, category: str) -> list[np.ndarray]:
        """Per query (B x d), the rows of one category's `count` largest inner products (fewer when it is smaller)."""
        n = min(int(count), len(self.index.rows_for_category(category)))
        return _valid_rows(np.asarray(self.index.search(queries, n, category=category)[1], dtype=np.int64))

    def hybrid_queries(self, f_s: torch.Tensor, f_i: torch.Tensor, names: Sequence[str]) -> np.ndarray:
        """B x K x d float32: each scene's hybrid query for each named category (its own local weight)."""
        unknown = [n for n in names if n not in self._category_to_index]
        if unknown:
            raise RetrievalError(_unknown_categories(unknown, self.embedder.categories))
        b = len(f_s)
        idx = torch.tensor([self._category_to_index[n] for n in names], device=self.device)
        with torch.inference_mode():
            q = hybrid_queries(f_s.reshape(b, -1), f_i.reshape(b, f_i.shape[-2], -1),
                               self._category_table[idx].expand(b, -1, -1), self._local_weight_table[idx].expand(b, -1))
        return np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32)

    def rerank(self, f_s: torch.Tensor, f_i: torch.Tensor, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Stage 2: exact global, local and hybrid distances of the products in `rows` (in that order)."""
        return self.rerank_batch(f_s.reshape(1, -1), f_i.reshape(1, f_i.shape[-2], -1), [rows])[0]

    def rerank_batch(self, f_s: torch.Tensor, f_i: torch.Tensor,
                     rows: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Stage 2 for B scenes (f_s: B x d, f_i: B x R x d) in one call of the distances: per scene b, the
        distances of the products in rows[b], in that order.

        The row lists are padded to the longest by repeating their own rows (a real product, so nothing
        is out of range); the padding columns are cut off: each product's distances depend on the scene
        and that product alone.
        """
        rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            return [{name: np.zeros(0) for name in ("global", "local", "hybrid", "paper")} for _ in rows]
        filler = next(r[0] for r in rows if len(r))
        padded = np.stack([np.resize(r, width) if len(r) else np.full(width, filler) for r in rows])
        cat_idx = self._row_category[padded]
        if (cat_idx < 0).any():
            missing = sorted({self.row_category(r) for r in padded[cat_idx < 0]})
            raise RetrievalError(_unknown_categories(missing, self.embedder.categories))
        emb = np.ascontiguousarray(self.index.stored_embeddings(padded.reshape(-1)))
        f_p = torch.from_numpy(emb).to(self.device).float().reshape(len(rows), width, -1)   # torch's cast: SIMD
        # The candidates' few distinct categories: one attention per category, not per product (the factored
        # d_l of all_distances_by_category: a look's stage 2 went from 3.8 to ~1 ms per scene on 1 CPU thread).
        present, position = np.unique(cat_idx, return_inverse=True)
        cat_rows = torch.from_numpy(cat_idx).to(self.device)
        e_k = self._category_table[torch.from_numpy(present).to(self.device)].expand(len(rows), -1, -1)
        with torch.inference_mode():
            # the checkpoint's hybrid: its local weight per category (the paper's 1/2 in an older checkpoint)
            w = self.embedder.local_weights(cat_rows).float()
            d = all_distances_by_category(
                f_s.reshape(len(rows), -1), f_i.reshape(len(rows), f_i.shape[-2], -1), f_p, e_k,
                torch.from_numpy(position.reshape(cat_idx.shape)).to(self.device), local_weight=w)
        d = {name: value.double().cpu().numpy() for name, value in d.items()}
        return [{name: value[b, :len(r)] for name, value in d.items()} for b, r in enumerate(rows)]

    def retrieve(
        self,
        scene: Image.Image | str | os.PathLike | Scene,
        *,
        k: int = defaults.K,
        candidates: int | None = None,
        category: str | None = None,
        timings: dict | None = None,
    ) -> RetrievalResult:
        """Top-k products for a scene (PIL image, path, or an encoded Scene) by hybrid distance.

        `category` restricts the search to one category (see resolve_category for the names accepted).

        Stage 1 pulls C = `candidates` products (see stage1_batch), raised to k when smaller (k results
        need k candidates) and capped at the number of products (of `category`, when given); stage 2
        re-ranks them by exact hybrid distance. None (the default) picks C by candidate_count: k plus a
        margin where stage 1 ranks by the hybrid over an exact search, else defaults.CANDIDATES. k larger
        than the products available returns them all.

        `timings`, when given, receives the seconds of each stage run: "forward" (when the scene is not
        encoded yet), "stage1" (FAISS) and "stage2" (exact re-rank and the hits).
        """
        return self.retrieve_batch([scene], k=k, candidates=candidates, category=category, timings=timings)[0]

    def retrieve_batch(self, scenes: Sequence[Image.Image | str | os.PathLike | Scene], *, k: int = defaults.K,
                       candidates: int | None = None, category: str | None = None,
                       timings: dict | None = None) -> list[RetrievalResult]:
        """retrieve for B scenes with the same parameters: one forward for those not encoded, one FAISS
        search, one re-rank; `timings` gets the batch's stage times."""
        k, candidates = _positive("k", k), _optional_positive("candidates", candidates)
        if category is not None:
            category = self.resolve_category(category)
        scenes = self._encoded(scenes, timings)
        f_s, f_i = self._stacked(scenes)
        count = self.candidate_count(k, candidates, category=category).count
        results = []
        with one_thread():
            with _timed(timings, "stage1"):
                found = self.stage1_batch(f_s, f_i, count, category=category)
            with _timed(timings, "stage2"):
                distances = self.rerank_batch(f_s, f_i, found)
                # Smallest hybrid distance first; ties by global distance, then by row, for a stable answer.
                orders = [np.lexsort((rows, d["global"], d["hybrid"]))[:k] for rows, d in zip(found, distances,
                                                                                              strict=True)]
                records = self.records_at([rows[order] for rows, order in zip(found, orders, strict=True)])
                for b, (rows, d) in enumerate(zip(found, distances, strict=True)):
                    results.append(RetrievalResult(
                        hits=self.hits_at(rows, d, orders[b], records=records[b]), candidates=int(len(rows)),
                        category=category,
                        scene=scenes[b].image, f_s=f_s[b], f_i=f_i[b], _category_table=self._category_table,
                        _category_to_index=self._category_to_index))
        return results

    def look(
        self,
        scene: Image.Image | str | os.PathLike | Scene,
        *,
        k: int = defaults.LOOK_K,
        categories: list[str] | None = None,
        candidates: int | None = None,
        include_present: bool = False,
        timings: dict | None = None,
    ) -> LookResult:
        """The whole look: for every category of the index (or those asked for), its top-k products.

        One backbone forward; per category, stage 1 restricted to that category pulls C candidates
        exactly as ``retrieve(category=c)`` does; stage 2 re-ranks every category's candidates in one
        batched call of the distances, so a look over all categories costs little more than one flat
        retrieval. Each category comes back with its hits and its attention grid over the scene.
        `timings` as in retrieve (stage 2 includes the attention grids).

        With a presence head in the checkpoint, each category also carries the probability that the
        scene already shows it (``present`` when it reaches the checkpoint's threshold). The whole look
        (`categories` None) lists the missing categories first and leaves out the present ones, which
        ``LookResult.left_out`` names, unless `include_present` keeps them (after the missing ones).
        Categories asked for by name all come back, in the order asked, presence marked.
        """
        return self.look_batch([scene], k=k, categories=categories, candidates=candidates,
                               include_present=include_present, timings=timings)[0]

    def look_batch(self, scenes: Sequence[Image.Image | str | os.PathLike | Scene], *, k: int = defaults.LOOK_K,
                   categories: list[str] | None = None, candidates: int | None = None,
                   include_present: bool = False, timings: dict | None = None) -> list[LookResult]:
        """look for B scenes with the same parameters: stage 1 as one FAISS search per category for all the
        scenes that need it, stage 2 as one re-rank of every scene's candidates; `timings` per batch."""
        k, candidates = _positive("k", k), _optional_positive("candidates", candidates)
        if categories is None:
            asked = [c for c in self.categories if c in self._category_to_index]
        else:
            asked = list(dict.fromkeys(self.resolve_category(c) for c in categories))
        scenes = self._encoded(scenes, timings)
        f_s, f_i = self._stacked(scenes)
        plans = [self._look_plan(scene, asked, by_name=categories is not None, include_present=include_present)
                 for scene in scenes]
        with one_thread():
            with _timed(timings, "stage1"):
                found = self._look_candidates(f_s, f_i, [names for names, _, _ in plans], k, candidates)
            with _timed(timings, "stage2"):
                rows = [np.concatenate(per) if per else np.zeros(0, dtype=np.int64) for per in found]
                distances = self.rerank_batch(f_s, f_i, rows)    # every scene's every category in one call
                grids = self._attention_grids(f_i, [names for names, _, _ in plans])
                picks = [self._look_picks(found[b], distances[b], k) for b in range(len(scenes))]
                # the catalogue rows of every hit of the batch in one take (one per category cost ~0.1 ms each)
                records = iter(self.records_at([rows_c[order] for per in picks for rows_c, _, order in per]))
                return [self._look_result(scenes[b], plans[b], picks[b], [next(records) for _ in picks[b]], grids[b])
                        for b in range(len(scenes))]

    def _look_plan(self, scene: Scene, names: list[str], *, by_name: bool, include_present: bool):
        """(categories to answer, in order; presence probability per category; categories left out)."""
        presence = {} if scene.presence is None else \
            {n: float(scene.presence[self._category_to_index[n]]) for n in names}
        if not presence or by_name:
            return names, presence, {}
        missing = [n for n in names if presence[n] < self.presence_thresholds[n]]
        present = [n for n in names if presence[n] >= self.presence_thresholds[n]]
        if include_present:
            return missing + present, presence, {}
        return missing, presence, {n: presence[n] for n in present}

    def _look_candidates(self, f_s: torch.Tensor, f_i: torch.Tensor, names: list[list[str]], k: int,
                         candidates: int | None) -> list[list[np.ndarray]]:
        """Per scene, per category of its plan, the stage-1 rows: one search per category for its scenes."""
        found: list[dict[str, np.ndarray]] = [{} for _ in names]
        union = list(dict.fromkeys(n for per_scene in names for n in per_scene))
        # hybrid: every scene's query for every category of the batch in one call, then one search per category
        queries = self.hybrid_queries(f_s, f_i, union) if self.stage1 == "hybrid" and union else None
        for j, category in enumerate(union):
            scenes = [b for b, per_scene in enumerate(names) if category in per_scene]
            count = self.candidate_count(k, candidates, category=category).count
            rows_found = self.candidates_batch(f_s[scenes], count, category=category) if queries is None else \
                self._category_rows(queries[scenes, j], count, category)
            for b, rows in zip(scenes, rows_found, strict=True):
                found[b][category] = rows
        return [[found[b][n] for n in per_scene] for b, per_scene in enumerate(names)]

    def _attention_grids(self, f_i: torch.Tensor, names: list[list[str]]) -> list[torch.Tensor | None]:
        """Per scene, its attention over the regions for each category of its plan (B x M x R, padded)."""
        width = max((len(n) for n in names), default=0)
        if width == 0:
            return [None for _ in names]
        idx = [[self._category_to_index[n] for n in per_scene] + [0] * (width - len(per_scene)) for per_scene in names]
        e_c = self._category_table[torch.tensor(idx, device=self.device)]
        with torch.inference_mode():
            grids = attention_weights(f_i.reshape(len(names), f_i.shape[-2], -1), e_c)
        return [grids[b, :len(per_scene)] for b, per_scene in enumerate(names)]

    @staticmethod
    def _look_picks(found: list[np.ndarray], d: dict[str, np.ndarray], k: int):
        """Per category of a scene's look: (its candidate rows, their distances, the order of its top k)."""
        picks, start = [], 0
        for rows_c in found:
            part = slice(start, start + len(rows_c))
            start += len(rows_c)
            d_c = {key: value[part] for key, value in d.items()}
            picks.append((rows_c, d_c, np.lexsort((rows_c, d_c["global"], d_c["hybrid"]))[:k]))
        return picks

    def _look_result(self, scene: Scene, plan, picks, records: list[list[dict]], grids) -> LookResult:
        names, presence, left_out = plan
        looks = []
        for j, (name, (rows_c, d_c, order), records_c) in enumerate(zip(names, picks, records, strict=True)):
            p = presence.get(name)
            looks.append(CategoryLook(category=name, hits=self.hits_at(rows_c, d_c, order, records=records_c),
                                      attention=attention_grid(grids[j]), candidates=int(len(rows_c)),
                                      present=None if p is None else p >= self.presence_thresholds[name],
                                      presence_probability=p))
        return LookResult(categories=looks, scene=scene.image, left_out=left_out)

    def compatibility(self, scene: Image.Image | str | os.PathLike | Scene, product_ids: Sequence[str], *,
                      timings: dict | None = None) -> CompatibilityResult:
        """Does each product complete the scene? Its exact d_g, d_l, d_h (as stage 2 computes them), the
        probability of the run's calibration of d_h (calibration.json beside the checkpoint) and the
        decision probability >= its threshold; both None when the run has no calibration for this
        checkpoint (see `notes`). Products in the order given; an id not in the index is a RetrievalError.
        `timings` as in retrieve ("stage2": the exact distances of the products).
        """
        return self.compatibility_batch([scene], product_ids, timings=timings)[0]

    def compatibility_batch(self, scenes: Sequence[Image.Image | str | os.PathLike | Scene],
                            product_ids: Sequence[str], *, timings: dict | None = None) -> list[CompatibilityResult]:
        """compatibility of the same products for B scenes: one re-rank (and one pass over the cohorts of their
        categories); `timings` per batch."""
        if isinstance(product_ids, str) or not len(product_ids):
            raise RetrievalError("give a list of one or more product ids")
        ids = [str(p) for p in product_ids]
        rows = self.rows_for_products(ids)
        scenes = self._encoded(scenes, timings)
        f_s, f_i = self._stacked(scenes)
        records = self.index.table.take(pa.array(rows, type=pa.int64())).to_pylist()
        categories = [str(info["category"]) for info in records]
        with one_thread(), _timed(timings, "stage2"):
            distances = self.rerank_batch(f_s, f_i, [rows] * len(scenes))
            probabilities = self.probabilities(f_s, f_i, np.stack([d["hybrid"] for d in distances]), categories)
        threshold = None if self.calibration is None else self.calibration.threshold
        results = []
        for scene, d, probability in zip(scenes, distances, probabilities, strict=True):
            out = []
            for j, (pid, info) in enumerate(zip(ids, records, strict=True)):
                p = None if probability is None or np.isnan(probability[j]) else float(probability[j])
                out.append(Compatibility(
                    product_id=pid, category=str(info["category"]), image_path=info.get("image_path"),
                    global_distance=float(d["global"][j]), local_distance=float(d["local"][j]),
                    hybrid_distance=float(d["hybrid"][j]), probability=p,
                    completes=None if p is None else p >= threshold))
            results.append(CompatibilityResult(products=out, scene=scene.image, threshold=threshold))
        return results

    def probabilities(self, f_s: torch.Tensor, f_i: torch.Tensor, d_h: np.ndarray,
                      categories: Sequence[str]) -> list[np.ndarray | None]:
        """The calibrated probability that each product completes each scene: d_h is B x N (scene b's hybrid
        distances to N products of `categories`). Normalised by each scene's distances to the cohort of the
        product's category when the calibration has a cohort (NaN for a category it has none of); None per
        scene when the run has no calibration."""
        if self.calibration is None:
            return [None] * len(d_h)
        if self._cohort is None:
            return list(self.calibration.probability(d_h))
        names = sorted(set(categories) & set(self._cohort))
        z = np.full(d_h.shape, np.nan)
        if names:
            vectors = torch.cat([self._cohort[n][1] for n in names])                     # N_cohort x d
            sizes = [len(self._cohort[n][1]) for n in names]
            position = torch.repeat_interleave(torch.arange(len(names), device=self.device),
                                               torch.tensor(sizes, device=self.device))
            vocab = torch.tensor([self._cohort[n][0] for n in names], device=self.device)
            b = len(d_h)
            with torch.inference_mode():
                cohort_d = all_distances_by_category(
                    f_s.reshape(b, -1), f_i.reshape(b, f_i.shape[-2], -1), vectors.expand(b, -1, -1),
                    self._category_table[vocab].expand(b, -1, -1), position.expand(b, -1),
                    local_weight=self.embedder.local_weights(vocab[position]).float().expand(b, -1))["hybrid"]
            cohort_d = cohort_d.double().cpu().numpy()
            bounds = np.cumsum([0, *sizes])
            for k, name in enumerate(names):
                cols = [j for j, c in enumerate(categories) if c == name]
                z[:, cols] = cohort_normalise(d_h[:, cols], cohort_d[:, bounds[k]:bounds[k + 1]])
        p = self.calibration.probability(np.nan_to_num(z))
        return list(np.where(np.isnan(z), np.nan, p))

    def _encoded(self, scenes: Sequence, timings: dict | None) -> list[Scene]:
        """The scenes, those not encoded yet (images, paths) encoded in one forward."""
        todo = [j for j, s in enumerate(scenes) if not isinstance(s, Scene)]
        out = list(scenes)
        for j, scene in zip(todo, self.encode_scenes([scenes[j] for j in todo], timings=timings), strict=True):
            out[j] = scene
        return out

    def _stacked(self, scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
        """The scenes' f_s (B x d) and f_i (B x R x d) on the device."""
        f_s = torch.cat([s.f_s.reshape(1, -1) for s in scenes]).to(self.device)
        f_i = torch.cat([s.f_i.reshape(1, s.f_i.shape[-2], -1) for s in scenes]).to(self.device)
        return f_s, f_i

    def rows_for_products(self, product_ids: Sequence[str]) -> np.ndarray:
        """Index rows of the given product ids, in order; RetrievalError naming the ids the index lacks."""
        ids = [str(p) for p in product_ids]
        asked = list(dict.fromkeys(ids))
        # One pass over the catalogue against a hash of the few ids asked (no catalogue-sized dict).
        column = self.index.table.column("product_id").cast(pa.string())
        position = pc.index_in(column, value_set=pa.array(asked, type=pa.string()))
        rows = np.flatnonzero(position.is_valid().to_numpy(zero_copy_only=False))
        row_of: dict[str, int] = {}
        for row, j in zip(rows.tolist(), position.drop_null().to_numpy(zero_copy_only=False).tolist(), strict=True):
            row_of.setdefault(asked[j], row)
        unknown = [pid for pid in asked if pid not in row_of]
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            shown = ", ".join(repr(u) for u in unknown[:5]) + more
            raise RetrievalError(f"unknown product id {shown}: not in the index of {self.index.n} products")
        return np.array([row_of[pid] for pid in ids], dtype=np.int64)

    def row_category(self, row: int) -> str:
        """The category of one index row."""
        return str(self.index.table.column("category")[int(row)].as_py())

    # -- helpers ------------------------------------------------------------------------------------
    def resolve_category(self, name: str) -> str:
        """An index category by its full name, or by a unique case-insensitive match of the full name or its
        last '|' part ("shoes" for "Apparel & Accessories|Shoes"); RetrievalError listing the known ones."""
        known = list(self.index.categories)
        resolved = match_category(name, known)
        if resolved is None:
            raise RetrievalError(f"unknown category {name!r}; known: {', '.join(known)}")
        name = resolved
        if name not in self._category_to_index:
            raise RetrievalError(
                f"category {name!r} is in the index but not in the checkpoint's vocabulary "
                f"({', '.join(self.embedder.categories)})")
        return name

    def records_at(self, row_lists: Sequence[np.ndarray]) -> list[list[dict]]:
        """The catalogue records (product_id, category, image_path, metadata) of each list of rows, in one take."""
        if not row_lists:
            return []
        records = self.index.table.take(pa.array(np.concatenate(row_lists), type=pa.int64())).to_pylist()
        bounds = np.cumsum([0, *(len(r) for r in row_lists)]).tolist()
        return [records[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    def hits_at(self, rows: np.ndarray, d: dict[str, np.ndarray], order: np.ndarray, *,
                records: list[dict] | None = None) -> list[Hit]:
        """The products at rows[order] as ranked hits (rank 1 first), with their distances `d` and metadata
        (`records`: theirs from records_at, when already taken)."""
        if records is None:
            records = self.records_at([rows[order]])[0]
        hits = []
        for rank, (j, info) in enumerate(zip(order, records, strict=True), start=1):
            hybrid = float(d["hybrid"][j])
            hits.append(Hit(
                rank=rank, product_id=str(info.pop("product_id")), category=str(info.pop("category")),
                image_path=info.pop("image_path", None), score=1.0 - hybrid / 2.0, hybrid_distance=hybrid,
                global_distance=float(d["global"][j]), local_distance=float(d["local"][j]), row=int(rows[j]),
                metadata=info,
            ))
        return hits


def _hybrid_calibration(checkpoint: Checkpoint) -> tuple[Platt | None, Cohort | None, list[str]]:
    """The hybrid distance's calibration and its cohort (None in a file written before cohorts) from the
    checkpoint's run folder, or None, None and a note saying why."""
    path = checkpoint.path.parent / CALIBRATION_FILE
    try:
        calibrations = load_calibrations(path, checkpoint_sha256=checkpoint.sha256)
    except CalibrationError as exc:
        return None, None, [f"no probability for 'completes the look': {exc}"]
    if "hybrid" not in calibrations.methods:
        return None, None, [f"no probability for 'completes the look': {path} has no hybrid calibration"]
    return calibrations.methods["hybrid"], calibrations.cohort, []


@contextlib.contextmanager
def _timed(timings: dict | None, stage: str):
    """Record the seconds spent in the block as timings[stage] (nothing when timings is None)."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - start


@contextlib.contextmanager
def one_thread():
    """Run the cheap stages (heads, stage 1, stage 2) in the calling thread alone.

    They are about 2 ms of small ops: a thread pool only adds risk. On a busy 2-core machine
    a 2-thread OpenMP region waits for a descheduled worker, and a 1 ms stage then takes a scheduler
    slice (~45 ms, measured). torch.set_num_threads sets the calling thread's OpenMP (and MKL) thread
    count, which FAISS's OpenMP shares, and is restored on exit.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _valid_rows(found: np.ndarray) -> list[np.ndarray]:
    """Each query's rows of a FAISS answer without its -1 padding."""
    return [rows[rows >= 0] for rows in found]


def _unknown_categories(names, vocabulary) -> str:
    return (f"products of categories {sorted(names)} are not in the checkpoint's vocabulary "
            f"({', '.join(vocabulary)}); rebuild the index from a catalogue this model knows")


def _optional_positive(name: str, value) -> int | None:
    return None if value is None else _positive(name, value)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RetrievalError(f"{name} must be an integer of at least 1, got {value!r}")
    return int(value)
