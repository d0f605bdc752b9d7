"""Fine-tuning the cross-encoder reranker: its listwise groups, loss and validation (the
reranker stage's task).

Two kinds of training groups, each a query and a handful of products scored together with a
listwise softmax cross-entropy (`losses.listwise_loss`: the scores of a group compete for
the probability mass):
- graded judgments: the target distribution is proportional to the gain 2^(grade - lowest)
  - 1, where lowest is the lowest grade of the judgments, so a grade-3 product must outrank
  a grade-2 one, and a product on the bottom grade gets no target mass on any scale (on
  1..3, "irrelevant" would otherwise keep a share);
- clicks: one shown list (session, query); each click is weighted by 1/propensity of its
  position (`shopflow.models.propensity`, estimated from the training logs by EM), so the
  model learns what shoppers prefer rather than what the old ranking put on top; the
  weights are self-normalised per list.
`click_share` of each step's groups come from clicks when both kinds exist.

The score is the retriever's similarity (weight learned, starting at 1/temperature) plus the
cross-encoder's output: see `models.cross_encoder.CrossEncoderModule`. The head, pooler and
prior weight start untrained and learn at `head_lr`, the pretrained body at `lr`.
Evaluation reranks the fine-tuned retriever's top `candidates` for every test query through
`engine.search.SearchEngine` (the code the service runs) and compares it, query by query,
with BM25, the zero-shot encoder and the retriever alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shopflow.core import paths
from shopflow.core.artifacts import files_hash, write_json, write_parquet
from shopflow.core.config import RerankerConfig
from shopflow.data.features import product_text
from shopflow.data.tables import lowest_grade, read_prepared
from shopflow.engine.bundle import RANKER
from shopflow.engine.fusion import DENSE, HYBRID
from shopflow.engine.search import Catalogue
from shopflow.evaluation.offline import compare_with, summarize
from shopflow.evaluation.serving_mix import (
    LTR,
    RERANKER,
    Mix,
    allowed_mixes,
    fallback_mix,
    measure_mix,
    mix_engine,
)
from shopflow.evaluation.systems import test_search_scores
from shopflow.models.base import quiet_transformers, require_model
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.cross_encoder import CrossEncoder, CrossEncoderModule, PairTokens
from shopflow.models.feature_ranker import FeatureRanker
from shopflow.models.lexical import BM25, Bm25Settings
from shopflow.training.feature_ranker import fit_feature_ranker
from shopflow.training.hf_trainer import fit_with_trainer
from shopflow.training.listwise_groups import (
    PRIOR_FIT_GROUPS,
    Group,
    Groups,
    batch_order,
    click_groups,
    fit_prior_weight,
    graded_groups,
    prior_losses,
    propensities_of,
    sample_group,
    validation_groups,
)
from shopflow.training.runtime import Checkpoints, Fitted, Runtime
from shopflow.training.trainer import NothingToTrainError, TrainingTask, training_figures

log = logging.getLogger(__name__)


class CrossEncoderTask(TrainingTask[CrossEncoderModule]):
    """The reranker stage: listwise groups from grades and debiased clicks, evaluated as the
    second step of the served search."""

    stage = "reranker"
    curve = "listwise_loss"
    output = paths.RERANKER

    @property
    def knobs(self) -> RerankerConfig:
        return self.params.reranker

    @property
    def samples_per_step(self) -> int:
        return self.knobs.groups_per_step * self.knobs.group_size

    def setup(self, runtime: Runtime) -> CrossEncoderModule:
        from transformers import AutoTokenizer

        quiet_transformers()
        cfg, params = self.knobs, self.params
        require_model(paths.ENCODER, "pretrain")
        self.tables = tables = read_prepared()
        products = tables["products"]
        product_row = {pid: i for i, pid in enumerate(products["product_id"])}
        self.graded, self.clicks, self.propensity = Groups([], [], []), Groups([], [], []), None
        if "judgments" in tables:
            judged = tables["judgments"]
            train = judged[judged["split"] == "train"]
            self.graded = graded_groups(train, product_row, lowest_grade(tables))
        if "pairs" in tables:
            self.propensity = propensities_of(tables["pairs"], cfg.max_position)
        if self.propensity is not None:
            train_pairs = tables["pairs"][tables["pairs"]["split"] == "train"]
            self.clicks = click_groups(
                train_pairs, product_row, self.propensity, cfg.propensity_clip
            )
        if not len(self.graded) and not len(self.clicks):
            raise NothingToTrainError(
                "no training groups: no graded judgments with a relevant product and no clicked "
                "search lists in the train split (a recommendation-only shop has nothing to "
                "rerank)"
            )
        n_click = round(cfg.groups_per_step * cfg.click_share) if len(self.clicks) else 0
        self.n_graded = cfg.groups_per_step - n_click if len(self.graded) else 0
        self.n_click = cfg.groups_per_step - self.n_graded
        log.info(
            "reranker: %d graded groups, %d click groups; each step %d graded + %d click groups "
            "of up to %d products",
            len(self.graded),
            len(self.clicks),
            self.n_graded,
            self.n_click,
            cfg.group_size,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(paths.ENCODER))
        self.pairs = PairTokens(self.tokenizer, cfg.max_len, cfg.max_query_len)
        texts = product_text(products)
        self.product_tokens = self.pairs.pieces(texts)
        queries = sorted(set(self.graded.queries) | set(self.clicks.queries))
        self.query_tokens = dict(zip(queries, self.pairs.pieces(queries), strict=True))
        self.retriever = BiEncoder.load_indexed(
            paths.RETRIEVER,
            products["product_id"].tolist(),
            texts,
            runtime.device,
            max_len=params.retriever.max_item_len,
            query_max_len=params.retriever.max_query_len,
            batch_size=params.retriever.eval_batch_size,
        )
        self.query_vectors = dict(zip(queries, self.embed(queries), strict=True))
        counts = (self.n_graded, self.n_click)
        self.valid = validation_groups(tables, product_row, self.propensity, counts, params)
        unseen = sorted({query for query, *_ in self.valid} - set(self.query_tokens))
        if unseen:  # encoded apart: the training queries' tokens and vectors stay as they were
            self.query_tokens |= dict(zip(unseen, self.pairs.pieces(unseen), strict=True))
            self.query_vectors |= dict(zip(unseen, self.embed(unseen), strict=True))
        torch.manual_seed(params.seed)
        model = CrossEncoderModule.from_pretrained(paths.ENCODER, self.prior_weight())
        self.runtime = runtime
        return model.to(runtime.device)

    def prior_weight(self) -> float:
        """The prior's weight fitted on a sample of the training groups (`fit_prior_weight`)."""
        rng = np.random.default_rng(self.params.seed)
        groups = [
            (source.queries[i], source.products[i], source.targets[i])
            for source in (self.graded, self.clicks)
            for i in rng.permutation(len(source))[: PRIOR_FIT_GROUPS // 2]
        ]
        vectors = self.retriever.item_vectors
        priors = [vectors[items] @ self.query_vectors[query] for query, items, _ in groups]
        targets = [target for *_, target in groups]
        weight = fit_prior_weight(priors, targets)
        start = 1.0 / self.params.retriever.temperature
        loss_start, loss = prior_losses(priors, targets, np.array([start, weight]))
        log.info(
            "reranker: the retriever prior's weight, fitted on %d training groups: %.3g "
            "(listwise loss of the prior alone %.4f; at 1/temperature = %.3g it is %.4f)",
            len(groups),
            weight,
            loss,
            start,
            loss_start,
        )
        return weight

    def embed(self, queries: list[str]) -> np.ndarray:
        return self.retriever.encode(queries, max_len=self.params.retriever.max_query_len)

    def key(self, runtime: Runtime) -> dict[str, object]:
        return {
            "data": files_hash(paths.PREPARED, "*.parquet"),
            "encoder": files_hash(paths.ENCODER, "*.safetensors"),
            "retriever": files_hash(paths.RETRIEVER, "*.safetensors"),
            "params": self.knobs.model_dump(),
            "seed": self.params.seed,
            "world": runtime.world_size,
        }

    def step_groups(self, step: int) -> list[Group]:
        """The groups of global step `step`, each sampled down to `group_size`."""
        seed, size = self.params.seed, self.knobs.group_size
        rng = np.random.default_rng([seed, step])
        chosen = []
        sources = ((self.graded, self.n_graded, 0), (self.clicks, self.n_click, 1))
        for source, count, salt in sources:
            if not count:
                continue
            for i in batch_order(len(source), count, seed * 2 + salt, step).tolist():
                items, targets = sample_group(source.products[i], source.targets[i], size, rng)
                chosen.append((source.queries[i], items, targets))
        return chosen

    def fit(self, model: CrossEncoderModule, runtime: Runtime, checkpoints: Checkpoints) -> Fitted:
        """Train on sentence-transformers' `CrossEncoderTrainer`
        (`cross_encoder_trainer.reranker_trainer`): every step's groups drawn here, in step
        order, as the trainer's data; the listwise loss as its loss class."""
        from shopflow.training.cross_encoder_trainer import (
            ListwiseLoss,
            groups_dataset,
            reranker_model,
            reranker_trainer,
        )

        loss = ListwiseLoss(
            reranker_model(model, paths.ENCODER, runtime),
            self.pairs,
            self.query_tokens,
            self.product_tokens,
            self.query_vectors,
            self.retriever.item_vectors,
        )
        steps = range(self.knobs.steps)
        trainer = reranker_trainer(
            loss,
            model.head_parameters(),
            self.knobs,
            checkpoints.folder,
            runtime,
            seed=self.params.seed,
            train=groups_dataset([group for step in steps for group in self.step_groups(step)]),
            valid=groups_dataset(self.valid) if self.valid else None,
        )
        return fit_with_trainer(
            trainer,
            stage=self.stage,
            curve=self.curve,
            checkpoints=checkpoints,
            live_dir=paths.live(self.stage),
        )

    def evaluate(self, model: CrossEncoderModule, fitted: Fitted, runtime: Runtime) -> dict:
        cfg = self.knobs
        reranker = CrossEncoder(model, self.pairs, runtime.device, cfg.eval_batch_size)
        catalogue = Catalogue(self.tables["products"])
        self.bm25 = Bm25Settings.load(paths.BM25_SETTINGS)
        lexical = BM25.of_fields(catalogue.ids, catalogue.fields, self.bm25)
        fitted_ranker = fit_feature_ranker(
            self.retriever, catalogue, lexical, self.tables, self.params
        )
        self.ranker: FeatureRanker | None = fitted_ranker[0] if fitted_ranker else None
        ranker_info = fitted_ranker[1] if fitted_ranker else {}
        tested = {"search": Mix(DENSE, RERANKER), "hybrid_search": Mix(HYBRID)}
        if self.ranker is not None:
            tested["ltr_search"] = Mix(HYBRID, LTR)
        self.test = {
            name: test_search_scores(
                mix_engine(
                    mix, self.retriever, reranker, catalogue, self.params, lexical, self.ranker
                ),
                self.tables,
                self.params,
            )
            for name, mix in tested.items()
        }
        self.mix = self.serving_mix(reranker, catalogue, lexical)
        result: dict = {
            "train": {
                "graded_groups": len(self.graded),
                "click_groups": len(self.clicks),
                **training_figures(self, fitted, runtime),
            },
            "feature_ranker": ranker_info,
            "serving_mix": self.mix,
        }
        if self.propensity is not None:
            result["propensity"] = {str(k): round(float(v), 4) for k, v in self.propensity.items()}
        scored = {name: frame for name, frame in self.test.items() if frame is not None}
        if scored:
            result["test"] = summarize(scored)
            result.update(self.comparisons(scored))
        log.info("reranker on the test split: %s", result.get("test"))
        return result

    def comparisons(self, scored: dict[str, pd.DataFrame]) -> dict:
        """Paired tests of each tested mix against the baselines, the retriever alone and
        the other mixes: `compare` for the cross-encoder, `compare_<mix>` for the others."""
        baselines = paths.evaluation_of(paths.BASELINES)
        others: dict[str, Path | pd.DataFrame] = {
            "bm25": baselines / "bm25_search.parquet",
            "zero_shot_encoder": baselines / "zero_shot_encoder_search.parquet",
            "retriever": paths.evaluation_of(paths.RETRIEVER) / "search.parquet",
        }
        mixes = {mix_label(name): frame for name, frame in scored.items()}
        alpha = self.params.evaluation.significance
        return {
            ("compare" if name == "search" else f"compare_{mix_label(name)}"): compare_with(
                frame, {**others, **{m: f for m, f in mixes.items() if f is not frame}}, alpha
            )
            for name, frame in scored.items()
        }

    def serving_mix(self, reranker: CrossEncoder, catalogue: Catalogue, lexical: BM25) -> dict:
        """The first stage and what reorders its candidates (`serving.first_stage`,
        `ranker.enabled`, `reranker.serve`; auto: chosen on the valid split)."""
        first_stage, serve = self.params.serving.first_stage, self.knobs.serve
        mixes = allowed_mixes(first_stage, serve, ranker=self.ranker is not None)
        if len(mixes) == 1:
            reason = f"serving.first_stage: {first_stage}, reranker.serve: {serve}"
            return {"chosen": mixes[0].name, "reasons": [reason]}
        mix = measure_mix(
            mixes,
            self.retriever,
            reranker,
            catalogue,
            self.tables,
            self.params,
            lexical,
            self.ranker,
        )
        if mix is None:
            chosen = fallback_mix(mixes).name
            log.warning("serving mix: no judged valid query to choose on; serving %s", chosen)
            return {"chosen": chosen, "reasons": ["no judged valid query to choose on"]}
        return mix

    def save(self, model: CrossEncoderModule, folder: Path, result: dict) -> None:
        cfg = self.knobs
        model.save(folder, self.tokenizer)
        chosen = Mix.named(self.mix["chosen"])
        meta = {
            "kind": "reranker",
            "max_len": cfg.max_len,
            "max_query_len": cfg.max_query_len,
            "candidates": cfg.candidates,
            "base_model": self.params.models.base,
            "prior_weight": float(model.prior_weight.detach()),
            "serve": chosen.rerank,
            "first_stage": chosen.first_stage,
            "final": chosen.final,
            "rrf_k": self.params.serving.rrf_k,
            "bm25": self.bm25.as_dict(),
            "metrics": result.get("test", {}),
        }
        write_json(folder / "shopflow.json", meta)
        if self.ranker is not None:
            self.ranker.save(folder / RANKER, result["feature_ranker"])
        for name, frame in self.test.items():
            if frame is not None:
                write_parquet(frame, paths.evaluation_of(folder) / f"{name}.parquet")
        if self.propensity is not None:
            write_parquet(self.propensity.reset_index(), folder / "propensity.parquet")

    def summary(self, result: dict) -> dict[str, float]:
        return {f"search/{m}": v for m, v in result.get("test", {}).get("search", {}).items()}

    def extra_curves(self) -> dict[str, list[tuple[int, float]]]:
        """The feature ranker's NDCG@10 per tree: on its training lists and on the held-out
        lists that stop the boosting (the report draws them next to the cross-encoder's)."""
        if self.ranker is None:
            return {}
        names = {"train": "train/ltr_ndcg@10", "stop": "held_out/ltr_ndcg@10"}
        return {
            names[split]: [(tree, value) for tree, value in enumerate(values, start=1)]
            for split, values in self.ranker.curve.items()
        }


def mix_label(test_name: str) -> str:
    """`search` (the cross-encoder's own test scores) → reranker; `hybrid_search` → hybrid."""
    return "reranker" if test_name == "search" else test_name.removesuffix("_search")
