"""Evaluation: a run's tables -> metrics, the HTML report, SQL. It reads tables; it never runs a model.

    tables               reading explanations / randomisation / overlays for evaluation
    grading_report       grading figures of one group, one row per image
    explanation_metrics  localisation beside chance, per grade and lesion type; concentration; randomisation
    observations         the three observations drray began from, as verdicts
    metrics_table        metrics.json -> metrics.parquet rows (schema.METRICS_SCHEMA)
    evaluate             evaluate_run / evaluate (tables -> metrics.json, metrics.parquet)
    reviews              graders' verdicts on maps (the Explore tab): one file per verdict, and their figures
    gallery, photos      which images the report shows, and the photographs beside their maps
    strategy_section     the report's "What the model looks at" (strategies.parquet of drray audit)
    plots, report        the report's figures and the self-contained report.html (templates/)
    query                DuckDB views over a run directory's tables

    from drray.evaluate.evaluate import evaluate_run
    from drray.evaluate.report import report

The numbers themselves (grading metrics, intervals, localisation scores) live in drray.scores.
Nothing here imports training, the predictor or the batch job.
"""
