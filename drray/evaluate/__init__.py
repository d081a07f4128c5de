"""Evaluation: grading metrics, localisation scores of maps, metrics of a run's tables, the HTML report, SQL.

    metrics              QWK, AUC, calibration ... (pure numpy)
    intervals            Wilson, mean +- z SE, seeded bootstrap intervals (pure numpy)
    localisation         pointing game, energy shares, entropy, chance baselines (pure numpy)
    map_scores           the map-dependent columns of an explanation row
    tables               reading explanations / randomisation / overlays for evaluation
    grading_report       grading figures of one group, one row per image
    explanation_metrics  localisation beside chance, per grade and lesion type; concentration; randomisation
    observations         the three observations drray began from, as verdicts
    metrics_table        metrics.json -> metrics.parquet rows (schema.METRICS_SCHEMA)
    evaluate             evaluate_run / evaluate (tables -> metrics), evaluate_model (a model dir on a split)
    gallery, photos      which images the report shows, and the photographs beside their maps
    plots, report        the report's figures and the self-contained report.html (templates/)
    query                DuckDB views over a run directory's tables

    from drray.evaluate.evaluate import evaluate_run
    from drray.evaluate.report import report

Nothing here imports training code.
"""
