"""Fine-tuning the two-tower retriever: its examples, loss and validation (the retriever
stage's task).

Both towers share the encoder (`shopflow.models.bi_encoder.TextEncoder`). The query tower
reads the query, optionally followed by the titles of the user's recent items
(`shopflow.data.features.query_text`); with no query it reads the recent items alone, which
is how the same model recommends. The item tower reads the product text.

Training examples (train split only) are (query text, positive product, hard negative) from
judgments, clicks and purchases (`retrieval_examples`), trained on sentence-transformers'
trainer (`sentence_trainer`) with InfoNCE over the batch: every other positive and every
hard negative compete with the true product.

After training, the catalogue is embedded once and saved beside the model with the training
split's popularity (the feature ranker reads it). The query tower reading a customer's
recent products (no query) is the user tower, one of the recommendation mix's sources.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shopflow.core import paths
from shopflow.core.artifacts import files_hash, write_json, write_parquet
from shopflow.core.config import RetrieverConfig
from shopflow.core.errors import ConfigError
from shopflow.data.features import product_text
from shopflow.data.tables import read_prepared
from shopflow.evaluation import membership
from shopflow.evaluation.offline import bi_encoder_scores, summarize
from shopflow.models.base import quiet_transformers, require_model
from shopflow.models.bi_encoder import BiEncoder, TextEncoder
from shopflow.models.lexical import Bm25Settings
from shopflow.models.popularity import popularity, popularity_prior
from shopflow.models.tokens import pad, tokenize
from shopflow.training.hf_trainer import fit_with_trainer
from shopflow.training.privacy import PrivacyPlan, SecretDraws, plan, private_gradients
from shopflow.training.retrieval_examples import (
    NO_NEGATIVE,
    Examples,
    bm25_negatives,
    training_examples,
    validation_examples,
)
from shopflow.training.runtime import Checkpoints, Fitted, Runtime
from shopflow.training.sentence_trainer import (
    retriever_trainer,
    sentence_model,
    text_encoder,
    triplets,
)
from shopflow.training.trainer import TrainingTask, training_figures
from shopflow.training.user_level import Units, hold_out_customers

log = logging.getLogger(__name__)


def attach_popularity(retriever: BiEncoder, tables: dict[str, pd.DataFrame]) -> dict:
    """The training split's popularity on the retriever's products (`item_prior`), saved with
    its vectors: the feature ranker's popularity feature. Without clicks or purchases there
    is none."""
    pairs, sequences = tables.get("pairs"), tables.get("sequences")
    if pairs is None or sequences is None:
        return {"popularity_prior": False, "reason": "no click or purchase log"}
    retriever.item_prior = popularity_prior(popularity(pairs, sequences), retriever.item_ids)
    return {
        "popularity_prior": True,
        "products_with_interactions": int((retriever.item_prior > 0).sum()),
    }


@dataclass
class Batches:
    """Examples with their query texts tokenised once (`rows[i]`: the tokens of example i)."""

    examples: Examples
    tokens: list[list[int]]
    rows: np.ndarray

    @classmethod
    def of(cls, examples: Examples, tokenizer, max_len: int) -> Batches:
        unique, rows = np.unique(examples.queries, return_inverse=True)
        return cls(examples, tokenize(tokenizer, unique.tolist(), max_len), rows)


class BiEncoderTask(TrainingTask[TextEncoder]):
    """The retriever stage: InfoNCE over in-batch and hard negatives, then the popularity
    prior, the catalogue's vectors and the test numbers."""

    stage = "retriever"
    curve = "contrastive_loss"
    output = paths.RETRIEVER

    @property
    def knobs(self) -> RetrieverConfig:
        return self.params.retriever

    @property
    def samples_per_step(self) -> int:
        """Examples per step; customers per step (expected) when training privately."""
        return self.plan.users_per_step if self.plan else self.knobs.batch_size

    @property
    def private(self) -> bool:
        return self.plan is not None

    def setup(self, runtime: Runtime) -> TextEncoder:
        from transformers import AutoTokenizer

        quiet_transformers()
        cfg, params = self.knobs, self.params
        require_model(paths.ENCODER, "pretrain")
        self.tables = read_prepared()
        products = self.tables["products"]
        negatives = bm25_negatives(
            self.tables, cfg.bm25_negative_depth, Bm25Settings.load(paths.BM25_SETTINGS)
        )
        examples = training_examples(self.tables, params, negatives)
        dp = params.privacy.dp
        examples, self.outsiders = hold_out_customers(examples, dp.audit_share, params.seed)
        self.plan: PrivacyPlan | None = None
        self.sampler: torch.nn.Module | None = None  # Opacus's per-example gradients
        if dp.enabled:
            if runtime.world_size > 1:
                raise ConfigError(
                    f"privacy.dp.enabled: private training runs in one process, not "
                    f"{runtime.world_size} (its per-customer gradients are not all-reduced)"
                )
            self.units = Units.of(examples)
            self.plan = plan(dp, len(self.units), cfg.steps, self.units.kind())
            self.draws = SecretDraws()
        self.tokenizer = AutoTokenizer.from_pretrained(str(paths.ENCODER))
        torch.manual_seed(params.seed)
        self.sentence = sentence_model(paths.ENCODER, runtime)
        model = text_encoder(self.sentence)
        if self.plan is not None:
            trained = model.train_top_layers(dp.trained_layers)
            log.info(
                "privacy: %.1fM of %.1fM weights trained privately (privacy.dp.trained_layers "
                "%s; the token embeddings and the layers below stay frozen)",
                trained / 1e6,
                sum(p.numel() for p in model.parameters()) / 1e6,
                dp.trained_layers,
            )
        self.item_texts = product_text(products)
        self.item_tokens = tokenize(self.tokenizer, self.item_texts, cfg.max_item_len)
        self.train_batches = Batches.of(examples, self.tokenizer, cfg.max_query_len)
        self.train_data = triplets(examples, self.item_texts, params.seed)
        valid = validation_examples(self.tables, params)
        self.valid_data = None if valid is None else triplets(valid, self.item_texts, params.seed)
        self.runtime = runtime
        self.tokens = 0  # training tokens the DP step has read (`example_loss`)
        return model

    def key(self, runtime: Runtime) -> dict[str, object]:
        return {
            "data": files_hash(paths.PREPARED, "*.parquet"),
            "encoder": files_hash(paths.ENCODER, "*.safetensors"),
            "params": self.knobs.model_dump(),
            "relevant_at": self.params.evaluation.relevant_at,
            "seed": self.params.seed,
            "world": runtime.world_size,
            "privacy": self.params.privacy.dp.model_dump(),
        }

    def public_products(self, forward: torch.nn.Module, rows: np.ndarray) -> torch.Tensor:
        """Item vectors of catalogue products (public data), without gradients."""
        ids, mask = pad([self.item_tokens[p] for p in rows], self.tokenizer.pad_token_id)
        dev = self.runtime.device
        with torch.no_grad(), self.runtime.autocast():
            return forward((ids.to(dev), mask.to(dev)))[0].detach()

    def private_loss(self, forward: torch.nn.Module) -> torch.Tensor:
        """One user-level DP-SGD step (`training.privacy`): Poisson-sampled customers, each
        one's examples scored against their own positives and negatives and random catalogue
        products only (`example_loss`), so that no customer's loss reads another's data. One
        forward and backward for all of them; Opacus's hooks give each example's gradient,
        from which `private_gradients` clips per customer and adds the noise. Sets the
        gradients; returns the mean loss."""
        from opacus import GradSampleModule

        assert self.plan is not None
        dp = self.params.privacy.dp
        if self.sampler is None:  # hooks on the trained layers, kept for the whole run
            self.sampler = GradSampleModule(forward, batch_first=True, loss_reduction="sum")
        parameters = [p for p in forward.parameters() if p.requires_grad]
        sampled = self.draws.sample(len(self.units), self.plan.sample_rate)
        chosen = [self.draws.subset(self.units.rows[u], dp.max_examples_per_user) for u in sampled]
        mean = float("nan")
        if chosen:
            rows = self.draws.numbers.choice(len(self.item_tokens), dp.public_negatives, False)
            public = (rows, self.public_products(forward, rows))
            losses = self.example_loss(forward, self.train_batches, np.concatenate(chosen), public)
            losses.sum().backward()
            per_example = [p.grad_sample for p in parameters]  # type: ignore[attr-defined]
            mean = float(losses.detach().mean())
        else:
            per_example = [p.new_zeros((0, *p.shape)) for p in parameters]
        owners = torch.as_tensor(np.repeat(np.arange(len(chosen)), [len(c) for c in chosen]))
        private = private_gradients(parameters, per_example, owners, self.plan, self.draws)
        for p, g in zip(parameters, private, strict=True):
            p.grad, p.grad_sample = g, None  # type: ignore[attr-defined]
        return torch.tensor(mean)

    def fit(self, model: TextEncoder, runtime: Runtime, checkpoints: Checkpoints) -> Fitted:
        """Train on sentence-transformers' trainer (`sentence_trainer.retriever_trainer`);
        privately, the user-level DP step in place of its forward and backward."""
        settings = {"max_grad_norm": 0.0} if self.plan else {}  # clipped per customer instead
        trainer = retriever_trainer(
            self.sentence,
            self.knobs,
            checkpoints.folder,
            runtime,
            seed=self.params.seed,
            train=self.train_data,
            valid=self.valid_data,
            settings=settings,
        )
        if self.plan is not None:

            def private_step() -> tuple[torch.Tensor, int]:
                before = self.tokens
                return self.private_loss(model), self.tokens - before

            trainer.private_step = private_step
        return fit_with_trainer(
            trainer,
            stage=self.stage,
            curve=self.curve,
            checkpoints=checkpoints,
            live_dir=paths.live(self.stage),
        )

    def evaluate(self, model: TextEncoder, fitted: Fitted, runtime: Runtime) -> dict:
        if self.sampler is not None:
            self.sampler.remove_hooks()  # type: ignore[operator]
        cfg, products = self.knobs, self.tables["products"]
        self.encoder = BiEncoder(
            model,
            self.tokenizer,
            runtime.device,
            cfg.max_item_len,
            cfg.max_query_len,
            cfg.eval_batch_size,
        )
        self.encoder.index(products["product_id"].tolist(), self.item_texts)
        prior = attach_popularity(self.encoder, self.tables)
        self.per_query = bi_encoder_scores(self.encoder, self.tables, self.params)
        sources = pd.Series(self.train_batches.examples.sources).value_counts().to_dict()
        result = {
            "test": summarize(self.per_query),
            "popularity_prior": prior,
            "train": {"examples": sources, **training_figures(self, fitted, runtime)},
        }
        if self.plan is not None:
            result["privacy"] = self.plan.record(fitted.resumed_from + fitted.steps_run)
            log.info("retriever: private, ε spent %.3f of %g", *self.spent(result))
        if self.outsiders is not None:
            result["membership"] = self.membership_audit(model)
        log.info("retriever on the test split: %s", result["test"])
        return result

    def save(self, model: TextEncoder, folder: Path, result: dict) -> None:
        cfg = self.knobs
        model.save(folder, self.tokenizer)
        meta = {
            "kind": "retriever",
            "max_item_len": cfg.max_item_len,
            "max_query_len": cfg.max_query_len,
            "history_items": cfg.history_items,
            "base_model": self.params.models.base,
            "metrics": result["test"],
        }
        if "privacy" in result:
            meta["privacy"] = result["privacy"]
        write_json(folder / "shopflow.json", meta)
        self.encoder.save_index(folder / "index")
        for task, frame in self.per_query.items():
            write_parquet(frame, paths.evaluation_of(folder) / f"{task}.parquet")

    @staticmethod
    def spent(result: dict) -> tuple[float, float]:
        return result["privacy"]["epsilon_spent"], result["privacy"]["epsilon"]

    def example_loss(
        self,
        model: torch.nn.Module,
        batches: Batches,
        index: np.ndarray,
        public: tuple[np.ndarray, torch.Tensor],
    ) -> torch.Tensor:
        """Each example's InfoNCE against its own positive, its own hard negative and the
        `public` product vectors (rows, vectors): a loss per example that reads no other
        example (what private training and the membership audit need)."""
        examples, pad_id = batches.examples, self.tokenizer.pad_token_id
        dev = self.runtime.device
        positives, negatives = examples.positives[index], examples.negatives[index]
        missing = negatives == NO_NEGATIVE
        padded = [
            pad([batches.tokens[batches.rows[i]] for i in index], pad_id),
            pad([self.item_tokens[p] for p in positives], pad_id),
            pad([self.item_tokens[n] for n in np.where(missing, positives, negatives)], pad_id),
        ]
        if batches is self.train_batches:
            self.tokens += sum(int(mask.sum()) for _, mask in padded)
        with self.runtime.autocast():
            query, positive, negative = (
                v.float() for v in model(*[(i.to(dev), m.to(dev)) for i, m in padded])
            )
        own = (query * positive).sum(-1, keepdim=True)
        hard = (query * negative).sum(-1, keepdim=True)
        hard = hard.masked_fill(torch.as_tensor(missing, device=dev)[:, None], float("-inf"))
        same = (
            torch.as_tensor(public[0], device=dev)[None, :]
            == torch.as_tensor(positives, device=dev)[:, None]
        )
        others = (query @ public[1].float().T).masked_fill(same, float("-inf"))
        logits = torch.cat([own, hard, others], dim=1) / self.knobs.temperature
        return -torch.log_softmax(logits, dim=1)[:, 0]

    @torch.no_grad()
    def example_losses(
        self,
        model: TextEncoder,
        batches: Batches,
        index: np.ndarray,
        public: tuple[np.ndarray, torch.Tensor],
    ) -> np.ndarray:
        """`example_loss` in batches of `eval_batch_size`, without gradients."""
        size = self.knobs.eval_batch_size
        found = [
            self.example_loss(model, batches, index[a : a + size], public).cpu()
            for a in range(0, len(index), size)
        ]
        return torch.cat(found).numpy() if found else np.zeros(0)

    def customer_losses(
        self, model: TextEncoder, batches: Batches, units: Units, which, public
    ) -> np.ndarray:
        """The mean loss of each unit in `which` over up to 8 of its examples."""
        chosen = [units.rows[u][:8] for u in which]
        owner = np.repeat(np.arange(len(chosen)), [len(c) for c in chosen])
        losses = self.example_losses(model, batches, np.concatenate(chosen), public)
        return np.bincount(owner, losses, len(chosen)) / np.bincount(owner, None, len(chosen))

    def membership_audit(self, model: TextEncoder) -> dict:
        """The loss-threshold attack (`evaluation.membership`) on the held-out customers
        against as many trained ones, each customer's mean loss on up to 8 of their examples
        against the same random catalogue products."""
        assert self.outsiders is not None
        model.eval()
        rng = np.random.default_rng(self.params.seed)
        outsiders = Batches.of(self.outsiders, self.tokenizer, self.knobs.max_query_len)
        held, trained = Units.of(self.outsiders), Units.of(self.train_batches.examples)
        customers = trained.customers()
        members = rng.choice(customers, min(len(held), len(customers)), replace=False)
        rows = rng.choice(len(self.item_tokens), self.params.privacy.dp.public_negatives, False)
        public = (rows, self.public_products(model, rows))
        member = self.customer_losses(model, self.train_batches, trained, members, public)
        outsider = self.customer_losses(model, outsiders, held, range(len(held)), public)
        return membership.audit(member, outsider)

    def summary(self, result: dict) -> dict[str, float]:
        return {f"{t}/{m}": v for t, values in result["test"].items() for m, v in values.items()}
