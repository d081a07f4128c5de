"""Training: one Ray Train job per model, Ray Tune searches over backbones, the trials table.

    train      one TorchTrainer: datasets, class weights, export of the best checkpoint
    loop       the per-worker loop: epochs, validation, checkpoints, resume
    tune       the search (function trainable + TuneReportCallback, ASHA, Optuna)
    trials     trials.parquet and the choice of the best trial
    resources  what a trial holds on the cluster, and releasing it
    augment    batched fundus augmentation on the worker's device
"""
