"""Evaluation: grading metrics, localisation scores of maps, metrics over a split, SQL over a run.

    metrics       QWK, AUC, calibration ... (pure numpy)
    localisation  pointing game, energy shares, entropy, chance baselines (pure numpy)
    evaluate      a model dir on one split of a manifest
    query         DuckDB views over a run directory's tables

Nothing here imports training code.
"""
