"""Scores: the numbers drray computes from grades and maps, below every stage that needs them.

    grading       QWK, AUC, sensitivity, calibration ... of grades and probabilities (pure numpy)
    intervals     Wilson, mean +- z SE and seeded bootstrap intervals (pure numpy)
    localisation  pointing game, energy shares, entropy, chance baselines, the ideal map, shrink_map (pure numpy)
    map_scores    one map -> the map-dependent columns of an explanation row (clipped to the field of view)
    descriptors   what a map looks at without lesion masks: its grid in the fundus frame, mass centre, rim and
                  outside-the-field energy, flags (drray audit clusters the grids)

Models (ordinal thresholds are fitted by QWK), the predictor, training's validation, the batch
job and evaluation all import these; nothing here imports models, inference, training,
explanation, evaluation or serving code, so every stage scores the same way.
"""
