"""The rankers: the base transformer, the bi-encoder and cross-encoder, lexical and popularity
baselines, click propensities and the vector index they search."""
